"""Turn measured stage spans into corrections of the cost model.

A profile's rates are a model: the ``cpu`` profile's host rates are measured
once and cached (:mod:`npu_pipeline.calibration`), and a cache written while
the machine was busy, or before it became busy, predicts the wrong times. A
:class:`CostLearner` fixes that from what the pipeline measures anyway: for
every stage span (pack, execute, accumulate) of every batch it is given the
measured seconds and the seconds the uncorrected model predicts for that
batch, and it keeps a decayed estimate of ``measured / modelled``

- per (stage, run block), and
- per stage over all blocks, used for a block it has never seen.

Estimates are averaged in log space (a ratio of 2 and one of 0.5 cancel),
with weight :data:`DECAY_WEIGHT` for the newest observation. The first
observation of a key has no prior to decay from and is taken as is.

Work whose slot was freshly allocated is *cold*: its first touches of new
memory page-fault, and the first BLAS call of a process starts BLAS's
threads (about 11 ms here), one-off costs no later call pays; a first call
measured 20.5 ms of execute where later ones took 2.7 ms. So a cold span is
only an upper bound on a warm one: it counts only as evidence that the model
is pessimistic (its ratio is capped at 1), and only until the key's first
warm observation, which replaces it (taken as is); once a key has a warm
estimate, cold observations are ignored. A block seen only cold uses its
stage's warm factor once there is one.

:meth:`CostLearner.corrections` returns a frozen :class:`CostCorrections`,
which the planner multiplies into its stage times
(``plan_batches(corrections=...)``); the planner stays pure. The learner
also keeps the predicted and measured wall time of recent requests
(:meth:`CostLearner.record_request`), which the pipeline uses to re-plan a
shape whose prediction drifted out of :data:`DRIFT_BAND`.

``docs/cost-model.md`` ("Learning from measurements") explains how to read
:meth:`CostLearner.format`.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from npu_pipeline.errors import PlanError, explain
from npu_pipeline.timeline import STAGES

#: Weight of the newest observation in the decayed (log-space) mean of
#: measured/modelled. 0.3 averages over about (2 - w) / w = 6 observations:
#: enough to halve the scatter of single spans on a shared machine (2x
#: swings between consecutive spans are common here), while a change of
#: regime (the machine gets busy) is mostly learned within 3 observations.
DECAY_WEIGHT = 0.3

#: measured/predicted wall time of a request outside this band drops the
#: cached plan of its shape, so the next call plans with the corrections.
DRIFT_BAND = (0.8, 1.25)

#: Requests kept in :meth:`CostLearner.history`.
HISTORY_LENGTH = 16

#: Corrections are clipped to this range: a span of 0 s (clock resolution)
#: or one interrupted for seconds must not make a stage free or absurd.
_FACTOR_RANGE = (1e-3, 1e3)
_LOG_RANGE = (math.log(_FACTOR_RANGE[0]), math.log(_FACTOR_RANGE[1]))

Block = tuple[int, int, int]


@dataclass(frozen=True)
class CostCorrections:
    """A frozen snapshot of measured/modelled factors, for the planner.

    Attributes:
        by_block: ``(stage, run block) -> factor``.
        by_stage: ``stage -> factor`` over all blocks: the fallback for a
            block ``by_block`` does not hold. A stage in neither is not corrected.
    """

    by_block: Mapping[tuple[str, Block], float] = field(
        default_factory=lambda: MappingProxyType({})
    )
    by_stage: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # Copied into read-only views: a caller's dict changed later changes nothing here.
        object.__setattr__(self, "by_block", MappingProxyType(dict(self.by_block)))
        object.__setattr__(self, "by_stage", MappingProxyType(dict(self.by_stage)))

    def factor(self, stage: str, block: Block) -> float:
        """measured/modelled of ``stage`` on runs of ``block`` (1.0 if never observed)."""
        found = self.by_block.get((stage, block))
        return found if found is not None else self.by_stage.get(stage, 1.0)

    def lowest(self, stage: str) -> float:
        """The smallest factor :meth:`factor` can return for ``stage``, over every block.

        The planner scales its cheap lower bounds by this, so that a bound
        stays below every corrected time.
        """
        found = [f for (s, _), f in self.by_block.items() if s == stage]
        return min([*found, self.by_stage.get(stage, 1.0)])

    def apply(
        self, block: Block, seconds: tuple[float, float, float]
    ) -> tuple[float, float, float]:
        """``(pack, execute, accumulate)`` seconds of a batch of ``block`` runs, corrected."""
        pack, execute, accumulate = seconds
        return (
            pack * self.factor("pack", block),
            execute * self.factor("execute", block),
            accumulate * self.factor("accumulate", block),
        )


@dataclass(frozen=True)
class RequestRecord:
    """Predicted against measured wall time of one finished request. Seconds.

    Attributes:
        request: the request's id (``Span.request``).
        shape: (M, K, N).
        predicted_s: the plan's ``estimate.wall_s`` (MODELLED, corrected as planned).
        measured_s: first pack start to last accumulate end.
        shared: other requests were queued with it, so its wall time was
            partly theirs: recorded, never a reason to re-plan.
        replanned: the ratio left :data:`DRIFT_BAND` (and the request was not
            shared), so the plan of the shape was dropped and the next call plans again.
    """

    request: int
    shape: Block
    predicted_s: float
    measured_s: float
    shared: bool
    replanned: bool

    @property
    def ratio(self) -> float:
        """measured / predicted (inf if nothing was predicted)."""
        return self.measured_s / self.predicted_s if self.predicted_s > 0 else math.inf


class _Mean:
    """A decayed log-space mean and how many observations made it (lock held by the caller)."""

    __slots__ = ("cold", "count", "log")

    def __init__(self, log: float, cold: bool) -> None:
        self.log, self.count, self.cold = log, 1, cold

    def add(self, log: float, cold: bool, weight: float) -> None:
        """Decay toward ``log`` (a cold one already capped at 0 by the caller)."""
        if cold and not self.cold:
            return  # a warm estimate exists: one-off costs say nothing about later calls
        if self.cold and not cold:
            self.log, self.count, self.cold = log, 1, False  # the first warm one, as is
            return
        self.log += weight * (log - self.log)
        self.count += 1


class CostLearner:
    """Thread-safe learner of measured/modelled stage times (see the module docstring).

    Args:
        weight: weight of the newest observation, in (0, 1]; default :data:`DECAY_WEIGHT`.
        profile: name of the profile whose model is corrected (shown by :meth:`format`).
    """

    def __init__(self, weight: float = DECAY_WEIGHT, profile: str = "") -> None:
        if not 0 < weight <= 1:
            raise PlanError(
                explain(f"decay weight {weight!r}", "a number in (0, 1]", "Pass e.g. 0.3.")
            )
        self.weight = weight
        self.profile = profile
        self._lock = threading.Lock()
        self._by_block: dict[tuple[str, Block], _Mean] = {}
        self._by_stage: dict[str, _Mean] = {}
        self._history: deque[RequestRecord] = deque(maxlen=HISTORY_LENGTH)
        self._snapshot: CostCorrections | None = CostCorrections()

    def observe(
        self, stage: str, block: Block, measured_s: float, modelled_s: float, *, cold: bool = False
    ) -> None:
        """Learn from one span: ``stage`` of runs of ``block`` took ``measured_s``
        where the uncorrected model said ``modelled_s``. Seconds; a few microseconds.

        ``cold``: the work used freshly allocated memory (see the module docstring).
        A non-positive ``modelled_s`` carries no ratio and is ignored.
        """
        if modelled_s <= 0:
            return
        ratio = max(measured_s, 0.0) / modelled_s
        log = math.log(ratio) if ratio > 0 else _LOG_RANGE[0]
        # A cold span bounds the warm cost from above: it can only say "faster".
        log = min(max(log, _LOG_RANGE[0]), 0.0 if cold else _LOG_RANGE[1])
        key = (stage, block)
        with self._lock:
            for table, name in ((self._by_block, key), (self._by_stage, stage)):
                mean = table.get(name)
                if mean is None:
                    table[name] = _Mean(log, cold)
                else:
                    mean.add(log, cold, self.weight)
            self._snapshot = None

    def corrections(self) -> CostCorrections:
        """The current factors, frozen (later observations do not change it)."""
        with self._lock:
            if self._snapshot is None:
                stages = self._by_stage
                # A block seen only cold is left to its stage's warm factor, if
                # there is one: else one cold first call would keep the planner
                # away from that block for good (it never runs there again).
                self._snapshot = CostCorrections(
                    {
                        key: math.exp(m.log)
                        for key, m in self._by_block.items()
                        if not m.cold or stages[key[0]].cold
                    },
                    {stage: math.exp(m.log) for stage, m in stages.items()},
                )
            return self._snapshot

    def observations(self, stage: str, block: Block | None = None) -> int:
        """Observations behind the factor of ``stage`` on ``block`` (``None``: all blocks)."""
        with self._lock:
            if block is None:
                mean = self._by_stage.get(stage)
            else:
                mean = self._by_block.get((stage, block))
            return 0 if mean is None else mean.count

    def record_request(
        self,
        request: int,
        shape: Block,
        predicted_s: float,
        measured_s: float,
        *,
        shared: bool = False,
    ) -> RequestRecord:
        """Keep one finished request's predicted and measured wall time (seconds);
        the record says whether it drifted out of :data:`DRIFT_BAND` (see
        :class:`RequestRecord` for ``shared``)."""
        low, high = DRIFT_BAND
        ratio = measured_s / predicted_s if predicted_s > 0 else math.inf
        drifted = not shared and not low <= ratio <= high
        record = RequestRecord(request, shape, predicted_s, measured_s, shared, drifted)
        with self._lock:
            self._history.append(record)
        return record

    def history(self) -> tuple[RequestRecord, ...]:
        """The last :data:`HISTORY_LENGTH` requests, oldest first."""
        with self._lock:
            return tuple(self._history)

    def format(self) -> str:
        """The factors per stage and block, and the recent requests' prediction error."""
        snapshot = self.corrections()
        with self._lock:
            blocks = {key: (math.exp(m.log), m.count, m.cold) for key, m in self._by_block.items()}
            stage_counts = {stage: m.count for stage, m in self._by_stage.items()}
            history = tuple(self._history)
        lines = [
            f"cost model corrections of profile {self.profile or '?'}: measured / modelled "
            f"stage seconds (decayed, newest weighs {self.weight:g})",
            f"  {'stage':<12}{'block':<18}{'factor':>8}{'observations':>14}",
        ]
        for stage in STAGES:
            for (s, block), (factor, count, cold) in sorted(blocks.items()):
                if s != stage:
                    continue
                mark = ""
                if cold:
                    used = (s, block) in snapshot.by_block
                    mark = " (cold only)" if used else " (cold only: not used)"
                lines.append(
                    f"  {stage:<12}{'x'.join(map(str, block)):<18}{factor:>8.2f}{count:>14}{mark}"
                )
            if stage in snapshot.by_stage:
                lines.append(
                    f"  {stage:<12}{'(other blocks)':<18}{snapshot.by_stage[stage]:>8.2f}"
                    f"{stage_counts[stage]:>14}"
                )
        if not snapshot.by_stage:
            lines.append("  (nothing measured yet: the profile's model is used as is)")
        lines += [
            "",
            f"recent requests: predicted (MODELLED) vs measured wall, re-planned outside "
            f"{DRIFT_BAND[0]:g}..{DRIFT_BAND[1]:g}",
            f"  {'request':>7}  {'shape':<18}{'predicted':>12}{'measured':>12}"
            f"{'measured/predicted':>20}",
        ]
        for r in history:
            lines.append(
                f"  {r.request:>7}  {'x'.join(map(str, r.shape)):<18}"
                f"{_ms(r.predicted_s):>12}{_ms(r.measured_s):>12}{r.ratio:>20.2f}"
                + ("  re-planned" if r.replanned else "  shared" if r.shared else "")
            )
        if not history:
            lines.append("  (no request finished yet)")
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"
