"""The ``npu-pipeline`` command, run in-process: its output states the facts it claims."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import npu_pipeline as npu_pipeline_package
from npu_pipeline import cli
from npu_pipeline.benchmarks import Goal, Row, Section


def test_run_verifies_the_result_and_reports_the_overlap(capsys, tmp_path):
    trace = tmp_path / "trace.json"
    assert (
        cli.main(["run", "600", "300", "300", "--device", "emulator", "--trace", str(trace)]) == 0
    )
    out = capsys.readouterr().out
    assert "result exact (equals A @ B in int64): True" in out
    assert "overlap report" in out and "predicted vs measured" in out
    assert "MODELLED" in out  # the plan's times are labelled as the model's
    events = json.loads(trace.read_text())["traceEvents"]
    assert {event["cat"] for event in events if event.get("ph") == "X"} == {
        "pack",
        "execute",
        "accumulate",
    }


def test_run_with_the_seed_kernel_checks_the_seed_semantic(capsys):
    args = ["run", "32", "48", "16", "--device", "emulator", "--kernel", "tile16_legacy"]
    assert cli.main(args) == 0
    assert "result equals the seed wrapper's semantic: True" in capsys.readouterr().out


def test_plan_reproduces_the_seed_run_count(capsys):
    args = ["plan", "512", "512", "512", "--kernel", "tile16_legacy", "--profile", "npu1"]
    assert cli.main([*args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert sum(batch["n_runs"] for batch in plan["batches"]) == 32 * 32 * 32


def test_bad_input_is_an_error_message_not_a_traceback(capsys):
    assert cli.main(["run", "0", "5", "5", "--device", "emulator"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npu-pipeline: ShapeError:") and "expected" in err


def test_bench_writes_its_table_as_json(tmp_path):
    path = tmp_path / "bench.json"
    assert cli.main(["bench", "packing", "--quick", "--json", str(path)]) == 0
    (result,) = json.loads(path.read_text())
    assert result["rows"] and result["goals"]
    assert all(isinstance(row["value"], float) for row in result["rows"])


# ---------------------------------------------------------------------------
# What a new user ran into (issue 11): each misuse exits 2 with one line on
# stderr, before any work runs; never a traceback.


def user_env() -> dict[str, str]:
    """The environment a user has: without the suite's calibration switch."""
    return {k: v for k, v in os.environ.items() if k != "NPU_PIPELINE_CALIBRATION"}


def npu_pipeline(*args: str, prelude: str | None = None, cwd: Path | None = None):
    """``python -m npu_pipeline ARGS`` in a fresh interpreter, or, with a
    ``prelude``, the same ``main`` called after that Python code has run."""
    if prelude is None:
        command = [sys.executable, "-m", "npu_pipeline", *args]
    else:
        call = "from npu_pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
        command = [sys.executable, "-c", f"import sys; {prelude}; {call}", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=user_env(), cwd=cwd, timeout=120
    )


def assert_refused(done, *fragments: str) -> None:
    """Exit 2, nothing on stdout (no work ran), one line on stderr naming the problem."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("npu-pipeline: "), done.stderr
    assert "expected" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


def test_plot_without_matplotlib_is_refused_before_the_run(tmp_path):
    done = npu_pipeline(
        "run", "32", "32", "32", "--device", "emulator", "--plot", "g.png",
        prelude="sys.modules['matplotlib'] = None",
        cwd=tmp_path,
    )  # fmt: skip
    assert_refused(done, "UsageError", "matplotlib", 'pip install "npu-pipeline[plot]"')
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("option", ["--json", "--trace", "--plot"])
@pytest.mark.parametrize("where", ["missing directory", "a directory"])
def test_unwritable_output_paths_are_refused_before_any_work(tmp_path, option, where):
    path = tmp_path / "no_such_dir" / "out" if where == "missing directory" else tmp_path
    command = "bench" if option == "--json" else "run"
    shape = [] if command == "bench" else ["32", "32", "32", "--device", "emulator"]
    done = npu_pipeline(command, *shape, option, str(path))
    expected = "does not exist" if where == "missing directory" else "is a directory"
    assert_refused(done, "UsageError", option, expected)
    assert "bench: running" not in done.stderr  # refused before the first section


def test_demo_checks_its_trace_path_before_it_prints_the_plan(tmp_path):
    done = npu_pipeline("demo", "--trace", str(tmp_path / "missing" / "t.json"))
    assert_refused(done, "--trace", "mkdir -p")


def test_a_closed_stdout_ends_quietly():
    """``npu-pipeline plan ... --json | head -1``: the reader stops early."""
    command = [sys.executable, "-m", "npu_pipeline", "plan", "8192", "4096", "8192", "--json"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=user_env()
    )
    assert process.stdout.readline() == b"{\n"
    process.stdout.close()  # the JSON (over 600 kB) is far from written: the pipe fills
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1
    assert err == ""


@pytest.mark.parametrize("factor", ["0", "-3", "nan", "inf"])
def test_a_slowdown_that_is_not_a_positive_number_is_refused(factor):
    assert_refused(
        npu_pipeline("run", "32", "32", "32", "--device", "emulator", f"--slowdown={factor}"),
        "PlanError",
        "slow-down factor",
        "positive finite",
    )


@pytest.mark.parametrize("command", [["plan", "64", "64", "64"], ["run", "64", "64", "64"]])
def test_zero_slots_is_refused_with_the_range(command, capsys):
    assert cli.main([*command, "--slots", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npu-pipeline: PlanError: slots=0") and "between 1 and 4" in err


def test_version_is_the_package_metadata_and_the_module_runs():
    done = npu_pipeline("--version")
    assert done.returncode == 0
    assert done.stdout == f"npu-pipeline {npu_pipeline_package.__version__}\n"
    assert npu_pipeline_package.__version__ == importlib.metadata.version("npu-pipeline")


def fake_section(monkeypatch, name: str, measured: float) -> None:
    """Stand in for ``npu_pipeline.benchmarks.<name>``: one goal, met or not."""
    section = Section("fake", [Row("x", 1.0, "us")], [Goal("x <= 2", measured, 2.0, False)])
    module = types.ModuleType(f"npu_pipeline.benchmarks.{name}")
    module.run = lambda quick: section
    monkeypatch.setitem(sys.modules, module.__name__, module)


@pytest.mark.parametrize(
    ("measured", "check", "status"), [(3.0, True, 1), (3.0, False, 0), (1.0, True, 0)]
)
def test_bench_check_fails_on_a_goal_not_met(monkeypatch, capsys, measured, check, status):
    fake_section(monkeypatch, "pipeline", measured)
    assert cli.main(["bench", "pipeline", *(["--check"] if check else [])]) == status
    captured = capsys.readouterr()
    assert ("NOT MET" in captured.out) is (measured > 2)
    err = captured.err.splitlines()
    assert err[0] == "bench: running pipeline ..."
    assert re.fullmatch(r"bench: pipeline took [0-9.]+ s", err[1])
    if measured > 2:
        assert err[2].startswith("bench: 1 goal(s) NOT MET") and "x <= 2" in err[2]
    else:
        assert len(err) == 2


def test_the_batch_cap_is_named_when_it_binds(capsys):
    assert cli.main(["plan", "50000", "50000", "50000"]) == 2
    err = capsys.readouterr().err
    assert "needs more than 131072 batches" in err
    assert "no block fits the pinned-memory budget" not in err
    budget = int(re.search(r"--budget (\d+)", err)[1])
    assert cli.main(["plan", "50000", "50000", "50000", "--budget", str(budget), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["batches"]) <= 131072


def test_keyboard_interrupt_exits_130_quietly():
    """A real SIGINT, delivered while the command runs."""
    prelude = (
        "import os, signal, time, npu_pipeline.cli as cli; "
        # A terminal's Ctrl-C: a job started in the background inherits SIGINT ignored.
        "signal.signal(signal.SIGINT, signal.default_int_handler); "
        "cli._cmd_plan = lambda args: os.kill(os.getpid(), signal.SIGINT) or time.sleep(30)"
    )
    done = npu_pipeline("plan", "64", "64", "64", prelude=prelude)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "")


@pytest.mark.parametrize(
    "command", [["plan", "64", "64", "64"], ["run", "64", "64", "64"], ["demo"]]
)
def test_an_unknown_profile_is_refused_before_any_work(command, capsys):
    assert cli.main([*command, "--profile", "npu9"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("npu-pipeline: PlanError: no device profile 'npu9'")
    assert "npu1" in captured.err


def test_run_reports_a_host_path_call_as_such(capsys):
    assert cli.main(["run", "64", "64", "64", "--device", "emulator"]) == 0
    out = capsys.readouterr().out
    assert "path      host: an exact host product" in out
    assert "result exact (equals A @ B in int64): True" in out
    assert "overlap report, window: no pipeline stage ran; 1 request(s) computed exactly" in out
    assert "predicted vs measured, host path:" in out


def test_run_reports_the_measured_call_alone(capsys):
    assert cli.main(["run", "600", "300", "300", "--device", "emulator"]) == 0
    out = capsys.readouterr().out
    # The window holds the second call only: one request, not the warm-up's two.
    batches, spans = map(
        int,
        re.search(
            r"overlap report, window: (\d+) batches in 1 request\(s\), (\d+) spans", out
        ).groups(),
    )
    assert spans == 3 * batches
    assert "cost model" in out  # what the spans taught the planner, and the prediction error


def test_a_one_batch_plan_reports_n_a_not_zero():
    from npu_pipeline.planner import plan_batches

    plan = plan_batches(600, 300, 300, profile="cpu", slots=1, latency_budget_s=1.0)
    assert len(plan.batches) == 1
    text = plan.explain()
    assert "overlap efficiency n/a (one batch: its stages run one after another)" in text
    assert "0.00" not in text.split("overlap efficiency")[1].split(";")[0]


def test_demo_keep_up_factor_is_the_smallest_whole_one_above_the_margin():
    from npu_pipeline.calibration import KEEP_UP_MARGIN, keep_up_factor
    from npu_pipeline.contract import load_contract
    from npu_pipeline.planner import plan_batches
    from npu_pipeline.profile_lookup import get_profile

    plan = plan_batches(1500, 512, 2048, profile="npu1")
    factor, ratio = keep_up_factor(plan, get_profile("npu1"))
    contract = load_contract(plan.kernel)
    cpu, npu1 = get_profile("cpu"), get_profile("npu1")
    block = plan.batches[0].block
    assert ratio == cpu.run_seconds(contract, block) / npu1.run_seconds(contract, block)
    assert factor - 1 < KEEP_UP_MARGIN * ratio <= factor
    # Slowed by it, npu1's run lasts the margin longer than the emulator's.
    slowed = npu1.slowed(factor).run_seconds(contract, block)
    assert slowed >= KEEP_UP_MARGIN * cpu.run_seconds(contract, block)


def test_demo_as_a_user_runs_it():
    import os
    import re
    import subprocess
    import sys

    # As a user runs it: calibration on (the conftest turns it off for in-process tests).
    env = {k: v for k, v in os.environ.items() if k != "NPU_PIPELINE_CALIBRATION"}
    done = subprocess.run(
        [sys.executable, "-m", "npu_pipeline.cli", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    step2 = out.split("\n2. ")[1].split("\n3. ")[0]
    replay = out.split("\n3. ")[1].split("\n4. ")[0]
    both = out.split("\n4. ")[1]
    # Both runs computed for real and checked exactly.
    assert out.count("result exact (equals A @ B in int64): True") == 2
    assert re.search(r"this CPU, profile cpu: .*; exact True", both)
    assert re.search(r"npu1 replay x\d+, MODELLED: .*; exact True", both)
    # The emulator's own run: one batch means n/a with the reason, never 0.000.
    batches = int(re.search(r"batches \d+x\d+x\d+ \(m x k x n\) = (\d+)", step2)[1])
    measured = re.search(r"overlap efficiency eta = (.*)", step2)[1]
    if batches == 1:
        assert measured == "n/a (one batch: its stages run one after another)"
    else:
        assert 0.0 <= float(measured.split()[0]) <= 1.0
    # The replay: step 1's batches, every run held to npu1 slowed xF, a real eta.
    factor = int(re.search(r"slowed x(\d+) \(MODELLED device times", replay)[1])
    assert f"profile   npu1 slowed x{factor}\n" in replay
    # The plan the measured call ran: step 1's, or the one made again after the first call.
    ran = int(re.findall(r"batches \d+x\d+x\d+ \(m x k x n\) = (\d+)", replay)[-1])
    assert (
        f"MODELLED overlap report, window: {ran} batches in 1 request(s), {3 * ran} spans" in replay
    )
    assert "MODELLED predicted vs measured" in replay
    eta = float(re.search(r"MODELLED overlap report.*?eta = (\d\.\d{3}) ", replay, re.S)[1])
    assert 0.0 < eta <= 1.0
