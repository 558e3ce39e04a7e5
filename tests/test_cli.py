"""The ``npu-pipeline`` command, run in-process: its output states the facts it claims."""

import json

from npu_pipeline import cli


def test_run_verifies_the_result_and_reports_the_overlap(capsys, tmp_path):
    trace = tmp_path / "trace.json"
    assert cli.main(["run", "300", "70", "130", "--device", "emulator", "--trace", str(trace)]) == 0
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


def test_unknown_profile_is_refused_with_the_choices(capsys):
    assert cli.main(["plan", "64", "64", "64", "--profile", "npu9"]) == 2
    assert "npu1" in capsys.readouterr().err


def test_bench_writes_its_table_as_json(tmp_path):
    path = tmp_path / "bench.json"
    assert cli.main(["bench", "packing", "--quick", "--json", str(path)]) == 0
    (result,) = json.loads(path.read_text())
    assert result["rows"] and result["goals"]
    assert all(isinstance(row["value"], float) for row in result["rows"])


def test_run_reports_the_measured_call_alone_and_n_a_for_one_batch(capsys):
    assert cli.main(["run", "64", "64", "64", "--device", "emulator"]) == 0
    out = capsys.readouterr().out
    # The window holds the second call only: one request, not the warm-up's two.
    assert "overlap report, window: 1 batches in 1 request(s), 3 spans" in out
    assert "overlap efficiency eta = n/a (one batch: its stages run one after another)" in out
    assert "predicted n/a (one batch: its stages run one after another)" in out
    assert "eta = 0.000" not in out


def test_demo_keep_up_factor_is_the_smallest_whole_one_above_the_margin():
    from npu_pipeline.contract import load_contract
    from npu_pipeline.planner import plan_batches
    from npu_pipeline.profiles import get_profile

    plan = plan_batches(1500, 512, 2048, profile="npu1")
    factor, ratio = cli._keep_up_factor(plan)
    contract = load_contract(plan.kernel)
    cpu, npu1 = get_profile("cpu"), get_profile("npu1")
    block = plan.batches[0].block
    assert ratio == cpu.run_seconds(contract, block) / npu1.run_seconds(contract, block)
    assert factor - 1 < cli._KEEP_UP_MARGIN * ratio <= factor
    # Slowed by it, npu1's run lasts the margin longer than the emulator's.
    slowed = npu1.slowed(factor).run_seconds(contract, block)
    assert slowed >= cli._KEEP_UP_MARGIN * cpu.run_seconds(contract, block)


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
    assert "the replay ran step 1's batches: True" in replay
    assert "MODELLED overlap report, window: 12 batches in 1 request(s), 36 spans" in replay
    assert "MODELLED predicted vs measured" in replay
    eta = float(re.search(r"MODELLED overlap report.*?eta = (\d\.\d{3}) ", replay, re.S)[1])
    assert 0.0 < eta <= 1.0
