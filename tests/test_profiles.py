"""Device profiles: names, limits, the timing model's sources and fits, slowing,
calibration, profile files, and the imports that keep profiles plain data."""

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import exact, random_int8
from threadpoolctl import threadpool_limits

import npu_pipeline as npp
from npu_pipeline import calibration, profiles
from npu_pipeline.contract import load_contract, parse_contract
from npu_pipeline.errors import PlanError, ProfileError
from npu_pipeline.profile_lookup import get_profile, load_profile
from npu_pipeline.profiles import (
    ANCHOR_BAND,
    ANCHORS,
    CPU,
    CPU_DEFAULTS,
    NPU1,
    NPU2,
    PROFILE_FORMAT_VERSION,
    DeviceProfile,
)

GEMM = load_contract("gemm_i8_i32")
TILE16 = load_contract("tile16_legacy")


@pytest.fixture(autouse=True)
def no_calibration(monkeypatch):
    """Deterministic profiles: the cpu profile uses its documented defaults."""
    monkeypatch.setenv(calibration.ENV_VAR, "off")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """Calibration on, with a private cache folder and no in-process cache."""
    monkeypatch.setenv(calibration.ENV_VAR, "on")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calibration._cpu_profile.cache_clear()
    yield tmp_path
    calibration._cpu_profile.cache_clear()


def test_shipped_profiles_and_limits():
    for name, generation in (("npu1", "npu1"), ("npu2", "npu2"), ("cpu", "npu1")):
        profile = get_profile(name)
        assert profile.name == name
        assert profile.generation == generation
        assert profile.runs_in_flight == 4
        assert profile.watchdog_s == 2.0
    # Real NPUs pin BO memory, so their budget stays under a typical ulimit -l;
    # the emulator's BOs are ordinary memory.
    assert get_profile("npu1").memory_budget_bytes <= 8 * 2**20
    assert get_profile("npu2").memory_budget_bytes <= 8 * 2**20
    assert get_profile("cpu").memory_budget_bytes == 64 * 2**20
    assert get_profile("cpu") is CPU  # calibration off: the documented defaults
    assert get_profile(NPU2) is NPU2
    assert npp.get_profile is get_profile  # the public name is the lookup


def test_unknown_profile_is_a_plan_error():
    with pytest.raises(PlanError, match="npu1, npu2, cpu") as caught:
        get_profile("npu3")
    assert not isinstance(caught.value, ProfileError)
    with pytest.raises(PlanError, match="of type int"):
        get_profile(3)  # type: ignore[arg-type]


def test_every_number_has_a_source():
    for profile in (NPU1, NPU2, CPU):
        for parameter, value, unit, source in profile.parameters():
            assert np.isfinite(value) and value >= 0, parameter
            assert unit and source, parameter
            assert any(
                word in source
                for word in (
                    "docs/hardware-facts.md#",
                    "docs/why.md#",
                    "derived",
                    "assumption",
                    "default",
                    "design",
                    "1 =",
                )
            ), (profile.name, parameter, source)
        assert profile.name in profile.describe()
        json.dumps(profile.to_dict())


@pytest.mark.parametrize("anchor", ANCHORS, ids=lambda a: f"{a.profile}: {a.figure}")
def test_the_model_gives_back_every_public_anchor_within_the_band(anchor):
    profile = {"npu1": NPU1, "npu2": NPU2}[anchor.profile]
    modelled = anchor.modelled(profile, GEMM)
    assert abs(modelled / anchor.value - 1) <= ANCHOR_BAND, (modelled, anchor.value)
    # Each figure is cited where the profile uses it: a paper's arXiv id or an issue number.
    assert any(ref in anchor.source for ref in ("arXiv 2512.13282", "issue"))


def test_anchor_values_are_the_public_figures():
    by_figure = {(a.profile, a.kind, a.block): a.value for a in ANCHORS}
    assert by_figure["npu1", "peak", None] == 6.76e12  # arXiv 2512.13282
    assert by_figure["npu2", "peak", None] == 38.05e12
    assert by_figure["npu1", "latency", None] == 159.5e-6  # xrt-smi validate, Phoenix
    assert by_figure["npu2", "latency", None] == 52e-6  # Strix Halo
    assert by_figure["npu1", "queued", None] == pytest.approx(1 / 6.3e3)
    assert by_figure["npu2", "queued", None] == pytest.approx(12.7e-6, rel=0.01)  # 78,771 runs/s
    assert by_figure["npu2", "run", (1024, 512, 1024)] == 3.2e12  # amd/IRON issues 171, 172
    assert 7.0e12 <= by_figure["npu2", "run", (2048, 2048, 2048)] <= 8.2e12
    ops = 2 * 512 * 4096 * 512  # IREE-AMD-AIE: 365 us, about 5.9 TOPS
    assert ops / by_figure["npu2", "run", (512, 4096, 512)] == pytest.approx(365e-6)


def test_queued_and_lone_dispatch_are_the_xrt_smi_figures():
    assert NPU2.dispatch_s == 52e-6 and NPU2.queued_dispatch_s == pytest.approx(1 / 78_771)
    assert NPU1.dispatch_s == 159.5e-6 and NPU1.queued_dispatch_s == pytest.approx(1 / 6.3e3)
    # Strix pipelines runs four times faster than it answers one; Phoenix barely does.
    assert NPU2.startup_seconds() == pytest.approx(52e-6 - 12.695e-6, rel=1e-3)
    assert 0 < NPU1.startup_seconds() < 1e-6


def test_a_measured_peak_is_the_arrays_compute_rate():
    assert NPU1.compute_cores * NPU1.core_rate(GEMM) == pytest.approx(6.76e12)
    assert NPU2.compute_cores * NPU2.core_rate(GEMM) == pytest.approx(38.05e12)
    # A full-array block computes at the peak; the whole run is slower (dispatch, DMA added).
    block = (2048, 4096, 2048)
    ops = 2 * np.prod(block)
    assert ops / NPU2.compute_seconds(GEMM, block) == pytest.approx(38.05e12)
    assert ops / NPU2.run_seconds(GEMM, block) < 38.05e12 / 4


def test_whole_array_dma_restreams_a_and_b_per_pass():
    m, k, n = 1024, 512, 1024
    # npu2 covers 256 x 512 of output per pass: A goes twice (n/512), B four times (m/256).
    assert NPU2.streamed_bytes(GEMM, (m, k, n)) == m * k * 2 + k * n * 4 + 4 * m * n
    assert NPU1.streamed_bytes(GEMM, (m, k, n)) == m * k * 4 + k * n * 4 + 4 * m * n
    # The emulator copies each buffer once; the seed's tile pairs are one pass.
    assert CPU.streamed_bytes(GEMM, (m, k, n)) == m * k + k * n + 4 * m * n
    assert NPU1.streamed_bytes(TILE16, (16, 16, 16)) == 512 + 256
    # The npu2 DMA fit uses the contract's pass.
    rows, _, cols = GEMM.target("npu2").block_granularity
    assert (rows, cols) == profiles._NPU2_PASS


def test_tile16_on_npu1_reproduces_the_seed_call():
    run = NPU1.run_seconds(TILE16, (16, 16, 16))
    assert run == pytest.approx(159.5e-6, rel=0.01)  # xrt-smi's single-run latency
    # The seed's kernel() call from Python (0.33 ms, docs/why.md) includes the run.
    assert run < 0.33e-3
    assert run + NPU1.seed_call_host_s == pytest.approx(0.46e-3, rel=0.01)  # the seed's call


def test_npu1_is_slower_than_npu2_per_run():
    for block in ((64, 64, 64), (512, 512, 512), (2048, 4096, 2048)):
        assert NPU1.run_seconds(GEMM, block) > NPU2.run_seconds(GEMM, block)


def test_run_time_grows_with_the_block_and_small_blocks_idle_cores():
    small, array = (64, 512, 64), (256, 512, 256)  # 1 and 16 output core tiles
    assert NPU1.compute_seconds(GEMM, small) == pytest.approx(NPU1.compute_seconds(GEMM, array))
    assert NPU1.compute_seconds(GEMM, (512, 512, 256)) == pytest.approx(
        2 * NPU1.compute_seconds(GEMM, array)
    )
    assert NPU1.run_seconds(GEMM, (256, 1024, 256)) > NPU1.run_seconds(GEMM, array)


def test_stage_helpers_include_the_hand_off():
    assert NPU1.pack_seconds(0) == NPU1.batch_overhead_s
    assert NPU1.accumulate_seconds(4 * 10**9) == pytest.approx(NPU1.batch_overhead_s + 1.0)
    assert NPU1.execute_seconds(TILE16, (16, 16, 16), 32) == pytest.approx(
        NPU1.batch_overhead_s + 32 * NPU1.run_seconds(TILE16, (16, 16, 16), queued=True)
    )


@pytest.mark.parametrize("profile", [NPU1, NPU2, CPU])
def test_a_queued_run_pays_the_queued_dispatch_and_an_idle_one_the_startup(profile):
    block = (256, 256, 256)
    lone, queued = profile.run_seconds(GEMM, block), profile.run_seconds(GEMM, block, queued=True)
    assert 0 < profile.queued_dispatch_s <= profile.dispatch_s
    assert lone - queued == pytest.approx(profile.startup_seconds())
    slowed = profile.slowed(3)
    assert slowed.startup_seconds() == pytest.approx(3 * profile.startup_seconds())


def test_custom_contract_uses_the_rate_of_its_semantic():
    raw = json.loads(Path(GEMM.source).read_text())
    raw["name"] = "my_gemm"
    custom = parse_contract(raw)
    assert NPU1.run_seconds(custom, (256, 256, 256)) == NPU1.run_seconds(GEMM, (256, 256, 256))


def test_slowed_profile_multiplies_device_times_only():
    slow = NPU1.slowed(20)
    assert slow.name == "npu1 slowed x20"
    assert slow.run_seconds(GEMM, (512, 512, 512)) == pytest.approx(
        20 * NPU1.run_seconds(GEMM, (512, 512, 512))
    )
    assert slow.pack_seconds(10**6) == NPU1.pack_seconds(10**6)
    assert slow.accumulate_seconds(10**6) == NPU1.accumulate_seconds(10**6)
    assert NPU1.slowed(2).slowed(3).name == "npu1 slowed x6"
    assert get_profile("npu1 slowed x20") == slow
    assert get_profile("npu2 slowed x2.5").device_time_scale == 2.5


@pytest.mark.parametrize("factor", [0, -1, float("inf"), float("nan")])
def test_bad_slow_down_is_a_plan_error(factor):
    with pytest.raises(PlanError, match="positive finite"):
        NPU1.slowed(factor)


def test_calibration_off_is_deterministic(monkeypatch):
    for value in ("off", "0", "false", "NO"):
        monkeypatch.setenv(calibration.ENV_VAR, value)
        assert not calibration.calibration_enabled()
        assert calibration.calibrated_cpu_profile() is CPU
    assert CPU.pack_bytes_per_s == CPU_DEFAULTS["pack_bytes_per_s"]


def test_calibration_measures_caches_and_labels(cache_dir, monkeypatch):
    # A quiet machine throughout: a load that drops between the two reads
    # below would (rightly) make the cache be measured again.
    monkeypatch.setattr(calibration, "load_per_cpu", lambda: 0.0)
    profile = get_profile("cpu")
    assert profile.generation == "npu1" and profile.name == "cpu"
    assert "measured on this host" in profile.source("pack_bytes_per_s")
    assert "measured on this host" in profile.source("core_ops_per_s[gemm_i8_i32]")
    assert "emulator round trip" in profile.source("dispatch_s")
    assert 20e-6 <= profile.dispatch_s < 0.05
    files = list((cache_dir / "npu_pipeline").glob("calibration-*.json"))
    assert len(files) == 1
    stored = calibration.Calibration(**json.loads(files[0].read_text()))
    assert stored.seconds < 3.0
    assert stored.pack_bytes_per_s == profile.pack_bytes_per_s

    # A second process reads the cache instead of measuring again ...
    calibration._cpu_profile.cache_clear()
    monkeypatch.setattr(calibration, "measure", lambda: pytest.fail("measured again"))
    assert get_profile("cpu") == profile

    # ... unless asked to refresh it.
    fresh = dataclasses.replace(stored, pack_bytes_per_s=1.0)
    monkeypatch.setattr(calibration, "measure", lambda: fresh)
    monkeypatch.setenv(calibration.ENV_VAR, "refresh")
    assert get_profile("cpu").pack_bytes_per_s == 1.0
    assert json.loads(files[0].read_text())["pack_bytes_per_s"] == 1.0


def test_calibration_is_kept_apart_per_blas_thread_setting():
    """The exact-compute rate depends on the BLAS threads in effect (the benchmark
    limits them): each setting has its own cache entry."""
    with threadpool_limits(limits=1, user_api="blas"):
        one = calibration.host_key()
    with threadpool_limits(limits=2, user_api="blas"):
        two = calibration.host_key()
    assert "blas_threads=1|" in one and "blas_threads=2|" in two
    assert calibration.cache_path(one) != calibration.cache_path(two)


def test_calibration_failure_falls_back_to_defaults(cache_dir, monkeypatch):
    def broken():
        raise ImportError("no packing here")

    monkeypatch.setattr(calibration, "measure", broken)
    profile = get_profile("cpu")
    assert profile.pack_bytes_per_s == CPU.pack_bytes_per_s
    assert "calibration failed (ImportError: no packing here)" in profile.source("pack_bytes_per_s")


def test_apply_replaces_only_the_measured_rates():
    measured = calibration.Calibration(1e9, 2e9, 3e9, 6e9, 4e-4, 5e-5, "host", 0.0, 0.1)
    profile = calibration.apply(measured)
    assert (profile.pack_bytes_per_s, profile.accumulate_bytes_per_s) == (1e9, 2e9)
    assert profile.core_rate(GEMM) == 3e9 and profile.core_rate(TILE16) == 3e9
    assert profile.dispatch_s == 4e-4 and profile.queued_dispatch_s == 5e-5
    assert profile.host_ops_per_s == 6e9  # the host path, measured on its own
    assert (
        dataclasses.replace(
            profile,
            pack_bytes_per_s=CPU.pack_bytes_per_s,
            accumulate_bytes_per_s=CPU.accumulate_bytes_per_s,
            dispatch_s=CPU.dispatch_s,
            queued_dispatch_s=CPU.queued_dispatch_s,
            core_ops_per_s=CPU.core_ops_per_s,
            host_ops_per_s=CPU.host_ops_per_s,
            sources=CPU.sources,
        )
        == CPU
    )


def test_with_host_rates_keeps_the_device_model():
    measured = calibration.Calibration(1e9, 2e9, 3e9, 6e9, 4e-4, 5e-5, "host", 0.0, 0.1)
    profile = calibration.with_host_rates(NPU1, measured)
    assert (profile.pack_bytes_per_s, profile.accumulate_bytes_per_s) == (1e9, 2e9)
    assert profile.host_ops_per_s == 6e9
    assert profile.core_ops_per_s == NPU1.core_ops_per_s
    assert profile.dispatch_s == NPU1.dispatch_s
    assert "measured on this host" in profile.source("pack_bytes_per_s")


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        NPU1.dispatch_s = 0.0  # type: ignore[misc]
    assert isinstance(NPU1, DeviceProfile)


# -- profile files -------------------------------------------------------------


def calibrated_npu1():
    """An npu1 profile as a calibration on the user's machine would make it."""
    measured = calibration.Calibration(1e9, 2e9, 3e9, 6e9, 4e-4, 5e-5, "host", 0.0, 0.1)
    return dataclasses.replace(
        calibration.with_host_rates(NPU1, measured),
        name="my npu1",
        dispatch_s=171.25e-6,
        core_ops_per_s=(("gemm_i8_i32", 3.0e11), ("tile16_legacy", 1.0e11), ("my_gemm", 2.5e11)),
    )


@pytest.mark.parametrize(
    "profile", [NPU1, NPU2, CPU, NPU2.slowed(20), calibrated_npu1()], ids=lambda p: p.name
)
def test_a_profile_file_reads_back_equal(profile):
    text = profile.to_json()
    data = json.loads(text)
    assert data["format"] == "npu_pipeline.device_profile"
    assert data["format_version"] == PROFILE_FORMAT_VERSION
    assert set(data) - {"format", "format_version"} == {
        f.name for f in dataclasses.fields(DeviceProfile)
    }
    assert data["core_ops_per_s"] == dict(profile.core_ops_per_s)
    back = DeviceProfile.from_json(text)
    assert back == profile
    assert back.describe() == profile.describe()  # every source and note kept
    assert back.run_seconds(GEMM, (512, 512, 512)) == profile.run_seconds(GEMM, (512, 512, 512))


def test_a_later_source_or_rate_replaces_an_earlier_one_so_files_read_back_equal():
    mine = dataclasses.replace(
        NPU1,
        sources=(*NPU1.sources, ("dispatch_s", "measured on my laptop")),
        core_ops_per_s=(*NPU1.core_ops_per_s, ("gemm_i8_i32", 1e11)),
    )
    assert mine.source("dispatch_s") == "measured on my laptop"
    assert mine.core_rate(GEMM) == 1e11
    assert len(mine.sources) == len(NPU1.sources)
    assert [name for name, _ in mine.core_ops_per_s] == ["gemm_i8_i32", "tile16_legacy"]
    assert DeviceProfile.from_json(mine.to_json()) == mine


def test_a_profile_file_is_found_by_path_str_or_pathlike(tmp_path):
    path = tmp_path / "my-npu.json"
    path.write_text(calibrated_npu1().to_json())
    assert get_profile(path) == calibrated_npu1()
    assert get_profile(str(path)) == calibrated_npu1()
    assert load_profile(path) == calibrated_npu1()
    plan = npp.plan_batches(1500, 512, 2048, profile=path)
    assert plan.profile == "my npu1"
    assert plan == npp.plan_batches(1500, 512, 2048, profile=calibrated_npu1())
    # The file's own rates are what the plan predicts with.
    assert plan.estimate != npp.plan_batches(1500, 512, 2048, profile="npu1").estimate


def _profile_data() -> dict:
    return json.loads(NPU1.to_json())


def _with(**changes) -> str:
    data = _profile_data()
    for key, value in changes.items():
        if value is _DROP:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


_DROP = object()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "is not JSON (Expecting property name"),
        ("[1, 2]", "the top level is a JSON list; expected an object"),
        (_with(format="something else"), "'format' is 'something else'"),
        (_with(format=_DROP), "'format' is None"),
        (_with(format_version=2), "Upgrade npu_pipeline"),
        (_with(format_version="1"), "'format_version' is '1'"),
        (_with(dispatch_s=_DROP), "missing field(s) ['dispatch_s']"),
        (_with(dispatch_us=1.0), "unknown field(s) ['dispatch_us']"),
        (_with(dispatch_s=-1e-6), "'dispatch_s' is -1e-06; expected a finite number >= 0 (s)"),
        (_with(dma_bytes_per_s=0), "'dma_bytes_per_s' is 0; expected a finite number > 0 (B/s)"),
        (_with(watchdog_s="2"), "'watchdog_s' is '2'"),
        (_with(device_time_scale=True), "'device_time_scale' is True"),
        (_with(runs_in_flight=4.5), "'runs_in_flight' is 4.5; expected a whole number >= 1"),
        (_with(compute_cores=0), "'compute_cores' is 0"),
        (_with(generation="npu3"), "'generation' is 'npu3'; expected one of ('npu1', 'npu2')"),
        (_with(name=""), "'name' is ''; expected a non-empty string"),
        (_with(restreams_operands="yes"), "'restreams_operands' is 'yes'; expected true or false"),
        (_with(core_ops_per_s=[1.0]), "'core_ops_per_s' is a JSON list"),
        (_with(core_ops_per_s={"gemm_i8_i32": 1e11}), "no rate for ['tile16_legacy']"),
        (
            _with(core_ops_per_s={"gemm_i8_i32": 1e11, "tile16_legacy": -1.0}),
            "'core_ops_per_s[tile16_legacy]' is -1.0; expected a finite number > 0 (ops/s)",
        ),
        (_with(sources={"dispatch_s": 3}), "sources of ['dispatch_s'] are not strings"),
        (
            _with(queued_dispatch_s=1e-3),
            "queued_dispatch_s 0.001 s is more than dispatch_s 0.0001595 s",
        ),
    ],
)
def test_a_bad_profile_file_is_a_profile_error_naming_the_file(tmp_path, text, fragment):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ProfileError) as caught:
        get_profile(path)
    message = str(caught.value)
    assert fragment in message
    assert f"profile file {str(path)!r}" in message
    assert "expected" in message  # what was wrong; what is accepted; what to do
    assert isinstance(caught.value, PlanError)  # callers catching PlanError still do


def test_an_unreadable_profile_file_is_a_profile_error(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(ProfileError, match=r"cannot read profile file .*FileNotFoundError"):
        get_profile(str(missing))
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ProfileError, match="UnicodeDecodeError"):
        get_profile(binary)
    with pytest.raises(ProfileError, match="IsADirectoryError"):
        get_profile(tmp_path / "")  # a path with a separator that is a folder


@pytest.mark.anyio
async def test_a_pipeline_opened_with_a_profile_file_is_exact(tmp_path, rng):
    path = tmp_path / "my-npu.json"
    path.write_text(calibrated_npu1().to_json())
    a = random_int8(rng, (300, 700))
    b = random_int8(rng, (700, 260))
    async with npp.open_pipeline(device="emulator", profile=path, host_path=False) as pipe:
        assert pipe.profile == calibrated_npu1()
        c = await pipe.matmul(a, b)
        assert pipe.plan(300, 700, 260).profile == "my npu1"
    assert np.array_equal(c, exact(a, b))


def test_a_bad_profile_file_fails_before_the_device_opens(tmp_path):
    import anyio

    path = tmp_path / "bad.json"
    path.write_text("{}")

    async def main():
        async with npp.open_pipeline(device="emulator", profile=path):
            pytest.fail("opened with a bad profile")

    with pytest.raises(ProfileError, match="'format' is None"):
        anyio.run(main)


def _user_env() -> dict[str, str]:
    """What a user's shell has: without the suite's calibration switch."""
    return {k: v for k, v in os.environ.items() if k != calibration.ENV_VAR}


def test_cli_takes_a_profile_file_as_a_user_runs_it(tmp_path):
    path = tmp_path / "my-npu.json"
    path.write_text(dataclasses.replace(NPU2, name="my npu2").to_json())
    command = [sys.executable, "-m", "npu_pipeline"]
    plan = subprocess.run(
        [*command, "plan", "1500", "512", "2048", "--profile", str(path), "--json"],
        capture_output=True, text=True, env=_user_env(), timeout=120,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["profile"] == "my npu2"
    run = subprocess.run(
        [*command, "run", "300", "200", "100", "--device", "emulator", "--profile", str(path)],
        capture_output=True, text=True, env=_user_env(), timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "result exact (equals A @ B in int64): True" in run.stdout
    path.write_text("{}")
    bad = subprocess.run(
        [*command, "plan", "64", "64", "64", "--profile", str(path)],
        capture_output=True, text=True, env=_user_env(), timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert f"profile file {str(path)!r}: 'format' is None" in bad.stderr


# -- profiles are data: the import graph ------------------------------------------------

PACKAGE = Path(profiles.__file__).parent
#: The modules of the former circle profiles -> calibration -> device -> profiles,
#: and the lookup that replaced the profiles' own.
CIRCLE = ("profiles", "profile_lookup", "calibration", "device")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    where = PACKAGE.parent.joinpath(*name.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def _run_time_imports(path: Path) -> set[str]:
    """npu_pipeline modules a file imports anywhere (functions included), but not
    under ``if TYPE_CHECKING:``, nor the package itself (its ``__init__`` is the
    facade that every submodule import has already run)."""
    module = _module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for child in block.body
        for node in ast.walk(child)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level or None]
                if path.name == "__init__.py":
                    package = module.split(".")[: len(module.split(".")) - node.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
    return {name for name in found if name.startswith("npu_pipeline.")}


def _collapse(name: str) -> str:
    """A module of the device package counts as the device layer."""
    return "npu_pipeline.device" if name.startswith("npu_pipeline.device.") else name


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = _collapse(_module_name(path))
        targets = {_collapse(t) for t in _run_time_imports(path)} - {source}
        graph.setdefault(source, set()).update(targets)
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph.get(start, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return seen


def test_profiles_import_only_the_contract_and_the_errors():
    direct = _run_time_imports(PACKAGE / "profiles.py")
    assert direct == {"npu_pipeline.contract", "npu_pipeline.errors"}
    graph = _import_graph()
    below = _reachable(graph, "npu_pipeline.profiles")
    assert not below & {f"npu_pipeline.{name}" for name in CIRCLE}, below


@pytest.mark.parametrize("name", CIRCLE)
def test_no_import_circle_through(name):
    graph = _import_graph()
    module = f"npu_pipeline.{name}"
    assert module in graph
    assert module not in _reachable(graph, module)


def test_the_import_check_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    # What makes the two tests above able to fail.
    fake = tmp_path / "npu_pipeline"
    (fake / "device").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "errors.py").write_text("")
    (fake / "device" / "__init__.py").write_text("from .npu import x\n")
    (fake / "device" / "npu.py").write_text("def f():\n    from npu_pipeline import profiles\n")
    (fake / "profiles.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import npu_pipeline.device\n"
        "def g():\n    from npu_pipeline.errors import E\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert _run_time_imports(fake / "device" / "__init__.py") == {"npu_pipeline.device.npu"}
    assert _run_time_imports(fake / "device" / "npu.py") == {"npu_pipeline.profiles"}
    assert _run_time_imports(fake / "profiles.py") == {"npu_pipeline.errors"}
    (fake / "profiles.py").write_text("def g():\n    from npu_pipeline.device import npu\n")
    graph = _import_graph()
    assert "npu_pipeline.profiles" in _reachable(graph, "npu_pipeline.profiles")


#: Imports one module of the package without running the package's __init__
#: (which imports everything), uses it, and prints which package modules loaded.
_ALONE = """
import importlib, importlib.util, sys, types
spec = importlib.util.find_spec("npu_pipeline")
package = types.ModuleType("npu_pipeline")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["npu_pipeline"] = package
module = importlib.import_module("npu_pipeline." + sys.argv[1])
if sys.argv[1] == "profiles":
    from npu_pipeline.contract import load_contract
    p = module.DeviceProfile.from_json(module.NPU2.slowed(2).to_json())
    p.describe(), p.run_seconds(load_contract("gemm_i8_i32"), (512, 512, 512))
    [a.modelled(module.NPU2, load_contract("gemm_i8_i32")) for a in module.ANCHORS]
print(" ".join(sorted(m for m in sys.modules if m.startswith("npu_pipeline."))))
"""


@pytest.mark.parametrize("name", CIRCLE)
def test_each_module_of_the_former_circle_imports_first_in_a_fresh_interpreter(name):
    done = subprocess.run(
        [sys.executable, "-c", _ALONE, name], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert f"npu_pipeline.{name}" in loaded
    if name == "profiles":
        # The contract's own imports (the golden model, the kernels' data package) aside.
        assert loaded - {"npu_pipeline.reference", "npu_pipeline.kernels"} == {
            "npu_pipeline.profiles",
            "npu_pipeline.contract",
            "npu_pipeline.errors",
        }
