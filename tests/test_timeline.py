"""Timeline: spans, overlap metrics, Chrome trace, Gantt chart.

Every schedule here is built by hand with whole-number times, so sums and
differences are exact in binary floating point and the metrics can be
compared with ``==`` against values worked out on paper. Times start at
``T0`` rather than 0 because perf_counter readings never do.
"""

import json
import sys
import threading

import pytest

from npu_pipeline.errors import TimelineError
from npu_pipeline.timeline import (
    STAGES,
    Comparison,
    Span,
    Timeline,
    TimelineSummary,
    overlap_efficiency,
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


@pytest.mark.parametrize("n", [1, 2, 3, 8])
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


def test_idle_gaps_clip_efficiency_to_zero():
    # Serial, then a 10 s gap: raw eta = (8 - 18) / (8 - 4) < 0.
    tl = serial()
    tl.record(Span(0, 2, "execute", 0, T0 + 18, T0 + 18))
    assert tl.wall_s() == 18.0
    assert tl.overlap_efficiency() == 0.0


def test_one_busy_stage_is_defined_as_fully_overlapped():
    tl = timeline(("execute", 0, 0, 0, 2), ("execute", 1, 1, 3, 5))
    assert tl.overlap_efficiency() == 1.0  # T_ser == T_max: nothing to hide
    assert tl.utilisation() == {"pack": 0.0, "execute": 0.8, "accumulate": 0.0}


def test_empty_timeline():
    tl = Timeline()
    assert tl.spans == ()
    assert tl.busy_s() == {"pack": 0.0, "execute": 0.0, "accumulate": 0.0}
    assert tl.wall_s() == 0.0
    assert tl.overlap_efficiency() == 1.0
    assert tl.utilisation() == {"pack": 0.0, "execute": 0.0, "accumulate": 0.0}
    assert tl.report() == "overlap report: no spans recorded"


# --- the pure function the planner reuses -------------------------------------------


@pytest.mark.parametrize(
    ("busy", "wall", "expected"),
    [
        ({"pack": 6, "execute": 9, "accumulate": 6}, 14, 7 / 12),
        ({"pack": 6, "execute": 9, "accumulate": 6}, 9, 1.0),
        ({"pack": 6, "execute": 9, "accumulate": 6}, 21, 0.0),
        ({"pack": 6, "execute": 9, "accumulate": 6}, 30, 0.0),  # idle: clipped up
        ({"pack": 6, "execute": 9, "accumulate": 6}, 5, 1.0),  # inconsistent: clipped down
        ({"execute": 3.0}, 3.0, 1.0),  # missing stages count as 0 s
        ({"pack": 1.0, "execute": 1.0}, 1.5, 0.5),  # tie for the max
        ({}, 0.0, 1.0),
    ],
)
def test_overlap_efficiency_function(busy, wall, expected):
    assert overlap_efficiency(busy, wall) == expected


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
    assert (s.wall_s, s.serial_s, s.bottleneck_s) == (14.0, 22.0, 10.0)
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
        "overlap report: 3 batches in 1 request(s), 9 spans",
        "  stage          busy (ms)   utilisation",
        "  pack               6.000        42.9%",
        "  execute            9.000        64.3%  <- bottleneck",
        "  accumulate         6.000        42.9%",
        "  wall              14.000",
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
    assert trace["displayTimeUnit"] == "ms"


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


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match=r'pip install "npu-pipeline\[plot\]"'):
        serial().plot(tmp_path / "gantt.png")
