"""Spans per stage and batch, overlap metrics, Chrome-trace export, Gantt chart.

The pipeline records one :class:`Span` each time a stage works on a batch:
``pack`` (host fills a slot), ``execute`` (the NPU runs it), ``accumulate``
(host reads the slot and adds the partial product into C). A
:class:`Timeline` collects them from worker threads and the event loop alike,
and turns them into the overlap metrics defined in ``docs/timeline.md#the-numbers``:

- busy time per stage, ``P``, ``X``, ``Q`` (:meth:`Timeline.busy_s`): the
  length of the *union* of that stage's spans. Several worker threads may
  pack at once; their overlapping spans count once, so a stage is "busy"
  while at least one of its spans is running, and busy time never exceeds
  wall time.
- wall time ``T_wall`` (:meth:`Timeline.wall_s`): last end - first start.
- serial time ``T_ser = P + X + Q``: what the run would take with no overlap.
- bottleneck ``T_max = max(P, X, Q)``: what it would take with perfect overlap.
- overlap efficiency ``eta = (T_ser - T_wall) / (T_ser - T_max)``
  (:func:`overlap_efficiency`): the fraction of the hideable time
  ``T_ser - T_max`` that was actually hidden. 1 = the two lighter stages ran
  entirely under the bottleneck; 0 = nothing overlapped.
- utilisation of each stage, ``busy / T_wall`` (:meth:`Timeline.utilisation`).

The same :func:`overlap_efficiency` is used by the planner for its predicted
schedule, so predicted and measured figures mean the same thing; compare them
with :meth:`Timeline.compare_with_prediction`.

All times are seconds on the clock the timeline was made with
(:func:`time.perf_counter` by default). ``docs/timeline.md`` has a worked
example and explains how to open the trace in Perfetto.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
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


def overlap_efficiency(busy: Mapping[str, float], wall_s: float) -> float:
    """Overlap efficiency ``eta = (T_ser - T_wall) / (T_ser - T_max)``, in [0, 1].

    Args:
        busy: busy seconds per stage (keys among :data:`STAGES`; a missing
            stage counts as 0 s).
        wall_s: wall-clock seconds of the whole run.

    ``T_ser`` is the sum of the busy times and ``T_max`` the largest. The raw
    ratio is clipped to [0, 1]: it goes below 0 when the run also sat idle
    (``T_wall > T_ser``: for a while no stage was working), and above 1 only
    for figures that are not one consistent schedule (``T_wall < T_max``).

    When ``T_ser == T_max`` at most one stage did any work: there was nothing
    to hide, so nothing was left unhidden, and eta is defined as 1.0 (this
    includes an empty run).

    Raises:
        TimelineError: an unknown stage name, or a negative or non-finite time.
    """
    times = _check_busy(busy)
    wall_s = _check_wall(wall_s)
    t_ser = sum(times.values())
    t_max = max(times.values())
    if t_ser <= t_max:
        return 1.0
    return min(1.0, max(0.0, (t_ser - wall_s) / (t_ser - t_max)))


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
    """The overlap metrics of a timeline at one moment.

    Attributes:
        spans: number of spans recorded.
        requests: number of distinct requests.
        batches: number of distinct (request, batch) pairs.
        wall_s: ``T_wall``, last end - first start, seconds (0 when empty).
        serial_s: ``T_ser``, sum of the stage busy times, seconds.
        bottleneck_s: ``T_max``, the largest stage busy time, seconds.
        bottleneck_stage: the stage with the largest busy time (first in
            pipeline order on a tie).
        busy_s: busy seconds per stage, every stage present.
        utilisation: ``busy / T_wall`` per stage (0 when ``T_wall`` is 0).
        overlap_efficiency: eta in [0, 1], see :func:`overlap_efficiency`.
    """

    spans: int
    requests: int
    batches: int
    wall_s: float
    serial_s: float
    bottleneck_s: float
    bottleneck_stage: str
    busy_s: Mapping[str, float]
    utilisation: Mapping[str, float]
    overlap_efficiency: float

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-able values (for ``bench --json`` and traces)."""
        return {
            "spans": self.spans,
            "requests": self.requests,
            "batches": self.batches,
            "wall_s": self.wall_s,
            "serial_s": self.serial_s,
            "bottleneck_s": self.bottleneck_s,
            "bottleneck_stage": self.bottleneck_stage,
            "busy_s": dict(self.busy_s),
            "utilisation": dict(self.utilisation),
            "overlap_efficiency": self.overlap_efficiency,
        }

    def format(self) -> str:
        """The overlap report: one line per stage, then wall, serial and eta."""
        if self.spans == 0:
            return "overlap report: no spans recorded"
        scale, unit = _time_unit(max(self.wall_s, self.serial_s))
        lines = [
            f"overlap report: {self.batches} batches in {self.requests} request(s), "
            f"{self.spans} spans",
            f"  {'stage':<12}{'busy (' + unit + ')':>12}{'utilisation':>14}",
        ]
        for stage in STAGES:
            mark = "  <- bottleneck" if stage == self.bottleneck_stage else ""
            lines.append(
                f"  {stage:<12}{self.busy_s[stage] * scale:>12.3f}"
                f"{self.utilisation[stage]:>13.1%}{mark}"
            )
        lines += [
            f"  {'wall':<12}{self.wall_s * scale:>12.3f}",
            f"  {'serial':<12}{self.serial_s * scale:>12.3f}   (sum of the busy times)",
            f"  overlap efficiency eta = {self.overlap_efficiency:.3f}"
            "   (1 = lighter stages fully hidden, 0 = no overlap)",
        ]
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
        predicted_wall_s, measured_wall_s: wall time, seconds.
        predicted_busy_s, measured_busy_s: busy seconds per stage.
        predicted_efficiency, measured_efficiency: eta of each, both computed
            by :func:`overlap_efficiency`.
    """

    predicted_wall_s: float
    measured_wall_s: float
    predicted_busy_s: Mapping[str, float]
    measured_busy_s: Mapping[str, float]
    predicted_efficiency: float
    measured_efficiency: float

    @property
    def wall_ratio(self) -> float:
        """Measured / predicted wall time."""
        return _ratio(self.measured_wall_s, self.predicted_wall_s)

    @property
    def busy_ratio(self) -> dict[str, float]:
        """Measured / predicted busy time, per stage."""
        return {s: _ratio(self.measured_busy_s[s], self.predicted_busy_s[s]) for s in STAGES}

    def format(self) -> str:
        """A table: predicted, measured and ratio for each stage and the wall time."""
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
        lines.append(
            f"  {'eta':<12}{self.predicted_efficiency:>18.3f}{self.measured_efficiency:>18.3f}"
        )
        return "\n".join(lines)


class Timeline:
    """A thread-safe recorder of :class:`Span` s, and the metrics computed from them.

    ``record`` and ``span`` may be called from any thread and from the event
    loop at the same time; a lock guards the list, and every query works on a
    snapshot taken under that lock, so reading never blocks recording for long.

    Args:
        spans: spans to start with (for example a predicted schedule, to
            :meth:`compare` against).
        clock: the time source :meth:`span` reads, seconds. Keep the default
            :func:`time.perf_counter` unless every span comes from the same
            other clock (tests pass a fake one).
    """

    def __init__(
        self,
        spans: Iterable[Span] = (),
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = list(spans)
        self._clock = clock

    def record(self, span: Span) -> None:
        """Add one finished span."""
        with self._lock:
            self._spans.append(span)

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

    @property
    def spans(self) -> tuple[Span, ...]:
        """A copy of every span recorded so far, in recording order."""
        with self._lock:
            return tuple(self._spans)

    def clear(self) -> None:
        """Forget every span (for example between benchmark repeats)."""
        with self._lock:
            self._spans.clear()

    def for_request(self, request_id: int) -> Timeline:
        """A new timeline holding a snapshot of one request's spans (empty if none)."""
        return Timeline((s for s in self.spans if s.request == request_id), clock=self._clock)

    def busy_s(self) -> dict[str, float]:
        """Busy seconds per stage: the union of that stage's spans (every stage present)."""
        return self._busy(self.spans)

    def wall_s(self) -> float:
        """Seconds from the first span's start to the last span's end (0 when empty)."""
        return self._wall(self.spans)

    def overlap_efficiency(self) -> float:
        """eta of the recorded spans; see :func:`overlap_efficiency`."""
        spans = self.spans
        return overlap_efficiency(self._busy(spans), self._wall(spans))

    def utilisation(self) -> dict[str, float]:
        """``busy / T_wall`` per stage, each in [0, 1] (all 0 when ``T_wall`` is 0)."""
        spans = self.spans
        return self._utilisation(self._busy(spans), self._wall(spans))

    def summary(self) -> TimelineSummary:
        """Every metric at once, from one consistent snapshot."""
        spans = self.spans
        busy = self._busy(spans)
        wall = self._wall(spans)
        bottleneck = max(STAGES, key=lambda stage: busy[stage])  # first stage wins a tie
        return TimelineSummary(
            spans=len(spans),
            requests=len({s.request for s in spans}),
            batches=len({(s.request, s.batch) for s in spans}),
            wall_s=wall,
            serial_s=sum(busy.values()),
            bottleneck_s=busy[bottleneck],
            bottleneck_stage=bottleneck,
            busy_s=MappingProxyType(busy),
            utilisation=MappingProxyType(self._utilisation(busy, wall)),
            overlap_efficiency=overlap_efficiency(busy, wall),
        )

    def report(self) -> str:
        """The overlap report as readable text (what ``npu-pipeline`` prints)."""
        return self.summary().format()

    def compare_with_prediction(
        self, predicted_wall_s: float, predicted_busy: Mapping[str, float]
    ) -> Comparison:
        """Set the recorded run beside a prediction of wall and per-stage busy seconds.

        With the planner: ``timeline.compare_with_prediction(plan.estimate.wall_s,
        plan.estimate.busy_s)``.

        Raises:
            TimelineError: an unknown stage name, or a negative or non-finite time.
        """
        predicted_busy = _check_busy(predicted_busy)
        predicted_wall_s = _check_wall(predicted_wall_s)
        spans = self.spans
        busy = self._busy(spans)
        wall = self._wall(spans)
        return Comparison(
            predicted_wall_s=predicted_wall_s,
            measured_wall_s=wall,
            predicted_busy_s=MappingProxyType(predicted_busy),
            measured_busy_s=MappingProxyType(busy),
            predicted_efficiency=overlap_efficiency(predicted_busy, predicted_wall_s),
            measured_efficiency=overlap_efficiency(busy, wall),
        )

    def compare(self, predicted: Timeline) -> Comparison:
        """Set the recorded run beside a predicted schedule given as spans."""
        return self.compare_with_prediction(predicted.wall_s(), predicted.busy_s())

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
        spans = self.spans
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
            "otherData": Timeline(spans).summary().to_dict(),
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

        spans = tuple(s for s in self.spans if s.stage in STAGES)  # host spans: no row
        summary = Timeline(spans).summary()
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
            f"eta = {summary.overlap_efficiency:.2f}, {summary.batches} batches{slot_note}"
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
