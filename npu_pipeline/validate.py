"""``npu-pipeline validate``: the acceptance run of a device, a report to attach to a bug,
and a device profile calibrated from what was measured.

It runs, on whatever device ``open_pipeline`` picks (or ``--device``):

- **exactness** over a grid of shapes (one element to a few hundred, odd
  sizes, both output dtypes), each compared exactly with the int64 product
  (and, for int8, the same shift-round-saturate on it);
- **dispatch cost** per run of the smallest legal block: lone runs (start,
  wait), runs kept in flight back to back from two slots (queued), and the
  runs of one batch submitted together (chained, when the device uses runlists);
- **per-stage figures** of one larger matmul: pack, execute and accumulate
  busy time and the overlap efficiency, measured against the plan's
  prediction (measured / predicted).

Every device figure names where it was measured (``timing``): ``hardware``
only on a real NPU; on the emulator the figures are this CPU's, EMULATED, and
say nothing about an NPU. The calibrated profile keeps the base profile's
parameters and replaces what was measured, with the source of each.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from npu_pipeline.benchmarks import median_seconds, random_operands, shape_name, stream_runs
from npu_pipeline.doctor import Finding, format_findings, import_pyxrt
from npu_pipeline.errors import NpuPipelineError
from npu_pipeline.profiles import DeviceProfile
from npu_pipeline.reference import srs

#: Shapes of the exactness grid (M, K, N): edges, odd sizes, up to a few hundred.
GRID = (
    (1, 1, 1),
    (3, 5, 7),
    (64, 64, 64),
    (97, 130, 75),
    (200, 33, 301),
    (257, 129, 255),
    (300, 300, 300),
)
QUICK_GRID = ((1, 1, 1), (3, 5, 7), (97, 130, 75))
#: The matmul whose stages are measured against the plan (and the quick one): the
#: Whisper-base FC1 product of ``demo``, planned in several batches.
STAGE_SHAPE, QUICK_STAGE_SHAPE = (1500, 512, 2048), (768, 512, 1536)
#: int8 output checks: this shift and rounding, saturated.
INT8_SHIFT, INT8_ROUNDING = 7, "floor"
#: Runs timed per dispatch figure (and in --quick).
DISPATCH_RUNS, QUICK_DISPATCH_RUNS = 60, 12
#: Runs of the chained batch.
CHAIN_RUNS = 8
#: Stage ratio (measured / predicted) outside which the finding warns.
RATIO_BAND = (0.5, 2.0)
#: Queued runs costing more than this times a lone run's means they do not overlap
#: (a margin above 1: on a shared machine the two figures jitter by a few percent).
QUEUED_MARGIN = 1.2


def timing_label(timing: str) -> str:
    """How a figure measured on a device with ``DeviceInfo.timing`` must be labelled."""
    return {
        "hardware": "measured on the NPU",
        "modelled": "MODELLED (emulator held to a profile's times)",
    }.get(timing, "EMULATED (the emulator on this CPU; not NPU figures)")


@dataclass(frozen=True)
class Validation:
    """What one ``validate`` run measured and found.

    Attributes:
        versions: library, Python, numpy, pyxrt/XRT versions.
        device: the :class:`~npu_pipeline.device.DeviceInfo` fields.
        label: how the device figures are to be read (:func:`timing_label`).
        exactness: one row per (shape, out dtype): ``shape``, ``dtype``, ``exact``.
        dispatch: seconds per run: ``single``, ``queued``, ``chained`` (with
            ``chained_as``: ``"runlist"`` or ``"single runs"``), and the profile's
            ``predicted_single`` and ``predicted_queued``.
        stages: the stage run: ``shape``, per-stage ``measured_s``, the plan's
            ``predicted_s`` and ``ratio`` (measured / predicted), the profile's
            uncorrected ``profile_s`` and ``profile_ratio``, ``eta_measured``,
            ``eta_predicted``, ``wall_ratio``.
        findings: the verdicts.
        profile: the calibrated profile.
    """

    versions: dict[str, Any]
    device: dict[str, Any]
    label: str
    exactness: tuple[dict[str, Any], ...]
    dispatch: dict[str, Any]
    stages: dict[str, Any]
    findings: tuple[Finding, ...]
    profile: DeviceProfile

    @property
    def exit_code(self) -> int:
        """1 when a finding failed (a wrong result), else 0."""
        return 1 if any(f.status == "fail" for f in self.findings) else 0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able values: attach it to a bug."""
        data = dataclasses.asdict(self)
        data["findings"] = [f.to_dict() for f in self.findings]
        data["profile"] = self.profile.to_dict()
        data["exit_code"] = self.exit_code
        return data

    def profile_text(self) -> str:
        """The calibrated profile as a profile file's text (:meth:`DeviceProfile.to_json`),
        which ``open_pipeline(profile=path)`` and ``plan_batches(profile=path)`` read."""
        return self.profile.to_json()

    def format(self) -> str:
        """The report as text."""
        d, s = self.dispatch, self.stages
        wrong = [r for r in self.exactness if not r["exact"]]
        lines = [
            f"npu-pipeline validate on {self.device['name']!r} ({self.device['backend']}); "
            f"device figures: {self.label}",
            f"exactness: {len(self.exactness) - len(wrong)} of {len(self.exactness)} "
            "(shape, dtype) results exact against the int64 product",
            f"dispatch per run, {self.label}: single {d['single'] * 1e6:.1f} us, "
            f"queued {d['queued'] * 1e6:.1f} us, chained ({d['chained_as']}) "
            f"{d['chained'] * 1e6:.1f} us ({self.device['runlists_reason']}); "
            "the profile predicts single "
            f"{d['predicted_single'] * 1e6:.1f} us, queued {d['predicted_queued'] * 1e6:.1f} us",
            f"stages of {shape_name(s['shape'])} ({s['batches']} batches), {self.label}; "
            "ratios are measured / predicted by the plan (with the cost model's corrections) "
            "and by the profile alone:",
        ]
        for stage, ratio in s["ratio"].items():
            lines.append(
                f"  {stage:<11} {s['measured_s'][stage] * 1e3:9.3f} ms measured "
                f"{s['predicted_s'][stage] * 1e3:9.3f} ms predicted   plan {ratio:.2f}   "
                f"profile {s['profile_ratio'][stage]:.2f}"
            )
        lines.append(
            f"  wall ratio {s['wall_ratio']:.2f}; eta {s['eta_measured']} measured, "
            f"{s['eta_predicted']} predicted"
        )
        return "\n".join(lines + format_findings(self.findings))


def _versions() -> dict[str, Any]:
    from npu_pipeline import __version__
    from npu_pipeline.doctor import check_pyxrt

    pyxrt, error = import_pyxrt()
    xrt = check_pyxrt("auto", pyxrt, error).data
    return {
        "npu_pipeline": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        **xrt,
    }


async def check_exactness(
    pipe: Any, grid: tuple[tuple[int, int, int], ...]
) -> list[dict[str, Any]]:
    """Every shape of ``grid`` in int32 and int8 output on ``pipe``, each compared exactly."""
    rows = []
    for index, shape in enumerate(grid):
        a, b = random_operands(np.random.default_rng(index), *shape)
        exact = a.astype(np.int64) @ b.astype(np.int64)
        c32 = await pipe.matmul(a, b, out_dtype=np.int32)
        rows.append(
            {"shape": list(shape), "dtype": "int32", "exact": bool(np.array_equal(c32, exact))}
        )
        c8 = await pipe.matmul(a, b, out_dtype=np.int8, shift=INT8_SHIFT, rounding=INT8_ROUNDING)
        expected8 = srs(exact, INT8_SHIFT, INT8_ROUNDING, "saturate")
        rows.append(
            {"shape": list(shape), "dtype": "int8", "exact": bool(np.array_equal(c8, expected8))}
        )
    return rows


def _per_run(fn: Callable[[], None], runs: int) -> float:
    """Median seconds of ``fn`` (which makes ``runs`` runs) divided by ``runs``."""
    return median_seconds(fn, repeat=3) / runs


def measure_dispatch(npu: Any, runs: int) -> dict[str, Any]:
    """Seconds per run of the smallest legal block on the open ``npu``: lone, queued, chained.

    The block's compute is included (it is the smallest the contract allows):
    on hardware it is a few microseconds, on the emulator this CPU's product.
    """
    block = npu.contract.target(npu.info.generation).block_granularity
    slots = [npu.allocate_slot(block) for _ in range(2)]
    stride = npu.contract.run_buffer_bytes(block)
    chain_slot = npu.allocate_slot({name: CHAIN_RUNS * size for name, size in stride.items()})

    def single() -> None:
        for _ in range(runs):
            npu.wait(npu.start(slots[0], block))

    def queued() -> None:
        stream_runs(npu, slots, block, runs)

    def chained() -> None:
        for _ in range(max(1, runs // CHAIN_RUNS)):
            npu.wait(npu.start(chain_slot, block, n_runs=CHAIN_RUNS))

    try:
        return {
            "block": list(block),
            "single": _per_run(single, runs),
            "queued": _per_run(queued, runs),
            "chained": _per_run(chained, max(1, runs // CHAIN_RUNS) * CHAIN_RUNS),
            "chained_as": "runlist" if npu.info.runlists else "single runs",
        }
    finally:
        for slot in (*slots, chain_slot):
            npu.free_slot(slot)


async def measure_stages(pipe: Any, shape: tuple[int, int, int]) -> dict[str, Any]:
    """One matmul of ``shape`` run twice; the second's stage busy times and eta beside its plan."""
    from npu_pipeline.planner import stage_model
    from npu_pipeline.timeline import STAGES, format_overlap

    a, b = random_operands(np.random.default_rng(99), *shape)
    c = await pipe.matmul(a, b)  # the first call warms slots and corrects the cost model
    plan = pipe.plan(*shape)
    with pipe.timeline.window() as window:
        await pipe.matmul(a, b, out=c)
    estimate = plan.estimate
    cmp = window.compare_with_prediction(estimate.wall_s, estimate.busy_s, len(plan.batches))
    # The plan's prediction carries the cost model's corrections from the first
    # call; the profile's own rates are judged by its uncorrected model.
    model = stage_model(pipe.contract, pipe.profile)
    columns = zip(*map(model, plan.batches), strict=True)
    uncorrected = {stage: sum(column) for stage, column in zip(STAGES, columns, strict=True)}
    by_profile = window.compare_with_prediction(estimate.wall_s, uncorrected, len(plan.batches))
    return {
        "shape": list(shape),
        "batches": len(plan.batches),
        "exact": bool(np.array_equal(c, a.astype(np.int64) @ b.astype(np.int64))),
        "measured_s": dict(cmp.measured_busy_s),
        "predicted_s": dict(cmp.predicted_busy_s),
        "ratio": cmp.busy_ratio,
        "profile_s": uncorrected,
        "profile_ratio": by_profile.busy_ratio,
        "wall_measured_s": cmp.measured_wall_s,
        "wall_predicted_s": cmp.predicted_wall_s,
        "wall_ratio": cmp.wall_ratio,
        "eta_measured": format_overlap(cmp.measured_efficiency, cmp.measured_na_reason),
        "eta_predicted": format_overlap(cmp.predicted_efficiency, cmp.predicted_na_reason),
    }


def calibrated_profile(
    base: Any, dispatch: dict[str, Any], stages: dict[str, Any], where: str
) -> Any:
    """``base`` with what validate measured: dispatch per run, and each stage's rates
    scaled by the profile's uncorrected predicted / measured busy time (``profile_ratio``).

    The dispatch figures include the smallest block's compute, so they are
    upper bounds of the dispatch alone.
    """
    ratio = stages["profile_ratio"]

    def scaled(rate: float, stage: str) -> float:
        return rate / ratio[stage] if 0 < ratio[stage] < float("inf") else rate

    source = f"measured by npu-pipeline validate on {where}"
    single = dispatch["single"]
    changed = {
        "dispatch_s": (single, f"{source}: a lone run of the smallest block"),
        "queued_dispatch_s": (
            min(dispatch["queued"], single),
            f"{source}: runs of the smallest block kept in flight",
        ),
        "pack_bytes_per_s": (scaled(base.pack_bytes_per_s, "pack"), f"{source}: pack busy time"),
        "accumulate_bytes_per_s": (
            scaled(base.accumulate_bytes_per_s, "accumulate"),
            f"{source}: accumulate busy time",
        ),
    }
    execute = f"{source}: execute busy time"
    cores = tuple((name, scaled(rate, "execute")) for name, rate in base.core_ops_per_s)
    sources = dict(base.sources)
    sources.update({p: s for p, (_, s) in changed.items()})
    sources.update({f"core_ops_per_s[{name}]": execute for name, _ in cores})
    return dataclasses.replace(
        base,
        name=f"{base.name} validated",
        description=f"{base.description}; calibrated by npu-pipeline validate on {where}",
        core_ops_per_s=cores,
        sources=tuple(sources.items()),
        **{p: v for p, (v, _) in changed.items()},
    )


def _findings(
    exactness: list[dict[str, Any]], dispatch: dict[str, Any], stages: dict[str, Any], label: str
) -> list[Finding]:
    wrong = [f"{shape_name(r['shape'])} {r['dtype']}" for r in exactness if not r["exact"]]
    if not stages["exact"]:
        wrong.append(f"{shape_name(stages['shape'])} int32 (stage run)")
    findings = [
        Finding(
            "exactness",
            "fail",
            f"NOT exact: {', '.join(wrong)}",
            "Run npu-pipeline doctor: its known-answer check names the cause "
            "(docs/troubleshooting.md#zeros-returned).",
        )
        if wrong
        else Finding(
            "exactness", "ok", f"{len(exactness)} results exact", data={"rows": len(exactness)}
        )
    ]
    low, high = RATIO_BAND
    off = {stage: r for stage, r in stages["profile_ratio"].items() if not low <= r <= high}
    findings.append(
        Finding(
            "stages",
            "warn",
            f"measured / predicted outside {low}..{high} ({label}): "
            + ", ".join(f"{s} {r:.2f}" for s, r in off.items()),
            "Plan with the calibrated profile (--profile-out), which takes these figures.",
        )
        if off
        else Finding(
            "stages", "ok", f"every stage within {low}..{high} of its prediction ({label})"
        )
    )
    if dispatch["queued"] > QUEUED_MARGIN * dispatch["single"]:
        findings.append(
            Finding(
                "dispatch",
                "warn",
                f"queued runs cost more than lone ones ({label})",
                "Runs in flight do not overlap here: try slots=1.",
            )
        )
    return findings


def check_profile_file(profile: DeviceProfile, shape: tuple[int, int, int]) -> Finding:
    """Whether ``profile``'s file text reads back as the same profile and plans ``shape``."""
    from npu_pipeline.planner import plan_batches

    try:
        again = DeviceProfile.from_json(profile.to_json(), origin="the calibrated profile")
        plan = plan_batches(*shape, profile=again)
    except NpuPipelineError as error:
        return Finding(
            "profile file",
            "fail",
            f"the calibrated profile does not read back: {error}",
            "Report this with the --json report attached.",
        )
    if again != profile:
        return Finding(
            "profile file",
            "fail",
            "the calibrated profile reads back different",
            "Report this with the --json report attached.",
        )
    return Finding(
        "profile file",
        "ok",
        f"reads back equal and plans {shape_name(shape)} in {len(plan.batches)} batch(es); "
        "pass its path as open_pipeline(profile=...) or plan_batches(profile=...)",
    )


async def validate(
    device: str = "auto", quick: bool = False, kernel: str = "gemm_i8_i32"
) -> Validation:
    """The acceptance run on ``device`` (as ``open_pipeline(device=...)``); ``quick`` for tests.

    Raises:
        DeviceError: the device cannot be opened.
    """
    import anyio

    from npu_pipeline.contract import load_contract
    from npu_pipeline.device import NpuDevice
    from npu_pipeline.pipeline import open_pipeline

    contract = load_contract(kernel)
    async with open_pipeline(device=device, kernel=contract, host_path=False) as pipe:
        info = pipe.device_info
        label = timing_label(info.timing)
        exactness = await check_exactness(pipe, QUICK_GRID if quick else GRID)
        stages = await measure_stages(pipe, QUICK_STAGE_SHAPE if quick else STAGE_SHAPE)
        base = pipe.profile
    runs = QUICK_DISPATCH_RUNS if quick else DISPATCH_RUNS

    def dispatch_run() -> dict[str, Any]:
        with NpuDevice.open(contract, device=info.backend, profile=base) as npu:
            return measure_dispatch(npu, runs)

    dispatch = await anyio.to_thread.run_sync(dispatch_run)
    dispatch["predicted_single"] = base.run_seconds(contract, tuple(dispatch["block"]))
    dispatch["predicted_queued"] = base.run_seconds(contract, tuple(dispatch["block"]), queued=True)
    where = f"{info.name!r} ({label})"
    profile = calibrated_profile(base, dispatch, stages, where)
    findings = _findings(exactness, dispatch, stages, label)
    findings.append(check_profile_file(profile, STAGE_SHAPE))
    return Validation(
        versions=_versions(),
        device=dataclasses.asdict(info),
        label=label,
        exactness=tuple(exactness),
        dispatch=dispatch,
        stages=stages,
        findings=tuple(findings),
        profile=profile,
    )


def run(device: str = "auto", quick: bool = False, kernel: str = "gemm_i8_i32") -> Validation:
    """:func:`validate` from synchronous code (the command line).

    Raises:
        NpuPipelineError: the device cannot be opened or used.
    """
    import anyio

    return anyio.run(lambda: validate(device, quick, kernel))
