"""Spans per stage and batch, overlap metrics, Chrome-trace export, Gantt chart.

The pipeline records one :class:`Span` each time a stage works on a batch:
``pack`` (host fills a slot), ``execute`` (the NPU runs it), ``accumulate``
(host reads the slot and adds the partial product into C). A
:class:`Timeline` collects them from worker threads and the event loop alike,
and turns them into the overlap metrics of ``docs/timeline.md#the-numbers``:

- busy time per stage, ``P``, ``X``, ``Q`` (:meth:`Timeline.busy_s`): the
  length of the *union* of that stage's spans. Several worker threads may
  pack at once; their overlapping spans count once, so a stage is "busy"
  while at least one of its spans is running.
- wall time ``T_wall`` (:meth:`Timeline.wall_s`): last end - first start.
- active time ``T_active`` (:meth:`Timeline.active_s`): the union of *all*
  spans, the time during which at least one stage was working; idle time
  ``T_wall - T_active`` (:meth:`Timeline.idle_s`) is time no stage worked:
  a pause between calls, or hand-offs between stages.
- serial time ``T_ser = P + X + Q``: what the work would take with no overlap.
- bottleneck ``T_max = max(P, X, Q)``: what it would take with perfect overlap.
- overlap efficiency ``eta = (T_ser - T_active) / (T_ser - T_max)``
  (:func:`overlap_efficiency`): the fraction of the hideable time
  ``T_ser - T_max`` that was actually hidden under other stages. 1 = the two
  lighter stages ran entirely under the bottleneck; 0 = nothing overlapped.
  It is measured over the active time, not the wall time, so idle time
  neither counts as missing overlap nor hides any: it is reported on its own.
  Always ``T_max <= T_active <= T_ser``, so a measured eta is in [0, 1].
  eta is *undefined* (``None``, printed "n/a" with the reason from
  :func:`overlap_na_reason`) when nothing could overlap: one batch (its three
  stages run one after another by nature), or ``T_ser == T_max`` (at most one
  stage did any work).
- utilisation of each stage, ``busy / T_wall`` (:meth:`Timeline.utilisation`).

The same :func:`overlap_efficiency` is used by the planner for its predicted
schedule (which has no idle time: its active time is its wall time), so
predicted and measured figures mean the same thing; compare them with
:meth:`Timeline.compare_with_prediction`.

A timeline keeps at most ``max_spans`` spans (:data:`DEFAULT_MAX_SPANS`),
dropping the oldest first, and counts what it recorded and dropped; its
report says when it covers only the kept spans. For the figures of one call,
open a :meth:`Timeline.window` around it, or take :meth:`Timeline.last_request`.

All times are seconds on the clock the timeline was made with
(:func:`time.perf_counter` by default).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from npu_pipeline.errors import TimelineError, explain

#: The three pipeline stages, in pipeline order.
STAGES: tuple[str, ...] = ("pack", "execute", "accumulate")

#: A request computed whole on the host (the planner's host path): shown in
#: traces, never part of the three stages' overlap figures.
HOST_STAGE = "host"

#: Every span kind, in the order traces show them.
_KINDS = (*STAGES, HOST_STAGE)

#: Spans a :class:`Timeline` keeps by default; older ones are dropped and counted.
#: At three spans per batch that is the last 3,333 one-batch requests.
DEFAULT_MAX_SPANS = 10_000

#: Why eta is undefined: nothing was recorded or predicted.
NA_NO_WORK = "no stage did any work"
#: Why eta is undefined: a batch's pack, execute and accumulate run in turn.
NA_ONE_BATCH = "one batch: its stages run one after another"
#: Why eta is undefined: ``T_ser == T_max``, there was nothing to hide.
NA_ONE_STAGE = "only one stage did any work"


def _check_stage(stage: str) -> None:
    if stage not in _KINDS:
        raise TimelineError(
            explain(
                f"span stage {stage!r} is unknown",
                f"one of {', '.join(_KINDS)}",
                "Record one span per stage; name it exactly as the pipeline does.",
            )
        )


@dataclass(frozen=True)
class Span:
    """One stage working on one batch, from ``start`` to ``end``.

    Attributes:
        request: id of the ``matmul()`` request the batch belongs to.
        batch: index of the batch within its request (its plan).
        stage: ``"pack"``, ``"execute"`` or ``"accumulate"``.
        slot: index of the BO slot the batch occupies.
        start: start time, seconds (``time.perf_counter()`` by default).
        end: end time, seconds; ``end >= start``.
    """

    request: int
    batch: int
    stage: str
    slot: int
    start: float
    end: float

    def __post_init__(self) -> None:
        _check_stage(self.stage)
        if not (math.isfinite(self.start) and math.isfinite(self.end)) or self.end < self.start:
            raise TimelineError(
                explain(
                    f"span times start={self.start}, end={self.end} are not an interval",
                    "finite times with end >= start",
                    "Take both times from the same monotonic clock (time.perf_counter).",
                )
            )

    @property
    def duration(self) -> float:
        """``end - start``, seconds."""
        return self.end - self.start


def _check_busy(busy: Mapping[str, float]) -> dict[str, float]:
    """Return ``busy`` with every stage present (missing ones 0.0), or raise TimelineError."""
    unknown = sorted(set(busy) - set(STAGES))
    if unknown:
        raise TimelineError(
            explain(
                f"busy times name unknown stage(s) {unknown}",
                f"keys among {', '.join(STAGES)}",
                "Fold other costs into the stage that pays them.",
            )
        )
    out = {stage: float(busy.get(stage, 0.0)) for stage in STAGES}
    bad = {
        stage: value for stage, value in out.items() if not (value >= 0 and math.isfinite(value))
    }
    if bad:
        raise TimelineError(
            explain(f"busy times {bad} are invalid", "finite seconds >= 0", "Check the timing.")
        )
    return out


def _check_wall(wall_s: float) -> float:
    wall_s = float(wall_s)
    if not (wall_s >= 0 and math.isfinite(wall_s)):
        raise TimelineError(
            explain(f"wall time {wall_s} is invalid", "finite seconds >= 0", "Check the timing.")
        )
    return wall_s


def _check_batches(batches: int | None) -> int | None:
    if batches is None:
        return None
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
        raise TimelineError(
            explain(
                f"batch count {batches!r} is invalid",
                "None (unknown) or an int >= 0",
                "Pass the number of batches the run had (len(plan.batches)).",
            )
        )
    return batches


def overlap_na_reason(busy: Mapping[str, float], batches: int | None = None) -> str | None:
    """Why the overlap efficiency of these figures is undefined, or ``None`` if it is defined.

    Args:
        busy: busy seconds per stage (keys among :data:`STAGES`; a missing
            stage counts as 0 s).
        batches: how many batches the run had, or ``None`` when unknown (then
            only the busy times are judged).

    Returns:
        :data:`NA_NO_WORK` when no stage worked, :data:`NA_ONE_BATCH` for a
        single batch (its stages are sequential by nature, so nothing could
        overlap), :data:`NA_ONE_STAGE` when ``T_ser == T_max`` (at most one
        stage worked: nothing to hide); else ``None``.

    Raises:
        TimelineError: an unknown stage name, a negative or non-finite time,
            or a negative batch count.
    """
    times = _check_busy(busy)
    batches = _check_batches(batches)
    t_ser = sum(times.values())
    if t_ser == 0 or batches == 0:
        return NA_NO_WORK
    if batches == 1:
        return NA_ONE_BATCH
    if t_ser <= max(times.values()):
        return NA_ONE_STAGE
    return None


def overlap_efficiency(
    busy: Mapping[str, float], wall_s: float, batches: int | None = None
) -> float | None:
    """Overlap efficiency ``eta = (T_ser - T_active) / (T_ser - T_max)`` in [0, 1], or ``None``.

    Args:
        busy: busy seconds per stage (keys among :data:`STAGES`; a missing
            stage counts as 0 s).
        wall_s: ``T_active``, seconds during which at least one stage worked
            (:meth:`Timeline.active_s`). For a schedule without idle time,
            such as the planner's, that is its wall time.
        batches: how many batches the run had, or ``None`` when unknown.

    ``T_ser`` is the sum of the busy times and ``T_max`` the largest. Figures
    of one consistent run always have ``T_max <= T_active <= T_ser``; other
    figures (a wall time that includes idle time, or one shorter than the
    bottleneck) are clipped to [0, 1].

    Returns:
        eta, or ``None`` when it is undefined because nothing could overlap;
        :func:`overlap_na_reason` says why (one batch, at most one busy stage,
        or no work at all). Never a made-up 0 or 1 for those cases.

    Raises:
        TimelineError: an unknown stage name, a negative or non-finite time,
            or a negative batch count.
    """
    times = _check_busy(busy)
    wall_s = _check_wall(wall_s)
    if overlap_na_reason(times, batches) is not None:
        return None
    t_ser = sum(times.values())
    t_max = max(times.values())
    return min(1.0, max(0.0, (t_ser - wall_s) / (t_ser - t_max)))


def format_overlap(eta: float | None, reason: str | None, digits: int = 3) -> str:
    """eta as people read it: ``"0.583"``, or ``"n/a (<reason>)"`` when it is undefined.

    Args:
        eta: an overlap efficiency, or ``None``.
        reason: why it is undefined (:func:`overlap_na_reason`), used when ``eta`` is None.
        digits: decimals printed.
    """
    if eta is None:
        return f"n/a ({reason})"
    return f"{eta:.{digits}f}"


def _union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by ``intervals`` (overlaps counted once), seconds."""
    total = 0.0
    covered_to = -math.inf
    # In start order, everything up to covered_to is already counted: add only the rest.
    for start, end in sorted(intervals):
        if end > covered_to:
            total += end - max(start, covered_to)
            covered_to = end
    return total


def _time_unit(seconds: float) -> tuple[float, str]:
    """A multiplier and unit name that print ``seconds`` as a readable number."""
    if seconds >= 1.0:
        return 1.0, "s"
    if seconds >= 1e-3:
        return 1e3, "ms"
    return 1e6, "µs"


@dataclass(frozen=True)
class TimelineSummary:
    """The overlap metrics of a timeline at one moment, from its kept spans.

    Attributes:
        scope: what the spans are, for the report's first line (``"all spans
            recorded"``, ``"window"``, ``"request 7"``).
        spans: number of spans kept (and summarised).
        requests: number of distinct requests among them.
        batches: number of distinct (request, batch) pairs among them.
        wall_s: ``T_wall``, last end - first start, seconds (0 when empty).
        active_s: ``T_active``, seconds during which at least one stage worked.
        idle_s: ``T_wall - T_active``, seconds no stage worked (pauses
            between calls, hand-offs between stages).
        serial_s: ``T_ser``, sum of the stage busy times, seconds.
        bottleneck_s: ``T_max``, the largest stage busy time, seconds.
        bottleneck_stage: the stage with the largest busy time (first in
            pipeline order on a tie).
        busy_s: busy seconds per stage, every stage present.
        utilisation: ``busy / T_wall`` per stage (0 when ``T_wall`` is 0).
        overlap_efficiency: eta in [0, 1], or ``None`` when nothing could
            overlap; see :func:`overlap_efficiency`.
        overlap_na_reason: why eta is ``None`` (:func:`overlap_na_reason`), else ``None``.
        spans_recorded: spans recorded in all, kept or not.
        spans_dropped: spans dropped, oldest first, to stay within the cap;
            when above 0 every other figure covers only the kept spans.
        host_requests: requests among them computed whole on the host (the
            planner's host path); not part of the stage figures above.
        host_s: seconds some host-path product was running.
    """

    scope: str
    spans: int
    requests: int
    batches: int
    wall_s: float
    active_s: float
    idle_s: float
    serial_s: float
    bottleneck_s: float
    bottleneck_stage: str
    busy_s: Mapping[str, float]
    utilisation: Mapping[str, float]
    overlap_efficiency: float | None
    overlap_na_reason: str | None
    spans_recorded: int
    spans_dropped: int
    host_requests: int = 0
    host_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-able values (for ``bench --json`` and traces).

        ``overlap_efficiency`` is ``None`` (JSON null) when undefined; ``eta``
        is the figure as the report prints it (``"n/a (<reason>)"`` then).
        """
        return {
            "scope": self.scope,
            "spans": self.spans,
            "requests": self.requests,
            "batches": self.batches,
            "wall_s": self.wall_s,
            "active_s": self.active_s,
            "idle_s": self.idle_s,
            "serial_s": self.serial_s,
            "bottleneck_s": self.bottleneck_s,
            "bottleneck_stage": self.bottleneck_stage,
            "busy_s": dict(self.busy_s),
            "utilisation": dict(self.utilisation),
            "overlap_efficiency": self.overlap_efficiency,
            "overlap_na_reason": self.overlap_na_reason,
            "eta": format_overlap(self.overlap_efficiency, self.overlap_na_reason),
            "spans_recorded": self.spans_recorded,
            "spans_dropped": self.spans_dropped,
            "host_requests": self.host_requests,
            "host_s": self.host_s,
        }

    def format(self) -> str:
        """The overlap report: what it covers, one line per stage, then wall, idle, serial, eta."""
        if self.spans == 0:
            if self.host_requests:
                return (
                    f"overlap report, {self.scope}: no pipeline stage ran; "
                    f"{self.host_requests} request(s) computed exactly on the host in "
                    f"{self.host_s * 1e6:.1f} us (the planner's host path)"
                )
            return f"overlap report, {self.scope}: no spans recorded"
        scale, unit = _time_unit(max(self.wall_s, self.serial_s))
        lines = [
            f"overlap report, {self.scope}: {self.batches} batches in {self.requests} "
            f"request(s), {self.spans} spans"
        ]
        if self.spans_dropped:
            lines.append(
                f"  covers only the newest {self.spans} of {self.spans_recorded} spans recorded "
                f"(the oldest {self.spans_dropped} were dropped at the cap)"
            )
        lines.append(f"  {'stage':<12}{'busy (' + unit + ')':>12}{'utilisation':>14}")
        for stage in STAGES:
            mark = "  <- bottleneck" if stage == self.bottleneck_stage else ""
            lines.append(
                f"  {stage:<12}{self.busy_s[stage] * scale:>12.3f}"
                f"{self.utilisation[stage]:>13.1%}{mark}"
            )
        eta = format_overlap(self.overlap_efficiency, self.overlap_na_reason)
        if self.overlap_efficiency is not None:
            eta += "   (1 = lighter stages fully hidden, 0 = no overlap)"
        lines += [
            f"  {'wall':<12}{self.wall_s * scale:>12.3f}   (first start to last end)",
            f"  {'active':<12}{self.active_s * scale:>12.3f}   (some stage working)",
            f"  {'idle':<12}{self.idle_s * scale:>12.3f}   (no stage working)",
            f"  {'serial':<12}{self.serial_s * scale:>12.3f}   (sum of the busy times)",
            f"  overlap efficiency eta = {eta}",
        ]
        if self.host_requests:
            lines.append(
                f"  host path   {self.host_s * scale:>10.3f}   ({self.host_requests} request(s) "
                "computed exactly on the host, outside the stage figures)"
            )
        return "\n".join(lines)


def _ratio(measured: float, predicted: float) -> float:
    """``measured / predicted``; 1.0 when both are 0, ``inf`` when only the prediction is."""
    if predicted > 0:
        return measured / predicted
    return 1.0 if measured == 0 else math.inf


@dataclass(frozen=True)
class Comparison:
    """A measured timeline set beside a prediction (for example the planner's estimate).

    Ratios are measured / predicted: above 1 the run was slower than
    predicted. A ratio is 1.0 when both figures are 0 and ``inf`` when only the
    prediction is 0.

    Attributes:
        predicted_wall_s, measured_wall_s: wall time, seconds (measured: first
            start to last end, idle time included: what a caller waited).
        predicted_busy_s, measured_busy_s: busy seconds per stage.
        predicted_efficiency, measured_efficiency: eta of each, both computed
            by :func:`overlap_efficiency` (measured over the active time), or
            ``None`` when undefined.
        predicted_na_reason, measured_na_reason: why that eta is ``None``, else ``None``.
    """

    predicted_wall_s: float
    measured_wall_s: float
    predicted_busy_s: Mapping[str, float]
    measured_busy_s: Mapping[str, float]
    predicted_efficiency: float | None
    measured_efficiency: float | None
    predicted_na_reason: str | None
    measured_na_reason: str | None

    @property
    def wall_ratio(self) -> float:
        """Measured / predicted wall time."""
        return _ratio(self.measured_wall_s, self.predicted_wall_s)

    @property
    def busy_ratio(self) -> dict[str, float]:
        """Measured / predicted busy time, per stage."""
        return {s: _ratio(self.measured_busy_s[s], self.predicted_busy_s[s]) for s in STAGES}

    def format(self) -> str:
        """A table: predicted, measured and ratio for each stage and the wall time, then eta."""
        scale, unit = _time_unit(max(self.predicted_wall_s, self.measured_wall_s))
        rows = [
            (stage, self.predicted_busy_s[stage], self.measured_busy_s[stage], ratio)
            for stage, ratio in self.busy_ratio.items()
        ]
        rows.append(("wall", self.predicted_wall_s, self.measured_wall_s, self.wall_ratio))
        lines = [
            "predicted vs measured",
            f"  {'':<12}{'predicted (' + unit + ')':>18}{'measured (' + unit + ')':>18}"
            f"{'measured/predicted':>20}",
        ]
        lines += [
            f"  {name:<12}{pred * scale:>18.3f}{meas * scale:>18.3f}{ratio:>20.2f}"
            for name, pred, meas, ratio in rows
        ]
        predicted = format_overlap(self.predicted_efficiency, self.predicted_na_reason)
        measured = format_overlap(self.measured_efficiency, self.measured_na_reason)
        if self.predicted_efficiency is None or self.measured_efficiency is None:
            # A reason does not fit a column: one line each.
            lines += [f"  {'eta':<12}predicted {predicted}", f"  {'':<12}measured  {measured}"]
        else:
            lines.append(f"  {'eta':<12}{predicted:>18}{measured:>18}")
        return "\n".join(lines)


class Timeline:
    """A thread-safe, bounded recorder of :class:`Span` s, and the metrics computed from them.

    ``record`` and ``span`` may be called from any thread and from the event
    loop at the same time; a lock guards the spans, and every query works on a
    snapshot taken under that lock, so reading never blocks recording for long.

    At most ``max_spans`` spans are kept: beyond that the oldest is dropped
    for each new one, and :attr:`spans_recorded` and :attr:`spans_dropped`
    count what happened, so memory stays bounded however long a pipeline
    serves. A :meth:`window` keeps its own spans, so it stays complete while
    this timeline drops old ones.

    Args:
        spans: spans to start with (for example a predicted schedule, to
            :meth:`compare` against); they count as recorded.
        clock: the time source :meth:`span` reads, seconds. Keep the default
            :func:`time.perf_counter` unless every span comes from the same
            other clock (tests pass a fake one).
        max_spans: spans kept, >= 1, or ``None`` to keep every span.
        scope: what the spans are, printed on the report's first line.

    Raises:
        TimelineError: ``max_spans`` is not ``None`` or an int >= 1.
    """

    def __init__(
        self,
        spans: Iterable[Span] = (),
        *,
        clock: Callable[[], float] = time.perf_counter,
        max_spans: int | None = DEFAULT_MAX_SPANS,
        scope: str = "all spans recorded",
    ) -> None:
        if max_spans is not None and (
            isinstance(max_spans, bool) or not isinstance(max_spans, int) or max_spans < 1
        ):
            raise TimelineError(
                explain(
                    f"max_spans={max_spans!r}",
                    "None (keep every span) or an int >= 1",
                    f"Keep the default {DEFAULT_MAX_SPANS} unless memory is tight.",
                )
            )
        self._lock = threading.Lock()
        self._spans: deque[Span] = deque(maxlen=max_spans)
        self._recorded = 0
        self._dropped = 0
        self._windows: list[Timeline] = []
        self._clock = clock
        self._scope = scope
        for span in spans:
            self.record(span)

    @property
    def max_spans(self) -> int | None:
        """Spans kept at most (``None``: no cap)."""
        return self._spans.maxlen

    @property
    def spans_recorded(self) -> int:
        """Spans recorded since the timeline was made or cleared, kept or not."""
        with self._lock:
            return self._recorded

    @property
    def spans_dropped(self) -> int:
        """Oldest spans dropped to stay within :attr:`max_spans`, since made or cleared."""
        with self._lock:
            return self._dropped

    def record(self, span: Span) -> None:
        """Add one finished span (here and to every open :meth:`window`)."""
        with self._lock:
            if len(self._spans) == self._spans.maxlen:
                self._dropped += 1  # the deque drops the oldest on append
            self._spans.append(span)
            self._recorded += 1
            # Under the lock, so that a window that has closed gets nothing more.
            for window in self._windows:
                window.record(span)

    @contextlib.contextmanager
    def span(self, request: int, batch: int, stage: str, slot: int) -> Iterator[None]:
        """Time the ``with`` block as one span of ``stage`` on ``batch``.

        The span is recorded even when the block raises or is cancelled: the
        stage was busy until then, and a failed batch should show in the trace.
        """
        _check_stage(stage)  # fail before the work, not after it
        start = self._clock()
        try:
            yield
        finally:
            self.record(Span(request, batch, stage, slot, start, self._clock()))

    @contextlib.contextmanager
    def window(self) -> Iterator[Timeline]:
        """Collect, in a new timeline, every span recorded here while the ``with`` block runs.

        ``with pipe.timeline.window() as w: C = await pipe.matmul(A, B)``,
        then ``print(w.report())`` reports that call alone. A span belongs to
        the window when it is *recorded* (ends) while the window is open; the
        window also collects other requests' spans recorded meanwhile
        (concurrent callers): use :meth:`for_request` on it to single one out.
        The window has this timeline's cap and clock, and costs one append per
        span while open. Windows may nest and overlap.
        """
        window = Timeline(clock=self._clock, max_spans=self.max_spans, scope="window")
        with self._lock:
            self._windows.append(window)
        try:
            yield window
        finally:
            with self._lock:
                self._windows.remove(window)

    @property
    def spans(self) -> tuple[Span, ...]:
        """A copy of the kept spans (the newest :attr:`max_spans`), in recording order."""
        with self._lock:
            return tuple(self._spans)

    def clear(self) -> None:
        """Forget every span and reset the counters (open windows keep theirs)."""
        with self._lock:
            self._spans.clear()
            self._recorded = 0
            self._dropped = 0

    def for_request(self, request_id: int) -> Timeline:
        """A new timeline holding a snapshot of one request's kept spans (empty if none)."""
        return Timeline(
            (s for s in self.spans if s.request == request_id),
            clock=self._clock,
            max_spans=None,
            scope=f"request {request_id}",
        )

    def last_request(self) -> Timeline:
        """:meth:`for_request` of the highest request id kept (empty when there are no spans).

        The pipeline numbers requests in call order, so this is the latest
        call; while it is still running, its spans so far.
        """
        spans = self.spans
        if not spans:
            return Timeline(clock=self._clock, scope="last request (none recorded)")
        return self.for_request(max(s.request for s in spans))

    def busy_s(self) -> dict[str, float]:
        """Busy seconds per stage: the union of that stage's spans (every stage present)."""
        return self._busy(self.spans)

    def wall_s(self) -> float:
        """Seconds from the first span's start to the last span's end (0 when empty)."""
        return self._wall(self.spans)

    def active_s(self) -> float:
        """Seconds during which at least one stage was working: the union of all spans."""
        return _union_length((s.start, s.end) for s in self.spans)

    def idle_s(self) -> float:
        """Seconds between the first start and the last end during which no stage worked."""
        return self.summary().idle_s

    def overlap_efficiency(self) -> float | None:
        """eta of the kept spans, over their active time, or ``None`` when nothing could overlap.

        See :func:`overlap_efficiency`; ``summary().overlap_na_reason`` says why it is ``None``.
        """
        return self.summary().overlap_efficiency

    def utilisation(self) -> dict[str, float]:
        """``busy / T_wall`` per stage, each in [0, 1] (all 0 when ``T_wall`` is 0)."""
        spans = self.spans
        return self._utilisation(self._busy(spans), self._wall(spans))

    def summary(self) -> TimelineSummary:
        """Every metric at once, from one consistent snapshot."""
        return self._summarise(*self._snapshot())

    def _snapshot(self) -> tuple[tuple[Span, ...], int, int]:
        """The kept spans with the recorded and dropped counts, taken together."""
        with self._lock:
            return tuple(self._spans), self._recorded, self._dropped

    def _summarise(self, spans: tuple[Span, ...], recorded: int, dropped: int) -> TimelineSummary:
        host = [s for s in spans if s.stage == HOST_STAGE]
        if host:
            spans = tuple(s for s in spans if s.stage != HOST_STAGE)
        busy = self._busy(spans)
        wall = self._wall(spans)
        active = _union_length((s.start, s.end) for s in spans)
        batches = len({(s.request, s.batch) for s in spans})
        bottleneck = max(STAGES, key=lambda stage: busy[stage])  # first stage wins a tie
        return TimelineSummary(
            scope=self._scope,
            spans=len(spans),
            requests=len({s.request for s in spans}),
            batches=batches,
            wall_s=wall,
            active_s=active,
            # max: the union of floats can come out a rounding error above the wall time.
            idle_s=max(0.0, wall - active),
            serial_s=sum(busy.values()),
            bottleneck_s=busy[bottleneck],
            bottleneck_stage=bottleneck,
            busy_s=MappingProxyType(busy),
            utilisation=MappingProxyType(self._utilisation(busy, wall)),
            overlap_efficiency=overlap_efficiency(busy, active, batches),
            overlap_na_reason=overlap_na_reason(busy, batches),
            spans_recorded=recorded,
            spans_dropped=dropped,
            host_requests=len({s.request for s in host}),
            host_s=_union_length((s.start, s.end) for s in host),
        )

    def report(self) -> str:
        """The overlap report as readable text (what ``npu-pipeline`` prints).

        It covers every kept span, and its first lines say so: how many
        requests and batches, over how long, with how much idle time, and
        whether the cap dropped older spans. For one call, report a
        :meth:`window` or :meth:`last_request` instead.
        """
        return self.summary().format()

    def compare_with_prediction(
        self,
        predicted_wall_s: float,
        predicted_busy: Mapping[str, float],
        predicted_batches: int | None = None,
    ) -> Comparison:
        """Set the recorded run beside a prediction of wall and per-stage busy seconds.

        With the planner: ``timeline.compare_with_prediction(plan.estimate.wall_s,
        plan.estimate.busy_s, len(plan.batches))``. Without ``predicted_batches``
        the predicted eta is judged by the busy times alone (a one-batch
        prediction then gets a number instead of n/a).

        Raises:
            TimelineError: an unknown stage name, a negative or non-finite time,
                or a negative batch count.
        """
        predicted_busy = _check_busy(predicted_busy)
        predicted_wall_s = _check_wall(predicted_wall_s)
        summary = self.summary()
        return Comparison(
            predicted_wall_s=predicted_wall_s,
            measured_wall_s=summary.wall_s,
            predicted_busy_s=MappingProxyType(predicted_busy),
            measured_busy_s=summary.busy_s,
            predicted_efficiency=overlap_efficiency(
                predicted_busy, predicted_wall_s, predicted_batches
            ),
            measured_efficiency=summary.overlap_efficiency,
            predicted_na_reason=overlap_na_reason(predicted_busy, predicted_batches),
            measured_na_reason=summary.overlap_na_reason,
        )

    def compare(self, predicted: Timeline) -> Comparison:
        """Set the recorded run beside a predicted schedule given as spans."""
        expected = predicted.summary()
        return self.compare_with_prediction(expected.wall_s, expected.busy_s, expected.batches)

    def to_chrome_trace(self, path: str | os.PathLike[str]) -> Path:
        """Write the spans as Chrome trace-event JSON; open it in https://ui.perfetto.dev.

        Each span is a complete event (``"ph": "X"``) with ``ts`` and ``dur`` in
        microseconds from the first span's start. Every (stage, slot) pair gets
        its own track, in pipeline order: a slot holds one batch at a time, so
        the spans on one track never overlap (trace viewers need that), and
        parallel packing threads show as parallel tracks. Request, batch and
        slot are in each event's ``args``; the event name is ``r<request>
        b<batch>``. The summary is stored under ``otherData``.

        Returns:
            The path written.
        """
        spans, recorded, dropped = self._snapshot()
        origin = min((s.start for s in spans), default=0.0)
        lanes = sorted({(s.stage, s.slot) for s in spans}, key=lambda k: (_KINDS.index(k[0]), k[1]))
        tids = {lane: n for n, lane in enumerate(lanes, start=1)}
        pid = 1
        events: list[dict[str, Any]] = [
            {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": "npu_pipeline"}}
        ]
        for (stage, slot), tid in tids.items():
            events += [
                {
                    "ph": "M",
                    "pid": pid,
                    "tid": tid,
                    "name": "thread_name",
                    "args": {"name": f"{stage} (slot {slot})"},
                },
                {
                    "ph": "M",
                    "pid": pid,
                    "tid": tid,
                    "name": "thread_sort_index",
                    "args": {"sort_index": tid},
                },
            ]
        events += [
            {
                "ph": "X",
                "pid": pid,
                "tid": tids[(s.stage, s.slot)],
                "name": f"r{s.request} b{s.batch}",
                "cat": s.stage,
                "ts": (s.start - origin) * 1e6,
                "dur": s.duration * 1e6,
                "args": {"request": s.request, "batch": s.batch, "slot": s.slot},
            }
            for s in sorted(spans, key=lambda s: s.start)
        ]
        trace = {
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "otherData": self._summarise(spans, recorded, dropped).to_dict(),
        }
        path = Path(path)
        path.write_text(json.dumps(trace, indent=1))
        return path

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Save a Gantt chart of the spans as a PNG (needs matplotlib).

        One row per stage, in pipeline order; within a row each slot has its
        own band (slot 0 on top), so parallel spans of one stage stay visible.
        Bars are coloured by request. Drawn on matplotlib's Agg canvas without
        pyplot, so it needs no display and never changes the global backend.

        Returns:
            The path written.

        Raises:
            ImportError: matplotlib is not installed.
        """
        try:
            from matplotlib import colormaps
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            from matplotlib.patches import Patch
        except ImportError as error:
            raise ImportError(
                'Timeline.plot needs matplotlib; install it with pip install "npu-pipeline[plot]".'
            ) from error

        spans, recorded, dropped = self._snapshot()
        spans = tuple(s for s in spans if s.stage in STAGES)  # host-path spans: no row
        summary = self._summarise(spans, recorded, dropped)
        origin = min((s.start for s in spans), default=0.0)
        scale, unit = _time_unit(summary.wall_s)
        slots = sorted({s.slot for s in spans}) or [0]
        requests = sorted({s.request for s in spans})
        palette = colormaps["tab10"]
        colours = {r: palette(n % palette.N) for n, r in enumerate(requests)}
        band = 0.8 / len(slots)

        fig = Figure(figsize=(10, 3.4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        groups: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
        for s in spans:
            groups.setdefault((s.stage, s.slot, s.request), []).append(
                ((s.start - origin) * scale, s.duration * scale)
            )
        for (stage, slot, request), xranges in groups.items():
            top = STAGES.index(stage) - 0.4 + slots.index(slot) * band
            ax.broken_barh(
                xranges,
                (top, band * 0.9),
                facecolors=colours[request],
                edgecolors="white",
                linewidth=0.5,  # separates back-to-back batches of one request
            )
        if len(spans) <= 60:  # label bars only while there is room to read the labels
            for s in spans:
                top = STAGES.index(s.stage) - 0.4 + slots.index(s.slot) * band
                ax.text(
                    (s.start - origin + s.duration / 2) * scale,
                    top + band * 0.45,
                    f"b{s.batch}",
                    ha="center",
                    va="center",
                    color="white",
                    fontsize="small",
                    clip_on=True,
                )
        for boundary in range(len(STAGES) - 1):
            ax.axhline(boundary + 0.5, color="grey", linewidth=0.5)
        ax.set_yticks(range(len(STAGES)), STAGES)
        ax.set_ylim(len(STAGES) - 0.5, -0.5)  # pack on top, as data flows
        ax.set_xlim(0, max(summary.wall_s * scale, 1e-9))
        ax.set_xlabel(f"time since first span ({unit})")
        ax.grid(axis="x", alpha=0.3)
        slot_note = (
            f"; in each row one band per slot, {slots[0]}..{slots[-1]} top down"
            if len(slots) > 1
            else ""
        )
        ax.set_title(
            f"wall {summary.wall_s * scale:.3f} {unit}, "
            f"eta = {format_overlap(summary.overlap_efficiency, summary.overlap_na_reason, 2)}, "
            f"{summary.batches} batches{slot_note}"
        )
        legend_requests = requests[:10]  # a legend longer than that stops helping
        ax.legend(
            handles=[Patch(color=colours[r], label=f"request {r}") for r in legend_requests],
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            fontsize="small",
            title="more not shown" if len(requests) > len(legend_requests) else None,
        )
        path = Path(path)
        fig.savefig(path, dpi=120)
        return path

    @staticmethod
    def _busy(spans: tuple[Span, ...]) -> dict[str, float]:
        return {
            stage: _union_length((s.start, s.end) for s in spans if s.stage == stage)
            for stage in STAGES
        }

    @staticmethod
    def _wall(spans: tuple[Span, ...]) -> float:
        if not spans:
            return 0.0
        return max(s.end for s in spans) - min(s.start for s in spans)

    @staticmethod
    def _utilisation(busy: Mapping[str, float], wall_s: float) -> dict[str, float]:
        return {stage: busy[stage] / wall_s if wall_s > 0 else 0.0 for stage in STAGES}
