"""Timeline: spans, overlap metrics, Chrome trace, Gantt chart.

Every schedule here is built by hand with whole-number times, so sums and
differences are exact in binary floating point and the metrics can be
compared with ``==`` against values worked out on paper. Times start at
``T0`` rather than 0 because perf_counter readings never do.
"""

import json
import sys
import threading

import numpy as np
import pytest

from npu_pipeline.errors import TimelineError
from npu_pipeline.timeline import (
    DEFAULT_MAX_SPANS,
    NA_NO_WORK,
    NA_ONE_BATCH,
    NA_ONE_STAGE,
    STAGES,
    Comparison,
    Span,
    Timeline,
    TimelineSummary,
    format_overlap,
    overlap_efficiency,
    overlap_na_reason,
)

T0 = 100.0


def timeline(*rows, request=0):
    """A timeline from (stage, batch, slot, start, end) rows, times relative to T0."""
    return Timeline(
        Span(request, batch, stage, slot, T0 + start, T0 + end)
        for stage, batch, slot, start, end in rows
    )


def steady_state():
    """A 4 s steady-state window of a long run with three slots: in second t, batch
    n+1 packs, n executes and n-1 accumulates (n = t + 5). Execute (4 s) is busy
    the whole wall time and hides pack (4 x 0.5 s) and accumulate (4 x 0.25 s)."""
    rows = []
    for t in range(4):
        n = t + 5
        rows += [
            ("pack", n + 1, (n + 1) % 3, t, t + 0.5),
            ("execute", n, n % 3, t, t + 1),
            ("accumulate", n - 1, (n - 1) % 3, t, t + 0.25),
        ]
    return timeline(*rows)


def serial():
    """Two batches, each packed, executed and accumulated with nothing overlapping."""
    return timeline(
        ("pack", 0, 0, 0, 1),
        ("execute", 0, 0, 1, 3),
        ("accumulate", 0, 0, 3, 4),
        ("pack", 1, 0, 4, 5),
        ("execute", 1, 0, 5, 7),
        ("accumulate", 1, 0, 7, 8),
    )


def double_buffer_stall():
    """Three batches, pack 2 s, execute 3 s, accumulate 2 s, two slots.

    Pack of batch 2 needs slot 0, free only once batch 0 is accumulated (t=7),
    so execute idles from 8 to 9:

        pack        [0,2] b0   [2,4] b1             [7,9] b2
        execute          [2,5] b0  [5,8] b1             [9,12] b2
        accumulate                 [5,7] b0  [8,10] b1         [12,14] b2

    P = 6, X = 9, Q = 6, T_ser = 21, T_max = 9, T_wall = 14,
    eta = (21 - 14) / (21 - 9) = 7/12.
    """
    return timeline(
        ("pack", 0, 0, 0, 2),
        ("execute", 0, 0, 2, 5),
        ("pack", 1, 1, 2, 4),
        ("accumulate", 0, 0, 5, 7),
        ("execute", 1, 1, 5, 8),
        ("pack", 2, 0, 7, 9),
        ("accumulate", 1, 1, 8, 10),
        ("execute", 2, 0, 9, 12),
        ("accumulate", 2, 0, 12, 14),
    )


# --- metrics on hand-built schedules ---------------------------------------------------


def test_perfect_overlap_has_efficiency_exactly_one():
    tl = steady_state()
    assert tl.busy_s() == {"pack": 2.0, "execute": 4.0, "accumulate": 1.0}
    assert tl.wall_s() == 4.0
    assert tl.overlap_efficiency() == 1.0
    assert tl.utilisation() == {"pack": 0.5, "execute": 1.0, "accumulate": 0.25}


def test_serial_schedule_has_efficiency_exactly_zero():
    tl = serial()
    assert tl.busy_s() == {"pack": 2.0, "execute": 4.0, "accumulate": 2.0}
    assert tl.wall_s() == 8.0  # == T_ser: nothing hidden
    assert tl.overlap_efficiency() == 0.0


def test_partial_overlap_matches_hand_computation():
    tl = double_buffer_stall()
    assert tl.busy_s() == {"pack": 6.0, "execute": 9.0, "accumulate": 6.0}
    assert tl.wall_s() == 14.0
    assert tl.overlap_efficiency() == 7 / 12
    assert tl.utilisation() == {"pack": 6 / 14, "execute": 9 / 14, "accumulate": 6 / 14}


@pytest.mark.parametrize("n", [2, 3, 8])
def test_ideal_pipeline_efficiency_is_n_minus_one_over_n(n):
    # Constant stage times, execute the bottleneck, enough slots: wall = p + n*x + q,
    # and only the first pack and the last accumulate stay unhidden: eta = (n-1)/n.
    p, x, q = 1, 4, 2
    rows = []
    for b in range(n):
        rows += [
            ("pack", b, b, b * x, b * x + p),
            ("execute", b, b, p + b * x, p + (b + 1) * x),
            ("accumulate", b, b, p + (b + 1) * x, p + (b + 1) * x + q),
        ]
    tl = timeline(*rows)
    assert tl.wall_s() == p + n * x + q
    assert tl.overlap_efficiency() == (n - 1) / n


def test_overlapping_spans_of_one_stage_count_as_their_union():
    # Two pack threads: [0,2] and [1,3] overlap by 1 s; [5,6] is separate.
    tl = timeline(
        ("pack", 0, 0, 0, 2),
        ("pack", 1, 1, 1, 3),
        ("pack", 2, 2, 5, 6),
        ("pack", 3, 3, 5.5, 5.75),  # wholly inside the previous one
        ("execute", 0, 0, 3, 7),
    )
    assert tl.busy_s() == {"pack": 4.0, "execute": 4.0, "accumulate": 0.0}
    assert tl.utilisation()["pack"] == 4 / 7


def test_one_batch_has_no_efficiency_and_says_why():
    # A batch's stages run one after another by nature: nothing could overlap,
    # so eta is not 0 ("nothing overlapped") but undefined.
    tl = timeline(("pack", 0, 0, 0, 1), ("execute", 0, 0, 1, 3), ("accumulate", 0, 0, 3, 4))
    s = tl.summary()
    assert (s.overlap_efficiency, s.overlap_na_reason) == (None, NA_ONE_BATCH)
    assert tl.overlap_efficiency() is None
    eta_line = s.format().splitlines()[-1]
    assert eta_line == f"  overlap efficiency eta = n/a ({NA_ONE_BATCH})"
    assert NA_ONE_BATCH == "one batch: its stages run one after another"


def test_one_busy_stage_has_no_efficiency_and_says_why():
    tl = timeline(("execute", 0, 0, 0, 2), ("execute", 1, 1, 3, 5))
    s = tl.summary()
    assert (s.overlap_efficiency, s.overlap_na_reason) == (None, NA_ONE_STAGE)  # T_ser == T_max
    assert s.format().endswith("eta = n/a (only one stage did any work)")
    assert tl.utilisation() == {"pack": 0.0, "execute": 0.8, "accumulate": 0.0}


def test_one_batch_requests_that_overlap_each_other_have_an_efficiency():
    # Two one-batch requests from concurrent callers: request 1 packs while
    # request 0 executes, so across requests there is overlap to measure.
    tl = Timeline(
        [
            Span(0, 0, "pack", 0, T0 + 0, T0 + 1),
            Span(0, 0, "execute", 0, T0 + 1, T0 + 3),
            Span(1, 0, "pack", 1, T0 + 1, T0 + 2),
            Span(0, 0, "accumulate", 0, T0 + 3, T0 + 4),
            Span(1, 0, "execute", 1, T0 + 3, T0 + 5),
            Span(1, 0, "accumulate", 1, T0 + 5, T0 + 6),
        ]
    )
    # P 2, X 4, Q 2: T_ser 8, T_max 4, active 6.
    assert tl.overlap_efficiency() == (8 - 6) / (8 - 4)


def test_idle_time_is_reported_apart_and_does_not_change_efficiency():
    # The stall schedule, then a 6 s pause, then the same schedule again (a
    # second call). Pooled, the pause is idle time: eta stays that of the
    # calls themselves instead of dropping to 0, and the report shows the pause.
    first = double_buffer_stall().spans
    again = [
        Span(1, s.batch, s.stage, s.slot, s.start + 20, s.end + 20) for s in first
    ]  # 14 s of work from t = 20
    tl = Timeline([*first, *again])
    s = tl.summary()
    assert (s.wall_s, s.active_s, s.idle_s) == (34.0, 28.0, 6.0)
    assert tl.active_s() == 28.0 and tl.idle_s() == 6.0
    assert s.serial_s == 42.0 and s.bottleneck_s == 18.0
    assert s.overlap_efficiency == (42 - 28) / (42 - 18) == 7 / 12
    assert s.utilisation["execute"] == 18 / 34  # of the wall time, pause included
    lines = s.format().splitlines()
    assert "  idle               6.000   (no stage working)" in lines
    assert lines[0] == "overlap report, all spans recorded: 6 batches in 2 request(s), 18 spans"


def test_empty_timeline():
    tl = Timeline()
    assert tl.spans == ()
    assert tl.busy_s() == {"pack": 0.0, "execute": 0.0, "accumulate": 0.0}
    assert tl.wall_s() == 0.0 and tl.active_s() == 0.0 and tl.idle_s() == 0.0
    assert tl.overlap_efficiency() is None
    assert tl.summary().overlap_na_reason == NA_NO_WORK
    assert tl.utilisation() == {"pack": 0.0, "execute": 0.0, "accumulate": 0.0}
    assert tl.report() == "overlap report, all spans recorded: no spans recorded"


# --- the pure function the planner reuses -------------------------------------------


@pytest.mark.parametrize(
    ("busy", "wall", "expected"),
    [
        ({"pack": 6, "execute": 9, "accumulate": 6}, 14, 7 / 12),
        ({"pack": 6, "execute": 9, "accumulate": 6}, 9, 1.0),
        ({"pack": 6, "execute": 9, "accumulate": 6}, 21, 0.0),
        ({"pack": 6, "execute": 9, "accumulate": 6}, 30, 0.0),  # idle: clipped up
        ({"pack": 6, "execute": 9, "accumulate": 6}, 5, 1.0),  # inconsistent: clipped down
        ({"execute": 3.0}, 3.0, None),  # missing stages count as 0 s: one stage worked
        ({"pack": 1.0, "execute": 1.0}, 1.5, 0.5),  # tie for the max
        ({}, 0.0, None),
    ],
)
def test_overlap_efficiency_function(busy, wall, expected):
    assert overlap_efficiency(busy, wall) == expected


@pytest.mark.parametrize(
    ("busy", "batches", "reason"),
    [
        ({"pack": 6, "execute": 9, "accumulate": 6}, None, None),
        ({"pack": 6, "execute": 9, "accumulate": 6}, 3, None),
        ({"pack": 6, "execute": 9, "accumulate": 6}, 1, NA_ONE_BATCH),
        ({"execute": 9}, 3, NA_ONE_STAGE),
        ({"execute": 9}, 1, NA_ONE_BATCH),  # one batch is the more basic reason
        ({"execute": 9}, None, NA_ONE_STAGE),
        ({}, 3, NA_NO_WORK),
        ({"pack": 1}, 0, NA_NO_WORK),
    ],
)
def test_overlap_na_reason(busy, batches, reason):
    assert overlap_na_reason(busy, batches) == reason
    eta = overlap_efficiency(busy, 10.0, batches)
    assert (eta is None) == (reason is not None)


def test_format_overlap():
    assert format_overlap(7 / 12, None) == "0.583"
    assert format_overlap(0.0, None, digits=2) == "0.00"  # a real 0 stays a number
    assert format_overlap(None, NA_ONE_BATCH) == "n/a (one batch: its stages run one after another)"


@pytest.mark.parametrize("batches", [-1, 1.5, True, "3"])
def test_overlap_efficiency_refuses_a_bad_batch_count(batches):
    with pytest.raises(TimelineError, match="batch count"):
        overlap_efficiency({"pack": 1.0, "execute": 2.0}, 2.5, batches)


@pytest.mark.parametrize(
    ("busy", "wall", "match"),
    [
        ({"dma": 1.0}, 1.0, "unknown stage"),
        ({"pack": -1.0}, 1.0, "finite seconds >= 0"),
        ({"pack": float("nan")}, 1.0, "finite seconds >= 0"),
        ({"pack": 1.0}, -1.0, "wall time"),
        ({"pack": 1.0}, float("inf"), "wall time"),
    ],
)
def test_overlap_efficiency_refuses_bad_figures(busy, wall, match):
    with pytest.raises(TimelineError, match=match):
        overlap_efficiency(busy, wall)


# --- recording ---------------------------------------------------------------------


def test_span_validates_stage_and_times():
    with pytest.raises(TimelineError, match="stage 'unpack' is unknown"):
        Span(0, 0, "unpack", 0, 0.0, 1.0)
    with pytest.raises(TimelineError, match="end >= start"):
        Span(0, 0, "pack", 0, 2.0, 1.0)
    with pytest.raises(TimelineError, match="end >= start"):
        Span(0, 0, "pack", 0, 0.0, float("nan"))
    assert Span(0, 0, "pack", 0, 1.0, 3.5).duration == 2.5


class FakeClock:
    """Returns the queued readings in order."""

    def __init__(self, *readings):
        self.readings = list(readings)

    def __call__(self):
        return self.readings.pop(0)


def test_span_context_manager_times_the_block():
    tl = Timeline(clock=FakeClock(10.0, 10.25))
    with tl.span(request=3, batch=7, stage="execute", slot=1):
        pass
    assert tl.spans == (Span(3, 7, "execute", 1, 10.0, 10.25),)


def test_span_context_manager_records_a_failed_block_and_reraises():
    tl = Timeline(clock=FakeClock(1.0, 4.0))
    with pytest.raises(RuntimeError, match="boom"), tl.span(0, 2, "pack", 0):
        raise RuntimeError("boom")
    assert tl.spans == (Span(0, 2, "pack", 0, 1.0, 4.0),)


def test_span_context_manager_refuses_unknown_stage_before_running_the_block():
    tl = Timeline()
    ran = []
    with pytest.raises(TimelineError, match="unknown"), tl.span(0, 0, "upload", 0):
        ran.append(True)
    assert ran == []
    assert tl.spans == ()


def test_span_context_manager_uses_perf_counter_by_default():
    tl = Timeline()
    with tl.span(0, 0, "accumulate", 0):
        pass
    (span,) = tl.spans
    assert 0.0 <= span.duration < 1.0


def test_spans_is_a_copy_and_clear_forgets():
    tl = serial()
    snapshot = tl.spans
    tl.clear()
    assert len(snapshot) == 6
    assert tl.spans == ()


def test_for_request_filters_a_snapshot():
    tl = Timeline()
    a = Span(1, 0, "pack", 0, 0.0, 1.0)
    b = Span(2, 0, "pack", 1, 0.5, 2.0)
    c = Span(1, 0, "execute", 0, 1.0, 3.0)
    for span in (a, b, c):
        tl.record(span)
    one = tl.for_request(1)
    assert one.spans == (a, c)
    assert tl.for_request(9).spans == ()
    tl.record(Span(1, 1, "pack", 1, 3.0, 4.0))
    assert one.spans == (a, c)  # a copy: later spans do not appear


def test_recording_from_many_threads_loses_nothing():
    tl = Timeline()
    threads_n, per_thread = 8, 500
    barrier = threading.Barrier(threads_n)

    def work(t):
        barrier.wait()  # start together to maximise contention
        for i in range(per_thread):
            tl.record(Span(t, i, STAGES[i % 3], 0, float(i), float(i + 1)))
            if i % 50 == 0:
                tl.summary()  # readers run while writers write

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans = tl.spans
    assert len(spans) == threads_n * per_thread
    assert {(s.request, s.batch) for s in spans} == {
        (t, i) for t in range(threads_n) for i in range(per_thread)
    }


# --- summary, report, comparison -----------------------------------------------------


def test_summary_holds_every_metric():
    tl = double_buffer_stall()
    tl.record(Span(1, 0, "execute", 0, T0 + 12, T0 + 13))  # a second request
    s = tl.summary()
    assert isinstance(s, TimelineSummary)
    assert (s.spans, s.requests, s.batches) == (10, 2, 4)
    assert (s.wall_s, s.active_s, s.idle_s) == (14.0, 14.0, 0.0)
    assert (s.serial_s, s.bottleneck_s) == (22.0, 10.0)
    assert (s.spans_recorded, s.spans_dropped, s.scope) == (10, 0, "all spans recorded")
    assert s.overlap_na_reason is None
    assert s.bottleneck_stage == "execute"
    assert dict(s.busy_s) == {"pack": 6.0, "execute": 10.0, "accumulate": 6.0}
    assert s.utilisation["execute"] == 10 / 14
    assert s.overlap_efficiency == (22 - 14) / (22 - 10)
    assert json.loads(json.dumps(s.to_dict())) == s.to_dict()
    with pytest.raises(TypeError):
        s.busy_s["pack"] = 0.0  # read-only: the summary is a frozen record


def test_report_text():
    # Scale the stall schedule to milliseconds so the report picks ms.
    tl = Timeline(
        Span(s.request, s.batch, s.stage, s.slot, s.start / 1000, s.end / 1000)
        for s in double_buffer_stall().spans
    )
    assert tl.report().splitlines() == [
        "overlap report, all spans recorded: 3 batches in 1 request(s), 9 spans",
        "  stage          busy (ms)   utilisation",
        "  pack               6.000        42.9%",
        "  execute            9.000        64.3%  <- bottleneck",
        "  accumulate         6.000        42.9%",
        "  wall              14.000   (first start to last end)",
        "  active            14.000   (some stage working)",
        "  idle               0.000   (no stage working)",
        "  serial            21.000   (sum of the busy times)",
        "  overlap efficiency eta = 0.583   (1 = lighter stages fully hidden, 0 = no overlap)",
    ]


def test_compare_with_prediction():
    tl = double_buffer_stall()  # measured: P 6, X 9, Q 6, wall 14
    c = tl.compare_with_prediction(12.0, {"pack": 4.0, "execute": 9.0, "accumulate": 0.0})
    assert isinstance(c, Comparison)
    assert c.wall_ratio == 14 / 12
    assert c.busy_ratio == {"pack": 1.5, "execute": 1.0, "accumulate": float("inf")}
    assert c.predicted_efficiency == (13 - 12) / (13 - 9)
    assert c.measured_efficiency == 7 / 12
    assert c.format().splitlines() == [
        "predicted vs measured",
        "                   predicted (s)      measured (s)  measured/predicted",
        "  pack                     4.000             6.000                1.50",
        "  execute                  9.000             9.000                1.00",
        "  accumulate               0.000             6.000                 inf",
        "  wall                    12.000            14.000                1.17",
        "  eta                      0.250             0.583",
    ]


def test_compare_prints_n_a_with_the_reason_for_one_batch():
    tl = timeline(("pack", 0, 0, 0, 1), ("execute", 0, 0, 1, 3), ("accumulate", 0, 0, 3, 4))
    c = tl.compare_with_prediction(4.0, {"pack": 1.0, "execute": 2.0, "accumulate": 1.0}, 1)
    assert (c.predicted_efficiency, c.predicted_na_reason) == (None, NA_ONE_BATCH)
    assert (c.measured_efficiency, c.measured_na_reason) == (None, NA_ONE_BATCH)
    assert c.format().splitlines()[-2:] == [
        "  eta         predicted n/a (one batch: its stages run one after another)",
        "              measured  n/a (one batch: its stages run one after another)",
    ]
    # Without the predicted batch count only the busy times can be judged.
    unknown = tl.compare_with_prediction(4.0, {"pack": 1.0, "execute": 2.0, "accumulate": 1.0})
    assert unknown.predicted_efficiency == 0.0


def test_compare_against_a_predicted_schedule():
    c = double_buffer_stall().compare(serial())
    assert c.predicted_wall_s == 8.0
    assert dict(c.predicted_busy_s) == {"pack": 2.0, "execute": 4.0, "accumulate": 2.0}
    assert c.busy_ratio == {"pack": 3.0, "execute": 2.25, "accumulate": 3.0}


def test_comparison_ratio_is_one_when_both_figures_are_zero():
    c = timeline(("execute", 0, 0, 0, 2)).compare_with_prediction(2.0, {"execute": 2.0})
    assert c.busy_ratio == {"pack": 1.0, "execute": 1.0, "accumulate": 1.0}


def test_compare_refuses_unknown_stage():
    with pytest.raises(TimelineError, match="unknown stage"):
        serial().compare_with_prediction(1.0, {"transfer": 1.0})


# --- Chrome trace ------------------------------------------------------------------------


def test_chrome_trace_round_trips(tmp_path):
    tl = double_buffer_stall()
    tl.record(Span(5, 0, "pack", 2, T0 + 1, T0 + 1.5))
    path = tl.to_chrome_trace(tmp_path / "trace.json")
    trace = json.loads(path.read_text())

    events = trace["traceEvents"]
    meta = [e for e in events if e["ph"] == "M"]
    names = {e["tid"]: e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    # One track per (stage, slot), in pipeline order, then slot order.
    assert names == {
        1: "pack (slot 0)",
        2: "pack (slot 1)",
        3: "pack (slot 2)",
        4: "execute (slot 0)",
        5: "execute (slot 1)",
        6: "accumulate (slot 0)",
        7: "accumulate (slot 1)",
    }
    assert {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "npu_pipeline"}} in meta

    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == len(tl.spans) == 10
    got = {
        (e["args"]["request"], e["args"]["batch"], e["cat"], e["args"]["slot"]): (
            e["ts"],
            e["dur"],
            names[e["tid"]],
            e["name"],
        )
        for e in complete
    }
    expected = {
        (s.request, s.batch, s.stage, s.slot): (
            (s.start - T0) * 1e6,
            s.duration * 1e6,
            f"{s.stage} (slot {s.slot})",
            f"r{s.request} b{s.batch}",
        )
        for s in tl.spans
    }
    assert got == expected
    assert trace["otherData"]["wall_s"] == 14.0
    assert trace["otherData"]["spans"] == 10
    assert trace["displayTimeUnit"] == "ms"


def test_chrome_trace_says_n_a_and_why(tmp_path):
    tl = timeline(("pack", 0, 0, 0, 1), ("execute", 0, 0, 1, 3), ("accumulate", 0, 0, 3, 4))
    other = json.loads(tl.to_chrome_trace(tmp_path / "t.json").read_text())["otherData"]
    assert other["overlap_efficiency"] is None
    assert other["overlap_na_reason"] == NA_ONE_BATCH
    assert other["eta"] == "n/a (one batch: its stages run one after another)"


def test_chrome_trace_tracks_never_hold_overlapping_events(tmp_path):
    # Trace viewers need events on one track to nest; parallel packs go to their own slots.
    tl = timeline(("pack", 0, 0, 0, 2), ("pack", 1, 1, 1, 3))
    events = json.loads(tl.to_chrome_trace(tmp_path / "t.json").read_text())["traceEvents"]
    tids = [e["tid"] for e in events if e["ph"] == "X"]
    assert len(set(tids)) == 2


def test_chrome_trace_of_empty_timeline_is_valid(tmp_path):
    trace = json.loads(Timeline().to_chrome_trace(tmp_path / "empty.json").read_text())
    assert [e["ph"] for e in trace["traceEvents"]] == ["M"]


# --- Gantt chart -----------------------------------------------------------------------


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    tl = double_buffer_stall()
    for s in timeline(
        ("pack", 0, 1, 14, 15), ("execute", 0, 1, 15, 17), ("accumulate", 0, 1, 17, 18), request=1
    ).spans:
        tl.record(s)
    path = tl.plot(tmp_path / "gantt.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_title_says_n_a_and_why(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    titles = []
    monkeypatch.setattr(Axes, "set_title", lambda self, text, *a, **k: titles.append(text))
    tl = timeline(("pack", 0, 0, 0, 1), ("execute", 0, 0, 1, 3), ("accumulate", 0, 0, 3, 4))
    tl.plot(tmp_path / "one.png")
    double_buffer_stall().plot(tmp_path / "three.png")
    assert titles == [
        "wall 4.000 s, eta = n/a (one batch: its stages run one after another), 1 batches",
        "wall 14.000 s, eta = 0.58, 3 batches; in each row one band per slot, 0..1 top down",
    ]


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match=r'pip install "npu-pipeline\[plot\]"'):
        serial().plot(tmp_path / "gantt.png")


# --- windows, the last request, the cap --------------------------------------------


def request_spans(request, start):
    """One request of two batches (6 spans) from ``start``: 1 s pack, 2 s execute, 1 s
    accumulate each, batch 1 packed while batch 0 executes."""
    return [
        Span(request, 0, "pack", 0, start + 0, start + 1),
        Span(request, 0, "execute", 0, start + 1, start + 3),
        Span(request, 1, "pack", 1, start + 1, start + 2),
        Span(request, 0, "accumulate", 0, start + 3, start + 4),
        Span(request, 1, "execute", 1, start + 3, start + 5),
        Span(request, 1, "accumulate", 1, start + 5, start + 6),
    ]


def test_window_collects_only_the_spans_recorded_while_it_is_open():
    tl = Timeline()
    for span in request_spans(0, T0):
        tl.record(span)
    with tl.window() as w:
        for span in request_spans(1, T0 + 100):
            tl.record(span)
        assert len(w.spans) == 6  # live while open
    # Pooled, the 94 s pause between the two calls is idle time, reported as
    # such; eta is that of the calls: P 4, X 8, Q 4, T_ser 16, T_max 8, active 12.
    pooled = tl.summary()
    assert (pooled.requests, pooled.wall_s, pooled.idle_s) == (2, 106.0, 94.0)
    assert pooled.overlap_efficiency == (16 - 12) / (16 - 8)
    tl.record(Span(2, 0, "pack", 0, T0 + 200, T0 + 201))  # after the window closed
    assert w.spans == tuple(request_spans(1, T0 + 100))
    assert len(tl.spans) == 13
    s = w.summary()
    assert (s.scope, s.requests, s.batches, s.wall_s, s.idle_s) == ("window", 1, 2, 6.0, 0.0)
    # P 2, X 4, Q 2: T_ser 8, T_max 4, active 6.
    assert s.overlap_efficiency == (8 - 6) / (8 - 4)
    assert w.report().startswith("overlap report, window: 2 batches in 1 request(s), 6 spans")


def test_windows_nest_and_a_closed_window_is_no_longer_fed():
    tl = Timeline()
    with tl.window() as outer:
        tl.record(Span(0, 0, "pack", 0, 0.0, 1.0))
        with tl.window() as inner:
            tl.record(Span(0, 0, "execute", 0, 1.0, 2.0))
        tl.record(Span(0, 0, "accumulate", 0, 2.0, 3.0))
    assert [s.stage for s in outer.spans] == ["pack", "execute", "accumulate"]
    assert [s.stage for s in inner.spans] == ["execute"]
    assert tl._windows == []  # nothing left registered: a closed window costs nothing


def test_window_is_closed_when_its_block_raises():
    tl = Timeline()
    with pytest.raises(RuntimeError, match="boom"), tl.window() as w:
        raise RuntimeError("boom")
    tl.record(Span(0, 0, "pack", 0, 0.0, 1.0))
    assert w.spans == ()


def test_windows_opened_and_closed_while_threads_record_lose_nothing():
    tl = Timeline(max_spans=None)
    stop = threading.Event()
    per_thread = 3000

    def work(t):
        for i in range(per_thread):
            tl.record(Span(t, i, "pack", t, float(i), float(i + 1)))
        stop.set()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    windows = []
    while not stop.is_set():
        with tl.window() as w:
            windows.append(w)
    for thread in threads:
        thread.join()
    spans = tl.spans
    assert len(spans) == 4 * per_thread
    # Each window holds a contiguous run of the recording order, and all of them
    # together never more than was recorded.
    position = {span: n for n, span in enumerate(spans)}
    for w in windows:
        indices = [position[s] for s in w.spans]
        assert indices == list(range(indices[0], indices[0] + len(indices)) if indices else [])
    assert sum(len(w.spans) for w in windows) <= len(spans)


def test_last_request_and_for_request():
    tl = Timeline([*request_spans(3, T0), *request_spans(4, T0 + 2)])
    last = tl.last_request()
    assert last.spans == tuple(request_spans(4, T0 + 2))
    assert last.summary().scope == "request 4"
    assert tl.for_request(3).report().startswith("overlap report, request 3: 2 batches")
    assert Timeline().last_request().spans == ()


def test_the_default_cap_bounds_memory_and_counts_what_it_drops():
    # 5,000 requests of 3 spans (one batch each): 15,000 spans, 5,000 over the cap.
    tl = Timeline()
    assert tl.max_spans == DEFAULT_MAX_SPANS == 10_000
    for r in range(5000):
        start = T0 + 4 * r
        tl.record(Span(r, 0, "pack", 0, start, start + 1))
        tl.record(Span(r, 0, "execute", 0, start + 1, start + 3))
        tl.record(Span(r, 0, "accumulate", 0, start + 3, start + 4))
    assert len(tl.spans) == 10_000
    assert (tl.spans_recorded, tl.spans_dropped) == (15_000, 5_000)
    assert tl.spans[0] == Span(1666, 0, "accumulate", 0, T0 + 4 * 1666 + 3, T0 + 4 * 1666 + 4)
    s = tl.summary()
    assert (s.spans, s.spans_recorded, s.spans_dropped) == (10_000, 15_000, 5_000)
    assert s.requests == 3334  # of the kept spans: request 1666 only partly
    assert s.format().splitlines()[1] == (
        "  covers only the newest 10000 of 15000 spans recorded "
        "(the oldest 5000 were dropped at the cap)"
    )
    tl.clear()
    assert (tl.spans, tl.spans_recorded, tl.spans_dropped) == ((), 0, 0)


def test_a_window_stays_complete_while_the_cap_drops_old_spans():
    tl = Timeline(max_spans=50)
    for r in range(1200):
        if r == 600:
            window = tl.window()
            w = window.__enter__()
        for span in request_spans(r, T0 + 10 * r):
            tl.record(span)
        if r == 609:
            window.__exit__(None, None, None)
    assert len(tl.spans) == 50
    assert (tl.spans_recorded, tl.spans_dropped) == (7200, 7150)
    # Ten requests, 60 spans: more than the cap of the timeline they came through,
    # and the window has the same cap.
    assert w.max_spans == 50
    assert (w.spans_recorded, w.spans_dropped) == (60, 10)
    assert {s.request for s in w.spans} == set(range(601, 610))
    with tl.window() as w2:
        for r in range(1200, 1205):
            for span in request_spans(r, T0 + 10 * r):
                tl.record(span)
    assert w2.spans == tuple(s for r in range(1200, 1205) for s in request_spans(r, T0 + 10 * r))
    assert w2.summary().spans_dropped == 0


@pytest.mark.parametrize("max_spans", [0, -1, 1.5, True])
def test_max_spans_is_checked(max_spans):
    with pytest.raises(TimelineError, match="max_spans"):
        Timeline(max_spans=max_spans)


@pytest.mark.anyio
async def test_pipeline_window_reports_one_call_and_the_cap_passes_through(rng):
    from npu_pipeline.pipeline import open_pipeline

    a = rng.integers(-128, 128, size=(300, 200), dtype=np.int8)
    b = rng.integers(-128, 128, size=(200, 100), dtype=np.int8)
    expected = a.astype(np.int64) @ b.astype(np.int64)
    async with open_pipeline(device="emulator", host_path=False, max_spans=7) as pipe:
        assert pipe.timeline.max_spans == 7
        for _ in range(4):
            assert np.array_equal(await pipe.matmul(a, b), expected)
        before = pipe.timeline.spans_recorded
        plan = pipe.plan(300, 200, 100)  # the plan the fifth call runs (the cost model may
        with pipe.timeline.window() as w:  # have planned the shape again after a call)
            c = await pipe.matmul(a, b)
        assert np.array_equal(c, expected)
        recorded = pipe.timeline.spans_recorded
    per_call = 3 * len(plan.batches)  # pack, execute, accumulate of every batch
    assert len(w.spans) == min(per_call, 7)
    assert {s.request for s in w.spans} == {5}  # the fifth call alone (ids count from 1)
    assert w.spans_recorded == per_call
    assert recorded == before + per_call
    assert len(pipe.timeline.spans) == 7
    assert pipe.timeline.spans_dropped == recorded - 7
