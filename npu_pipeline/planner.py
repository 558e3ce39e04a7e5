"""The batch planner: block shape, slots, order and a simulated schedule, before anything runs.

:func:`plan_batches` cuts ``C[M x N] = A[M x K] @ B[K x N]`` into batches (one
kernel invocation over one padded block for ``block_gemm`` contracts; a group
of 16x16 tile pairs along k for ``tile_pair`` ones), picks the block shape and
the number of BO slots, and predicts the run by a discrete-event simulation
of the three pipeline stages (:func:`simulate`). It is pure: no device, no I/O.

Constraints every plan honours:

- block dimensions are multiples of the contract's ``block_granularity``, at most its
  ``max_block``, and movable by the shim DMA (``contract.check_block``);
- ``slots * slot_bytes <= memory_budget`` and ``slots <= runs_in_flight``;
- every run's modelled time is at most ``watchdog_s / WATCHDOG_FRACTION``;
- at most :data:`MAX_BATCHES` batches;
- batches run in the order ``for i-block, for j-block, for k-block``, so the
  k-blocks of one output block are consecutive and only the output block being
  summed needs an int32 accumulator.

Among the feasible (block, slots) pairs the plan with the lowest simulated
wall time wins; ties go to less pinned memory. Candidate blocks cut each
dimension into a small set of near-equal parts; a lower bound on each
candidate's wall time prunes the search, so only a few are simulated.

Every time in a plan is MODELLED from a :class:`~npu_pipeline.profiles.DeviceProfile`
(``docs/cost-model.md``), not measured.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npu_pipeline.contract import KernelContract, load_contract, shim_dma_problem
from npu_pipeline.errors import PlanError, ShapeError, explain
from npu_pipeline.learning import CostCorrections
from npu_pipeline.operands import check_out_dtype
from npu_pipeline.profile_lookup import get_profile
from npu_pipeline.profiles import DeviceProfile
from npu_pipeline.reference import MAX_EXACT_K
from npu_pipeline.timeline import (
    STAGES,
    Span,
    Timeline,
    format_overlap,
    overlap_efficiency,
    overlap_na_reason,
)

#: A run may take at most ``watchdog_s / WATCHDOG_FRACTION`` modelled seconds.
#: The watchdog resets the device when no run completes for ~2 s. Runs queued
#: back to back complete one run-time apart, so a run just under 2 s would be
#: legal in principle; the factor 4 is margin for the model (npu1 compute and
#: DMA rates are derived, not measured, and could be a few times optimistic)
#: and for other processes' runs sharing the array ahead of ours.
WATCHDOG_FRACTION = 4

#: Most batches a plan may have. Each batch costs host hand-offs (tens of
#: microseconds per stage) and a Python object; past this a plan spends more
#: on bookkeeping than a larger block would cost, and planning itself slows.
MAX_BATCHES = 2**17

#: Device seconds the scheduler lets other requests' work queue ahead of a
#: new batch, by default (``latency_budget_s``). A few milliseconds: short
#: enough that a small request issued during a large one finishes within a
#: few budgets, long enough that a run's fixed costs (dispatch, hand-offs,
#: 52-160 us on the NPUs modelled) stay a small share of it.
DEFAULT_LATENCY_BUDGET_S = 0.004

#: Batches of one request that fit the latency budget together: one running
#: on the device and one queued behind it, so that the device never waits for
#: a host hand-off. A plan that fits keeps every batch within
#: ``latency_budget_s / BATCHES_PER_BUDGET`` of modelled device time.
BATCHES_PER_BUDGET = 2

#: A plan is cut to fit the latency budget when that makes its simulated wall
#: time at most this much longer than the fastest plan's (a fraction); past
#: it, throughput wins and the plan says that it does not fit.
LATENCY_COST_TOLERANCE = 0.05

#: Longest exact product the host path takes on, seconds (and never longer
#: than the latency budget). It runs in one piece on a host core: a longer
#: one would take that core from the pipeline's own host stages, and from
#: the caller's other work, for long enough to show.
HOST_PATH_MAX_S = 0.002

#: Relative tolerance under which two simulated wall times count as equal.
_TIE = 1e-9

#: Bytes of the int32 accumulator per output element.
_ACC_ITEMSIZE = 4


# ---------------------------------------------------------------------------
# Public data


@dataclass(frozen=True)
class Batch:
    """One unit of pipeline work: packed into one slot, run, accumulated.

    Attributes:
        index: position in the plan (and in execution order).
        m_range, k_range, n_range: half-open (start, stop) element ranges of
            the unpadded matrices this batch covers.
        block: padded (m, k, n) of each kernel run of the batch. For
            ``block_gemm`` that is the batch's whole region rounded up to the
            block granularity (edge batches are smaller than ``Plan.block``); for
            ``tile_pair`` it is the fixed tile, and the batch holds ``n_runs``
            of them along k.
        slot: BO slot the batch uses, ``index % slots``.
        bytes_in: bytes packed into the slot's input buffers.
        bytes_out: bytes the runs write to the slot's output buffer.
        n_runs: kernel invocations in the batch (1 for ``block_gemm``).
        first: the batch holds the first k-block of its output block
            (accumulation starts from zero).
        final: it holds the last one (the output block is complete after it).
    """

    index: int
    m_range: tuple[int, int]
    k_range: tuple[int, int]
    n_range: tuple[int, int]
    block: tuple[int, int, int]
    slot: int
    bytes_in: int
    bytes_out: int
    n_runs: int
    first: bool
    final: bool


@dataclass(frozen=True)
class Estimate:
    """The predicted (MODELLED) run of a plan, from :func:`simulate`. Seconds.

    Attributes:
        wall_s: first pack start to last accumulate end.
        busy_s: total time per stage, keys ``pack``, ``execute``, ``accumulate``.
        serial_s: ``sum(busy_s)``, the wall time with nothing overlapped.
        overlap_efficiency: ``(T_ser - T_wall) / (T_ser - T_max)`` as defined in
            docs/timeline.md#the-numbers
            (:func:`npu_pipeline.timeline.overlap_efficiency`; the schedule
            has no idle time), or ``None`` when nothing can overlap: one
            batch, or at most one stage doing any work.
        overlap_na_reason: why ``overlap_efficiency`` is ``None``, else ``None``.
        bubbles_s: time the device sits idle between its first run's start
            and its last run's end.
        bound: the stage with the most busy time (the bottleneck).
        sequential_s: the same runs issued the seed's way: one kernel call at
            a time from a Python loop, nothing overlapped
            (``serial_s + n_runs * (profile.seed_call_host_s +
            profile.startup_seconds())``: each call finds the device idle).
    """

    wall_s: float
    busy_s: dict[str, float]
    serial_s: float
    overlap_efficiency: float | None
    overlap_na_reason: str | None
    bubbles_s: float
    bound: str
    sequential_s: float


@dataclass(frozen=True)
class Schedule:
    """Start and end of every stage of every batch, as :func:`simulate` predicts. Seconds from 0.

    Attributes:
        slots: the slot count simulated.
        pack, execute, accumulate: per batch, ``(start, end)``.
    """

    slots: int
    pack: tuple[tuple[float, float], ...]
    execute: tuple[tuple[float, float], ...]
    accumulate: tuple[tuple[float, float], ...]

    @property
    def wall_s(self) -> float:
        """End of the last accumulate (the schedule starts at 0)."""
        return self.accumulate[-1][1] if self.accumulate else 0.0

    @property
    def busy_s(self) -> dict[str, float]:
        """Total time per stage (one worker per stage, so spans never overlap)."""
        return {
            stage: sum(end - start for start, end in spans)
            for stage, spans in zip(STAGES, (self.pack, self.execute, self.accumulate), strict=True)
        }

    @property
    def bubbles_s(self) -> float:
        """Device idle time between the first run's start and the last run's end."""
        if not self.execute:
            return 0.0
        span = self.execute[-1][1] - self.execute[0][0]
        return max(0.0, span - self.busy_s["execute"])

    def estimate(self, sequential_s: float) -> Estimate:
        """The summary figures of this schedule (``sequential_s`` as :class:`Estimate`)."""
        busy = self.busy_s
        wall = self.wall_s
        return Estimate(
            wall_s=wall,
            busy_s=busy,
            serial_s=sum(busy.values()),
            overlap_efficiency=overlap_efficiency(busy, wall, len(self.execute)),
            overlap_na_reason=overlap_na_reason(busy, len(self.execute)),
            bubbles_s=self.bubbles_s,
            bound=max(STAGES, key=busy.__getitem__),
            sequential_s=sequential_s,
        )

    def to_timeline(self, request: int = 0) -> Timeline:
        """The schedule as predicted spans, to set beside a measured run (``Timeline.compare``)."""
        spans = [
            Span(request, index, stage, index % self.slots, start, end)
            for stage, per_batch in zip(
                STAGES, (self.pack, self.execute, self.accumulate), strict=True
            )
            for index, (start, end) in enumerate(per_batch)
        ]
        return Timeline(spans, max_spans=None)  # a prediction is compared whole


def simulate(
    durations: Sequence[tuple[float, float, float]], slots: int, startup_s: float = 0.0
) -> Schedule:
    """Discrete-event simulation of the three-stage pipeline over ``slots`` BO slots.

    Args:
        durations: per batch, in execution order, the seconds of its
            (pack, execute, accumulate) stages, execute as for a batch queued
            behind another (``DeviceProfile.execute_seconds``).
        slots: BO slots (>= 1). Batch ``i`` uses slot ``i % slots``.
        startup_s: what a batch's execute takes longer when it finds the
            device idle (``DeviceProfile.startup_seconds``): its submission
            could not overlap a run before it.

    Rules: each stage is one worker taking batches in order. Pack of batch
    ``i`` waits for the previous pack and for its slot, which is free when the
    accumulate of batch ``i - slots`` (the slot's previous user) has ended.
    Execute waits for its pack and for the device; accumulate waits for its
    execute and for the accumulator (k-blocks of one output add into the
    same region, in order).

    With one slot nothing overlaps: the wall time is the sum of all stage
    times. More slots never make it longer (every start time is a max of sums
    and only loses constraints).

    Raises:
        PlanError: ``slots < 1``.
    """
    if slots < 1:
        raise PlanError(explain(f"slots={slots}", "at least 1 slot", "Simulate with slots >= 1."))
    pack: list[tuple[float, float]] = []
    execute: list[tuple[float, float]] = []
    accumulate: list[tuple[float, float]] = []
    pack_end = exec_end = acc_end = 0.0
    for i, (p, x, q) in enumerate(durations):
        start = pack_end if i < slots else max(pack_end, accumulate[i - slots][1])
        pack_end = start + p
        pack.append((start, pack_end))
        idle = pack_end >= exec_end  # nothing running to overlap the submission with
        start = max(pack_end, exec_end)
        exec_end = start + x + (startup_s if idle else 0.0)
        execute.append((start, exec_end))
        start = max(exec_end, acc_end)
        acc_end = start + q
        accumulate.append((start, acc_end))
    return Schedule(slots, tuple(pack), tuple(execute), tuple(accumulate))


@dataclass(frozen=True)
class Plan:
    """How one matmul is cut into batches, and its predicted (MODELLED) schedule.

    Attributes:
        shape: (M, K, N) of the unpadded problem.
        kernel: contract name.
        profile: device profile name (says "slowed xF" for slowed profiles).
        generation: contract geometry used (``"npu1"`` or ``"npu2"``).
        out_dtype: ``"int32"`` (exact) or ``"int8"`` (requantised).
        block: padded (m, k, n) of one kernel run of a full batch.
        slots: BO slots (2 = double buffering).
        slot_bytes: pinned bytes of one slot (input and output buffers of its
            largest batch).
        memory_bytes: ``slots * slot_bytes``.
        memory_budget: the budget the plan had to fit, bytes.
        n_runs: kernel invocations over the whole plan.
        batches: the batches, in execution order.
        estimate: the predicted figures of the device path.
        schedule: per-batch stage spans behind ``estimate``.
        latency_budget_s: device seconds of other requests' work a new batch
            may find queued ahead of it (the scheduler's bound), seconds.
        batch_device_s: modelled device seconds of the plan's longest batch.
        fits_latency_budget: every batch is within
            ``latency_budget_s / BATCHES_PER_BUDGET`` of device time.
        latency_cost: how much longer (a fraction of the fastest plan's
            simulated wall) the plan is for being cut to fit the budget; for a
            plan that does not fit, what fitting would have cost (``inf``: no
            legal block fits).
        path: ``"device"`` (the batches run on the NPU) or ``"host"`` (the
            exact product is computed on the host: the device would not pay).
        host_s: modelled host seconds of the exact product on the host, or
            ``None`` when the contract has no host path (``tile_pair``'s
            clipped semantic is not the exact product).
        path_reason: why ``path`` was chosen, in words.
    """

    shape: tuple[int, int, int]
    kernel: str
    profile: str
    generation: str
    out_dtype: str
    block: tuple[int, int, int]
    slots: int
    slot_bytes: int
    memory_bytes: int
    memory_budget: int
    n_runs: int
    batches: tuple[Batch, ...]
    estimate: Estimate
    schedule: Schedule
    latency_budget_s: float
    batch_device_s: float
    fits_latency_budget: bool
    latency_cost: float
    path: str
    host_s: float | None
    path_reason: str

    @property
    def predicted_s(self) -> float:
        """Predicted (MODELLED) wall seconds of the path the plan takes."""
        if self.path == "host" and self.host_s is not None:
            return self.host_s
        return self.estimate.wall_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples become lists under ``json.dumps``)."""
        data = dataclasses.asdict(self)
        data["modelled"] = True
        return data

    def explain(self, max_batches: int = 6) -> str:
        """A readable table: sizes, predicted stage times, and the first batches."""
        m, k, n = self.shape
        est = self.estimate
        batch_grid = "x".join(
            str(len({getattr(b, f"{a}_range") for b in self.batches})) for a in "mkn"
        )
        lines = [
            f"plan for C[{m}x{n}] = A[{m}x{k}] @ B[{k}x{n}] -> {self.out_dtype}",
            f"  kernel    {self.kernel} ({self.generation} geometry)",
            f"  profile   {self.profile}",
            f"  block     {_shape(self.block)} (m x k x n, padded); batches "
            f"{batch_grid} (m x k x n) = {len(self.batches)}, runs {self.n_runs}",
            f"  slots     {self.slots} x {_bytes(self.slot_bytes)} = "
            f"{_bytes(self.memory_bytes)} pinned of {_bytes(self.memory_budget)} budget",
            f"  latency   {self.latency_summary()}",
            f"  path      {self.path}: {self.path_reason}",
            "",
            f"  {'stage':<12}{'busy':>12}{'util':>8}",
        ]
        for stage in STAGES:
            busy = est.busy_s[stage]
            util = busy / est.wall_s if est.wall_s else 0.0
            lines.append(f"  {stage:<12}{_seconds(busy):>12}{util:>8.0%}")
        eta = format_overlap(est.overlap_efficiency, est.overlap_na_reason, 2)
        lines += [
            f"  {'wall':<12}{_seconds(est.wall_s):>12}",
            "",
            f"  overlap efficiency {eta}; bound by {est.bound}; "
            f"device bubbles {_seconds(est.bubbles_s)}",
            f"  all stages in series {_seconds(est.serial_s)}; the seed's per-call loop over "
            f"these runs {_seconds(est.sequential_s)}",
            "",
            f"  {'batch':>5} {'m':>11} {'k':>11} {'n':>11} {'block':>14} {'runs':>5} "
            f"{'slot':>4} {'in':>10} {'out':>10}  first final",
        ]
        for b in self.batches[:max_batches]:
            lines.append(
                f"  {b.index:>5} {_range(b.m_range):>11} {_range(b.k_range):>11} "
                f"{_range(b.n_range):>11} {_shape(b.block):>14} {b.n_runs:>5} {b.slot:>4} "
                f"{_bytes(b.bytes_in):>10} {_bytes(b.bytes_out):>10}  {b.first!s:<5} {b.final}"
            )
        if len(self.batches) > max_batches:
            lines.append(f"  ... {len(self.batches) - max_batches} more batches")
        lines.append(
            f"  All times are MODELLED from profile {self.profile!r} (docs/cost-model.md), "
            "not measured on an NPU."
        )
        return "\n".join(lines)

    def latency_summary(self) -> str:
        """The latency budget, the longest batch, and whether it fits (and at what cost)."""
        limit = self.latency_budget_s / BATCHES_PER_BUDGET
        head = (
            f"budget {_seconds(self.latency_budget_s)}; longest batch "
            f"{_seconds(self.batch_device_s)} on the device"
        )
        if self.fits_latency_budget:
            cost = f", {self.latency_cost:+.1%} wall for the cut" if self.latency_cost else ""
            return f"{head} (fits <= {_seconds(limit)}{cost})"
        if math.isinf(self.latency_cost):
            why = "no legal block is that short"
        else:
            why = f"fitting would cost {self.latency_cost:+.1%} wall"
        return f"{head} (does NOT fit <= {_seconds(limit)}: {why})"


# ---------------------------------------------------------------------------
# Formatting


def _seconds(value: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-6:.3g} us"


def _bytes(value: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value} B"


def _round_down(value: float, digits: int = 3) -> float:
    """``value`` cut (not rounded) to ``digits`` significant digits, so a limit stays safe."""
    scale = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return math.floor(value / scale) * scale


def _shape(block: tuple[int, int, int]) -> str:
    return "x".join(map(str, block))


def _range(r: tuple[int, int]) -> str:
    return f"{r[0]}:{r[1]}"


# ---------------------------------------------------------------------------
# Geometry and cost of candidate plans


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


@dataclass(frozen=True)
class _Axis:
    """One dimension cut into batches of ``size`` elements; the last one may be shorter."""

    extent: int
    size: int
    granularity: int

    @property
    def count(self) -> int:
        return -(-self.extent // self.size)

    def padded_sizes(self) -> list[int]:
        """Padded extent of every batch along this axis, in order."""
        edge = self.extent - (self.count - 1) * self.size
        return [self.size] * (self.count - 1) + [_round_up(edge, self.granularity)]

    def pieces(self) -> list[tuple[int, int]]:
        """``(how many, padded size)`` of the full batches then the last one."""
        sizes = self.padded_sizes()
        return [(c, s) for c, s in ((self.count - 1, sizes[0]), (1, sizes[-1])) if c]

    def ranges(self) -> list[tuple[int, int]]:
        return [(i, min(self.extent, i + self.size)) for i in range(0, self.extent, self.size)]


def _axis_sizes(extent: int, granularity: int, cap: int) -> list[int]:
    """Candidate batch sizes: ``extent`` split into near-equal parts on the granularity grid.

    Part counts: the fewest that fit ``cap`` and the next three (fine choice
    where it matters, among big blocks), doubling from there, and the most
    (one granule per part, so the smallest legal block is always a candidate).
    """
    most = -(-extent // granularity)
    fewest = -(-extent // cap)
    parts = {fewest, fewest + 1, fewest + 2, fewest + 3, most}
    p = fewest
    while p < most:
        parts.add(p)
        p *= 2
    return sorted({_round_up(-(-extent // p), granularity) for p in parts if p <= most})


class _Costs:
    """Per-batch stage times of one (contract, profile, out dtype), memoised by batch shape.

    With ``corrections`` (learned measured/modelled factors) every stage time
    is the profile's times that factor of its stage and run block.
    """

    def __init__(
        self,
        contract: KernelContract,
        profile: DeviceProfile,
        requantise: bool,
        corrections: CostCorrections | None = None,
    ) -> None:
        spec = contract.target(profile.generation)
        self.contract = contract
        self.profile = profile
        self.requantise = requantise
        self.corrections = corrections
        self.core_tile = spec.core_tile
        # tile_pair kernels always run their one fixed tile (max_block == granularity).
        self.fixed_run = spec.max_block if contract.semantic == "tile_pair" else None
        self.startup_s = profile.startup_seconds()
        self._memo: dict[tuple[tuple[int, int, int], bool], tuple[float, float, float]] = {}

    def run_block(self, shape: tuple[int, int, int]) -> tuple[tuple[int, int, int], int]:
        """(padded block of one run, runs) of a batch of padded ``shape``."""
        if self.fixed_run is None:
            return shape, 1
        runs = math.prod(s // r for s, r in zip(shape, self.fixed_run, strict=True))
        return self.fixed_run, runs

    def total_runs(self, axes: tuple[_Axis, _Axis, _Axis]) -> int:
        """Kernel runs over all batches cut along ``axes``."""
        if self.fixed_run is None:
            return _batch_count(axes)
        return math.prod(
            sum(a.padded_sizes()) // r for a, r in zip(axes, self.fixed_run, strict=True)
        )

    def io_bytes(self, shape: tuple[int, int, int]) -> tuple[int, int]:
        """(bytes in, bytes out) of a batch of padded ``shape``."""
        run, runs = self.run_block(shape)
        sizes = self.contract.run_buffer_bytes(run)
        out = self.contract.output_buffer.name
        return runs * (sum(sizes.values()) - sizes[out]), runs * sizes[out]

    def stage_seconds(self, shape: tuple[int, int, int], final: bool) -> tuple[float, float, float]:
        """(pack, execute, accumulate) seconds of a batch of padded ``shape``."""
        key = (shape, final)
        if key not in self._memo:
            run, runs = self.run_block(shape)
            bytes_in, bytes_out = self.io_bytes(shape)
            if final and self.requantise:
                # int8 output: the final batch of an output block also requantises
                # its int32 accumulator, one more pass over it.
                bytes_out += shape[0] * shape[2] * _ACC_ITEMSIZE
            seconds = (
                self.profile.pack_seconds(bytes_in),
                self.profile.execute_seconds(self.contract, run, runs),
                self.profile.accumulate_seconds(bytes_out),
            )
            if self.corrections is not None:
                seconds = self.corrections.apply(run, seconds)
            self._memo[key] = seconds
        return self._memo[key]


def _batch_count(axes: tuple[_Axis, _Axis, _Axis]) -> int:
    return math.prod(a.count for a in axes)


def stage_model(
    kernel: KernelContract, profile: DeviceProfile, out_dtype: Any = np.int32
) -> Callable[[Batch], tuple[float, float, float]]:
    """The profile's uncorrected (pack, execute, accumulate) seconds of a plan's batch.

    What :func:`plan_batches` predicts for a batch without corrections: the
    pipeline compares it with what it measures
    (:class:`npu_pipeline.learning.CostLearner`). Memoised by batch shape;
    safe to call from worker threads.
    """
    costs = _Costs(kernel, profile, requantise=check_out_dtype(out_dtype) != np.int32)

    def seconds(batch: Batch) -> tuple[float, float, float]:
        # A batch's padded region: its runs lie along k (one run for block_gemm).
        m, k, n = batch.block
        return costs.stage_seconds((m, k * batch.n_runs, n), batch.final)

    return seconds


@dataclass(frozen=True)
class _Candidate:
    """One block shape: its axes, its slot's bytes, and a cheap wall-time floor.

    Attributes:
        dispatch_bound: the execute stage's hand-offs and dispatches alone,
            seconds; cheap, so the search can skip a candidate before costing it.
        device_s: modelled device seconds of its largest (full) batch.
    """

    axes: tuple[_Axis, _Axis, _Axis]
    slot_bytes: int
    dispatch_bound: float
    device_s: float

    @property
    def block(self) -> tuple[int, int, int]:
        m, k, n = self.axes
        return (m.size, k.size, n.size)

    @property
    def n_batches(self) -> int:
        return _batch_count(self.axes)

    def lower_bound(self, costs: _Costs) -> float:
        """A floor on any schedule's wall time, from stage totals and the first and last batch.

        With stages in order on one worker each, any schedule lasts at least
        all of one stage plus the part of the other stages that must come
        before its first batch or after its last one.
        """
        m, k, n = self.axes
        k_pieces = k.pieces()
        totals = [0.0, 0.0, 0.0]
        for cm, pm in m.pieces():
            for cn, pn in n.pieces():
                for i, (ck, pk) in enumerate(k_pieces):
                    times = costs.stage_seconds((pm, pk, pn), i == len(k_pieces) - 1)
                    for s in range(3):
                        totals[s] += cm * cn * ck * times[s]
        sizes = [a.padded_sizes() for a in self.axes]
        p0, x0, _ = costs.stage_seconds(tuple(s[0] for s in sizes), k.count == 1)
        _, x1, q1 = costs.stage_seconds(tuple(s[-1] for s in sizes), True)
        pack, execute, acc = totals
        return max(pack + x1 + q1, p0 + execute + q1, p0 + x0 + acc)

    def durations(self, costs: _Costs) -> list[tuple[float, float, float]]:
        """Stage seconds of every batch, in execution order (i, then j, then k)."""
        m, k, n = (a.padded_sizes() for a in self.axes)
        last = len(k) - 1
        return [
            costs.stage_seconds((pm, pk, pn), kk == last)
            for pm in m
            for pn in n
            for kk, pk in enumerate(k)
        ]


# ---------------------------------------------------------------------------
# The planner


def _check_shape(m: Any, k: Any, n: Any) -> tuple[int, int, int]:
    shape = []
    for name, value in zip("MKN", (m, k, n), strict=True):
        try:
            size = operator.index(value)
        except TypeError:
            size = None
        if size is None or isinstance(value, bool) or size < 1:
            raise ShapeError(
                explain(
                    f"{name}={value!r}",
                    "an integer >= 1",
                    "Pass the matrix dimensions as positive integers.",
                )
            )
        shape.append(size)
    if shape[1] > MAX_EXACT_K:
        raise ShapeError(
            explain(
                f"K={shape[1]} can overflow the int32 accumulator",
                f"K <= {MAX_EXACT_K} (128*128*K must fit in int32)",
                "Split K into parts and add the partial products in int64.",
            )
        )
    return shape[0], shape[1], shape[2]


def check_slots(slots: Any, profile: DeviceProfile) -> int:
    """Return ``slots`` as an int if it is a BO slot count ``profile`` can use, or raise.

    A slot holds one batch's buffers while its runs are in flight, so the
    count is at most the runs a hardware context keeps in flight.

    Raises:
        PlanError: not an integer in ``1..profile.runs_in_flight``.
    """
    most = profile.runs_in_flight
    if isinstance(slots, bool) or not isinstance(slots, int | np.integer) or not 1 <= slots <= most:
        raise PlanError(
            explain(
                f"slots={slots!r}",
                f"an integer 1..{most} (the runs a hardware context keeps in flight on "
                f"{profile.name}), or None to choose",
                f"Pass slots between 1 and {most} (CLI: --slots 1 to --slots {most}), "
                "or leave it out.",
            )
        )
    return int(slots)


def _slot_choices(slots: Any, profile: DeviceProfile) -> list[int]:
    if slots is None:
        return list(range(1, profile.runs_in_flight + 1))
    return [check_slots(slots, profile)]


def _check_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise PlanError(
            explain(
                f"memory_budget={budget!r}",
                "a positive number of bytes",
                "Pass e.g. memory_budget=64 * 2**20, or leave it out for the profile's default.",
            )
        )
    return int(budget)


def _candidates(
    shape: tuple[int, int, int], contract: KernelContract, costs: _Costs
) -> list[_Candidate]:
    """Every candidate block shape, with its slot bytes (not yet evaluated)."""
    spec = contract.target(costs.profile.generation)
    if costs.fixed_run is None:
        per_axis = [
            [_Axis(extent, s, g) for s in _axis_sizes(extent, g, cap)]
            for extent, g, cap in zip(shape, spec.block_granularity, spec.max_block, strict=True)
        ]
    else:
        # A tile-pair batch is one output tile and a run of tiles along k.
        rm, rk, rn = costs.fixed_run
        m, k, n = shape
        per_axis = [
            [_Axis(m, rm, rm)],
            [_Axis(k, s, rk) for s in _axis_sizes(k, rk, _round_up(k, rk))],
            [_Axis(n, rn, rn)],
        ]
    profile = costs.profile
    dispatch = profile.device_time_scale * profile.queued_dispatch_s
    # Corrected execute times can be shorter than the profile's: scale the
    # bound down by the smallest execute factor, so it stays a bound.
    lowest = 1.0 if costs.corrections is None else costs.corrections.lowest("execute")
    out = []
    for am in per_axis[0]:
        for ak in per_axis[1]:
            for an in per_axis[2]:
                axes = (am, ak, an)
                full = (am.size, ak.size, an.size)
                bound = lowest * (
                    _batch_count(axes) * profile.batch_overhead_s
                    + costs.total_runs(axes) * dispatch
                )
                run, runs = costs.run_block(full)
                device_s = runs * profile.run_seconds(costs.contract, run, queued=True)
                if costs.corrections is not None:
                    device_s *= costs.corrections.factor("execute", run)
                out.append(_Candidate(axes, sum(costs.io_bytes(full)), bound, device_s))
    return out


def _problem(candidate: _Candidate, costs: _Costs) -> str | None:
    """Which limit other than memory the candidate breaks (``"dma"``, ``"batches"``,
    ``"watchdog"``), or ``None`` if it breaks none."""
    run, _ = costs.run_block(candidate.block)
    if shim_dma_problem(run, costs.core_tile, costs.contract):
        return "dma"
    if candidate.n_batches > MAX_BATCHES:
        return "batches"
    if (
        costs.profile.run_seconds(costs.contract, run)
        > costs.profile.watchdog_s / WATCHDOG_FRACTION
    ):
        return "watchdog"
    return None


def _infeasible(
    candidates: list[_Candidate], costs: _Costs, budget: int, slot_counts: list[int]
) -> PlanError:
    """The PlanError for a request no candidate satisfies: which limit, and what would work."""
    profile = costs.profile
    problems = [(_problem(c, costs), c) for c in candidates]
    if all(p in ("dma", "batches") for p, _ in problems):
        fewest = min(c.n_batches for p, c in problems if p == "batches")
        return PlanError(
            explain(
                f"this product needs at least {fewest} batches with the largest legal block",
                f"at most {MAX_BATCHES} batches per plan (beyond that the per-batch host "
                "overhead and the plan itself outweigh any gain)",
                "Split the product (e.g. by rows of A) and plan each part, or use a kernel "
                "with larger blocks.",
            )
        )
    if all(p is not None for p, _ in problems):
        limit = profile.watchdog_s / WATCHDOG_FRACTION
        shortest, block = min(
            (profile.run_seconds(costs.contract, costs.run_block(c.block)[0]), c.block)
            for p, c in problems
            if p == "watchdog"
        )
        factor = _round_down(profile.device_time_scale * limit / shortest)
        return PlanError(
            explain(
                f"every legal block runs too long on {profile.name}: the shortest, "
                f"{_shape(block)}, takes {shortest:.3g} s modelled",
                f"runs <= watchdog {profile.watchdog_s:g} s / {WATCHDOG_FRACTION} = {limit:.3g} s",
                f"Use a profile whose device times are at most x{factor:.3g} of the unslowed "
                "ones, or a kernel with smaller runs.",
            )
        )
    fewest = slot_counts[0]
    need = min((c for p, c in problems if p is None), key=lambda c: (c.slot_bytes, c.block))
    minimum = fewest * need.slot_bytes
    fix = f"Pass memory_budget={minimum} (CLI: --budget {minimum}) or more, and raise ulimit -l"
    fix += " to match" + (", or fewer slots" if fewest > 1 else "")
    # Blocks that fit the budget but need too many batches: the batch cap binds,
    # and the budget only decides which blocks are left to break it. (Smaller
    # blocks run shorter, so the watchdog never binds inside a budget alone.)
    within = [c for p, c in problems if p == "batches" and fewest * c.slot_bytes <= budget]
    if not within:
        return PlanError(
            explain(
                f"no block fits the pinned-memory budget of {budget} bytes with "
                f"{fewest} slot(s) on {profile.name}",
                f"a budget of at least {minimum} bytes ({fewest} slot(s) of block "
                f"{_shape(need.block)})",
                fix + ".",
            )
        )
    least = min(c.n_batches for c in within)
    return PlanError(
        explain(
            f"every legal block that fits the pinned-memory budget of {budget} bytes with "
            f"{fewest} slot(s) on {profile.name} needs more than {MAX_BATCHES} batches "
            f"(at least {least})",
            f"at most {MAX_BATCHES} batches per plan (block {_shape(need.block)} needs fewer, "
            f"in {minimum} bytes)",
            fix + ", or split the product (e.g. by rows of A) and plan each part.",
        )
    )


def _batches(candidate: _Candidate, costs: _Costs, slots: int) -> tuple[Batch, ...]:
    m, k, n = candidate.axes
    k_ranges = list(zip(k.ranges(), k.padded_sizes(), strict=True))
    out = []
    for m_range, pm in zip(m.ranges(), m.padded_sizes(), strict=True):
        for n_range, pn in zip(n.ranges(), n.padded_sizes(), strict=True):
            for kk, (k_range, pk) in enumerate(k_ranges):
                shape = (pm, pk, pn)
                run, runs = costs.run_block(shape)
                bytes_in, bytes_out = costs.io_bytes(shape)
                index = len(out)
                out.append(
                    Batch(
                        index=index,
                        m_range=m_range,
                        k_range=k_range,
                        n_range=n_range,
                        block=run,
                        slot=index % slots,
                        bytes_in=bytes_in,
                        bytes_out=bytes_out,
                        n_runs=runs,
                        first=kk == 0,
                        final=kk == len(k_ranges) - 1,
                    )
                )
    return tuple(out)


def plan_batches(
    M: int,
    K: int,
    N: int,
    *,
    kernel: str | Path | KernelContract = "gemm_i8_i32",
    profile: str | os.PathLike[str] | DeviceProfile = "npu1",
    slots: int | None = None,
    memory_budget: int | None = None,
    out_dtype: Any = None,
    latency_budget_s: float | None = None,
    host_path: bool = True,
    corrections: CostCorrections | None = None,
) -> Plan:
    """Plan ``C[M x N] = A[M x K] @ B[K x N]``: block shape, slots, batch order, estimate.

    Args:
        M: rows of A and C (>= 1).
        K: columns of A, rows of B (>= 1, at most ``reference.MAX_EXACT_K``).
        N: columns of B and C (>= 1).
        kernel: contract name or path, or a :class:`KernelContract`.
        profile: profile name (``"npu1"``, ``"npu2"``, ``"cpu"``, ``"npu1 slowed x20"``),
            the path of a profile JSON file, or a :class:`DeviceProfile`
            (:func:`npu_pipeline.get_profile`).
        slots: BO slots to use (1..runs in flight); ``None`` picks the best.
        memory_budget: pinned bytes all slots together may use; ``None`` uses
            the profile's ``memory_budget_bytes``.
        out_dtype: ``np.int32`` (exact) or ``np.int8`` (requantised at the end);
            ``None`` means the contract's output (int32 for ``block_gemm``
            kernels, int8 for ``tile_pair`` ones).
        latency_budget_s: device seconds of this request's work that another
            request may find queued ahead of it; ``None`` for
            :data:`DEFAULT_LATENCY_BUDGET_S`, ``math.inf`` for no bound. The
            plan's batches are cut to fit it when that costs at most
            :data:`LATENCY_COST_TOLERANCE` of wall time.
        host_path: allow the plan to choose an exact product on the host when
            the cost model says the device path is slower and the product
            takes at most the latency budget and :data:`HOST_PATH_MAX_S`.
        corrections: measured/modelled factors per stage and run block
            (:meth:`npu_pipeline.learning.CostLearner.corrections`) that every
            stage time of the profile is multiplied by; ``None``: the profile as is.

    Returns:
        The plan with the lowest simulated wall time (ties: less memory),
        cut to fit the latency budget where that costs little.

    Raises:
        ShapeError: a dimension < 1 or not an integer, or K too large for int32.
        DTypeError: ``out_dtype`` is not int32 or int8, or is one the kernel
            cannot produce (int32 from a ``tile_pair`` kernel).
        ContractError: the kernel is unknown or has no build for the profile's generation.
        PlanError: unknown profile, bad slots or budget, or no plan meets the
            limits; the message names the limit and the smallest change that works.
        ProfileError: the profile file cannot be read or is not a valid profile.
    """
    shape = _check_shape(M, K, N)
    contract = kernel if isinstance(kernel, KernelContract) else load_contract(kernel)
    dtype = check_out_dtype(out_dtype, contract)
    prof = get_profile(profile)
    slot_counts = _slot_choices(slots, prof)
    budget = _check_budget(prof.memory_budget_bytes if memory_budget is None else memory_budget)
    costs = _Costs(contract, prof, requantise=dtype != np.int32, corrections=corrections)

    latency = check_latency_budget(latency_budget_s)
    candidates = _candidates(shape, contract, costs)
    best = _fastest(candidates, costs, slot_counts, budget)
    if best is None:
        raise _infeasible(candidates, costs, budget, slot_counts)
    # Cut to fit the latency budget when that costs little: every batch within
    # the budget's share, so other requests never queue behind much of this one.
    limit = latency / BATCHES_PER_BUDGET
    latency_cost = 0.0
    if best[2].device_s > limit:
        cut = _fastest([c for c in candidates if c.device_s <= limit], costs, slot_counts, budget)
        latency_cost = cut[0] / best[0] - 1 if cut is not None else math.inf
        if latency_cost <= LATENCY_COST_TOLERANCE:
            best = cut
    wall, memory, chosen, schedule = best
    batches = _batches(chosen, costs, schedule.slots)
    for run in {b.block for b in batches}:
        contract.check_block(run, prof.generation)  # by construction; a cheap guarantee
    n_runs = sum(b.n_runs for b in batches)
    serial = sum(schedule.busy_s.values())
    return Plan(
        shape=shape,
        kernel=contract.name,
        profile=prof.name,
        generation=prof.generation,
        out_dtype=dtype.name,
        block=costs.run_block(chosen.block)[0],
        slots=schedule.slots,
        slot_bytes=chosen.slot_bytes,
        memory_bytes=memory,
        memory_budget=budget,
        n_runs=n_runs,
        batches=batches,
        estimate=schedule.estimate(
            serial + n_runs * (prof.seed_call_host_s + prof.startup_seconds())
        ),
        schedule=schedule,
        latency_budget_s=latency,
        batch_device_s=chosen.device_s,
        fits_latency_budget=chosen.device_s <= limit,
        latency_cost=latency_cost,
        **_path(shape, contract, prof, dtype, wall, latency, host_path),
    )


def _fastest(
    candidates: list[_Candidate],
    costs: _Costs,
    slot_counts: list[int],
    budget: int,
) -> tuple[float, int, _Candidate, Schedule] | None:
    """(wall, memory, candidate, schedule) of the candidate and slot count with the
    lowest simulated wall time within ``budget`` bytes (ties: less memory), or None."""
    fitting = [c for c in candidates if c.slot_bytes * slot_counts[0] <= budget]
    fitting.sort(key=lambda c: (c.dispatch_bound, c.slot_bytes, c.block))
    # Branch and bound: dispatch_bound <= lower_bound <= any simulated wall, so
    # once a bound passes the best wall so far, that candidate cannot win.
    best: tuple[float, int, _Candidate, Schedule] | None = None
    for candidate in fitting:
        if best is not None and candidate.dispatch_bound > best[0] * (1 + _TIE):
            break  # sorted by this bound: no later candidate can win either
        if _problem(candidate, costs):
            continue
        if best is not None and candidate.lower_bound(costs) > best[0] * (1 + _TIE):
            continue
        durations = candidate.durations(costs)
        for count in slot_counts:
            memory = count * candidate.slot_bytes
            if memory > budget:
                break
            schedule = simulate(durations, count, costs.startup_s)
            wall = schedule.wall_s
            if (
                best is None
                or wall < best[0] * (1 - _TIE)
                or (wall <= best[0] * (1 + _TIE) and memory < best[1])
            ):
                best = (wall, memory, candidate, schedule)
    return best


def _path(
    shape: tuple[int, int, int],
    contract: KernelContract,
    profile: DeviceProfile,
    dtype: np.dtype,
    device_s: float,
    latency_budget_s: float,
    allowed: bool,
) -> dict[str, Any]:
    """The ``path``, ``host_s`` and ``path_reason`` fields of a plan: device or host."""
    if contract.semantic != "block_gemm":
        reason = "the kernel's clipped per-tile semantic is not the exact product"
        return {"path": "device", "host_s": None, "path_reason": reason}
    m, k, n = shape
    host_s = profile.host_seconds(m, k, n)
    if dtype != np.int32:
        host_s += profile.accumulate_seconds(m * n * _ACC_ITEMSIZE) - profile.batch_overhead_s
    host, device = _seconds(host_s), _seconds(device_s)
    if not allowed:
        reason = f"the host path is turned off (an exact host product would take {host})"
    elif host_s >= device_s:
        reason = f"the device path ({device}) beats an exact host product ({host})"
    elif host_s > host_path_cap_s(latency_budget_s):
        cap = _seconds(host_path_cap_s(latency_budget_s))
        reason = (
            f"an exact host product ({host}) would beat the device path ({device}), but it "
            f"would hold a host core for longer than {cap} in one piece"
        )
    else:
        reason = (
            f"an exact host product ({host}) beats the device path ({device}): "
            "dispatch, padding and hand-offs cost more than the work"
        )
        return {"path": "host", "host_s": host_s, "path_reason": reason}
    return {"path": "device", "host_s": host_s, "path_reason": reason}


def host_path_cap_s(latency_budget_s: float) -> float:
    """Longest exact product the host path takes on, seconds: :data:`HOST_PATH_MAX_S`,
    and never longer than the latency budget."""
    return min(latency_budget_s, HOST_PATH_MAX_S)


def check_latency_budget(value: Any) -> float:
    """``value`` as a latency budget in seconds (``None``: the default).

    Raises:
        PlanError: not a positive number.
    """
    if value is None:
        return DEFAULT_LATENCY_BUDGET_S
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        value = None
    if value is None or not value > 0:  # NaN fails this too
        raise PlanError(
            explain(
                f"latency_budget_s={value!r}",
                "a positive number of seconds (math.inf: no latency bound), or None for "
                f"the default {DEFAULT_LATENCY_BUDGET_S:g} s",
                "Pass e.g. latency_budget_s=0.004.",
            )
        )
    return float(value)
