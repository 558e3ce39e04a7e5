"""The ``npu-pipeline`` command, run in-process: its output states the facts it claims."""

import json

from npu_pipeline import cli


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


def test_unknown_profile_is_refused_with_the_choices(capsys):
    assert cli.main(["plan", "64", "64", "64", "--profile", "npu9"]) == 2
    assert "npu1" in capsys.readouterr().err


def test_bench_writes_its_table_as_json(tmp_path):
    path = tmp_path / "bench.json"
    assert cli.main(["bench", "packing", "--quick", "--json", str(path)]) == 0
    (result,) = json.loads(path.read_text())
    assert result["rows"] and result["goals"]
    assert all(isinstance(row["value"], float) for row in result["rows"])
