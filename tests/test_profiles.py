"""Device profiles: names, limits, the timing model's sources and fits, slowing, calibration."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from npu_pipeline import calibration
from npu_pipeline.contract import load_contract, parse_contract
from npu_pipeline.errors import PlanError
from npu_pipeline.profiles import CPU, CPU_DEFAULTS, NPU1, NPU2, DeviceProfile, get_profile

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


def test_unknown_profile_is_a_plan_error():
    with pytest.raises(PlanError, match="npu1, npu2, cpu"):
        get_profile("npu3")


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


def test_npu2_model_reproduces_the_public_gemm_figures():
    # docs/hardware-facts.md#peak-and-measured-throughput: 3.2 TOPS at 1024x512x1024,
    # 7-8 TOPS at 2048^3.
    for block, tops in (((1024, 512, 1024), 3.2), ((2048, 2048, 2048), 7.5)):
        ops = 2 * np.prod(block)
        assert ops / NPU2.run_seconds(GEMM, block) / 1e12 == pytest.approx(tops, rel=1e-6)


def test_tile16_on_npu1_reproduces_the_seed_call():
    run = NPU1.run_seconds(TILE16, (16, 16, 16))
    # The kernel() call, docs/why.md#what-the-seeds-authors-found-later.
    assert run == pytest.approx(0.33e-3, rel=0.01)
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
