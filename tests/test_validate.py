"""``npu-pipeline validate``: the acceptance run as a user runs it, and its parts."""

from __future__ import annotations

import json

import anyio
import numpy as np
import pytest
from test_doctor import run_command

from npu_pipeline import validate
from npu_pipeline.pipeline import open_pipeline
from npu_pipeline.planner import plan_batches
from npu_pipeline.profile_lookup import get_profile


def test_quick_validate_writes_a_report_and_a_profile_the_library_takes(tmp_path):
    report_path, profile_path = tmp_path / "report.json", tmp_path / "profile.json"
    done = run_command(
        "validate", "--quick", "--json", str(report_path), "--profile-out", str(profile_path)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "EMULATED" in done.stdout and "measured on the NPU" not in done.stdout
    report = json.loads(report_path.read_text())
    assert report["device"]["backend"] == "emulator"
    assert report["label"].startswith("EMULATED")
    assert len(report["exactness"]) == 2 * len(validate.QUICK_GRID)
    assert all(row["exact"] for row in report["exactness"])
    assert {row["dtype"] for row in report["exactness"]} == {"int32", "int8"}
    for figure in ("single", "queued", "chained"):
        assert 0 < report["dispatch"][figure] < 1.0
    assert set(report["stages"]["ratio"]) == {"pack", "execute", "accumulate"}
    assert report["stages"]["exact"] is True
    assert report["versions"]["npu_pipeline"] and report["exit_code"] == 0
    assert "[ ok ] profile file" in done.stdout
    profile = get_profile(profile_path)
    assert profile.name.endswith("validated")
    assert profile.dispatch_s == pytest.approx(report["dispatch"]["single"])
    assert "npu-pipeline validate" in profile.source("dispatch_s")
    plan = plan_batches(512, 512, 512, profile=str(profile_path), host_path=False)
    assert plan.profile == profile.name and plan.batches
    a, b = np.ones((40, 50), np.int8), np.full((50, 30), -3, np.int8)

    async def through_the_file() -> np.ndarray:
        async with open_pipeline(device="emulator", profile=str(profile_path)) as pipe:
            assert pipe.profile == profile
            return await pipe.matmul(a, b)

    assert np.array_equal(anyio.run(through_the_file), a.astype(np.int64) @ b.astype(np.int64))


def test_labels_never_call_emulated_figures_npu_timings():
    assert validate.timing_label("hardware") == "measured on the NPU"
    assert validate.timing_label("cpu").startswith("EMULATED")
    assert validate.timing_label("modelled").startswith("MODELLED")


def test_calibrated_profile_takes_the_measured_figures():
    base = get_profile("npu1")
    dispatch = {"single": 300e-6, "queued": 400e-6}
    stages = {"profile_ratio": {"pack": 2.0, "execute": 0.5, "accumulate": 1.0}}
    profile = validate.calibrated_profile(base, dispatch, stages, "a test device")
    assert profile.dispatch_s == 300e-6
    assert profile.queued_dispatch_s == 300e-6  # never above a lone run's
    assert profile.pack_bytes_per_s == pytest.approx(base.pack_bytes_per_s / 2)
    assert profile.accumulate_bytes_per_s == base.accumulate_bytes_per_s
    for (name, rate), (_, before) in zip(profile.core_ops_per_s, base.core_ops_per_s, strict=True):
        assert rate == pytest.approx(2 * before), name
    assert "a test device" in profile.source("pack_bytes_per_s")
    assert profile.source("runs_in_flight") == base.source("runs_in_flight")


class _WrongPipe:
    """A pipeline whose results are off by one in one element."""

    async def matmul(self, a, b, *, out_dtype=np.int32, shift=0, rounding=None):
        exact = a.astype(np.int64) @ b.astype(np.int64)
        if out_dtype == np.int8:
            from npu_pipeline.reference import srs

            return srs(exact, shift, rounding, "saturate")
        wrong = exact.astype(np.int32)
        wrong.flat[0] += 1
        return wrong


@pytest.mark.anyio
async def test_a_wrong_element_fails_exactness():
    rows = await validate.check_exactness(_WrongPipe(), ((3, 5, 7),))
    assert [(r["dtype"], r["exact"]) for r in rows] == [("int32", False), ("int8", True)]
    stages = {"exact": True, "shape": [1, 1, 1], "profile_ratio": {"pack": 1.0}}
    findings = validate._findings(rows, {"single": 1.0, "queued": 1.0}, stages, "test")
    assert findings[0].status == "fail" and "3x5x7 int32" in findings[0].seen


def test_an_unwritable_output_path_is_refused_before_any_run(tmp_path):
    done = run_command("validate", "--quick", "--profile-out", str(tmp_path / "no" / "p.json"))
    assert done.returncode == 2 and done.stdout == ""
    assert "--profile-out" in done.stderr and "does not exist" in done.stderr
