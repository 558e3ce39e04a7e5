"""``npu-pipeline doctor``: run as a user runs it, and each check on its own."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from npu_pipeline import doctor, emulator
from npu_pipeline.contract import load_contract

ROOT = Path(__file__).resolve().parents[1]


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m npu_pipeline ARGS`` with the user's environment (calibration on)."""
    env = {k: v for k, v in os.environ.items() if k != "NPU_PIPELINE_CALIBRATION"}
    return subprocess.run(
        [sys.executable, "-m", "npu_pipeline", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def run_doctor(*args: str) -> subprocess.CompletedProcess[str]:
    """``npu-pipeline doctor ARGS`` as a user runs it."""
    return run_command("doctor", *args)


def test_doctor_on_this_machine_passes_on_the_emulator_and_says_so():
    done = run_doctor()
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "[ ok ] known answer   block 256x64x256 exact" in out
    assert "[ ok ] matmul" in out and "exact (equals A @ B in int64)" in out
    assert "(the emulated NPU)" in out  # the device it checked is named as the emulator
    assert out.rstrip().endswith("exit 0")


def test_doctor_json_lists_every_check_with_a_status():
    done = run_doctor("--json", "--device", "emulator")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    names = [f["name"] for f in report["findings"]]
    assert names == [
        "pyxrt",
        "/dev/accel",
        "device",
        "memlock",
        "watchdog",
        "builds",
        "known answer",
        "matmul",
    ]
    assert {f["status"] for f in report["findings"]} <= set(doctor.STATUSES)
    assert report["exit_code"] == 0
    by_name = {f["name"]: f for f in report["findings"]}
    assert by_name["device"]["data"]["generation"] == "npu1"
    assert by_name["builds"]["status"] == "not checked"  # the emulator reads no build files


def test_device_xrt_without_pyxrt_fails_with_the_install_fix():
    pyxrt, _ = doctor.import_pyxrt()
    if pyxrt is not None:
        pytest.skip("pyxrt is installed here")
    done = run_doctor("--device", "xrt")
    assert done.returncode == 1
    assert "[FAIL] pyxrt" in done.stdout and "source /opt/xilinx/xrt/setup.sh" in done.stdout


# -- the checks, one by one ------------------------------------------------------------


def test_memlock_below_the_plan_fails_with_the_three_ways_to_raise_it():
    low = doctor.check_memlock(1 << 20, 4 << 20, "test")
    assert low.status == "fail"
    for way in ("limits.conf", "LimitMEMLOCK", "ulimit -l"):
        assert way in low.fix
    assert doctor.check_memlock(None, 4 << 20, "test").status == "ok"
    assert doctor.check_memlock(8 << 20, 4 << 20, "test").status == "ok"


def test_watchdog_parameter_is_read_in_its_unit(tmp_path):
    seconds, millis = tmp_path / "timeout_in_sec", tmp_path / "tdr_timeout_ms"
    parameters = ((seconds, 1.0), (millis, 1e-3))
    assert doctor.check_watchdog(2.0, parameters).status == "not checked"
    millis.write_text("2000\n")
    found = doctor.check_watchdog(2.0, parameters)
    assert (found.status, found.data["watchdog_s"]) == ("ok", 2.0)
    millis.write_text("500\n")
    assert doctor.check_watchdog(2.0, parameters).status == "warn"
    seconds.write_text("0\n")  # the out-of-tree name is read first
    off = doctor.check_watchdog(2.0, parameters)
    assert off.status == "warn" and "off" in off.seen


def test_accel_nodes_missing_or_not_writable(tmp_path, monkeypatch):
    pattern = str(tmp_path / "accel*")
    assert doctor.check_accel_nodes(required=True, pattern=pattern).status == "fail"
    assert doctor.check_accel_nodes(required=False, pattern=pattern).status == "warn"
    node = tmp_path / "accel0"
    node.write_text("")
    assert doctor.check_accel_nodes(required=True, pattern=pattern).status == "ok"
    # Permissions as a user without the node's group sees them (root passes any mode).
    monkeypatch.setattr(doctor.os, "access", lambda path, mode: False)
    denied = doctor.check_accel_nodes(required=True, pattern=pattern)
    assert denied.status == "fail" and "render" in denied.fix


@pytest.mark.parametrize(
    ("name", "generation"),
    [("NPU Phoenix", "npu1"), ("NPU Strix", "npu2"), ("NPU Phoenix (emulated)", "npu1")],
)
def test_device_name_gives_the_generation(name, generation):
    finding, found = doctor.check_device_name(name, None)
    assert (finding.status, found) == ("ok", generation)


def test_unknown_device_name_fails_and_says_which_profile_to_pass():
    finding, generation = doctor.check_device_name("NPU Future 9", None)
    assert generation is None and finding.status == "fail"
    assert "profile='npu1'" in finding.fix
    finding, _ = doctor.check_device_name(None, "enumerate_devices() found no device")
    assert finding.status == "fail" and "found no device" in finding.seen


def test_builds_need_the_xclbin_and_instruction_files_with_their_headers(tmp_path, monkeypatch):
    contract = load_contract("gemm_i8_i32")
    folder = tmp_path / "build"
    monkeypatch.setenv("NPU_PIPELINE_BUILD_DIR", str(folder))
    folder.mkdir()
    missing = doctor.check_builds(contract, "npu1", emulator, emulated=False)
    assert missing.status == "fail" and "final.xclbin" in missing.seen
    emulator.write_build(contract, folder, "npu1", [(256, 64, 256)])
    # The emulator's xclbin stands in for pyxrt's: it reports the contract's 6 arguments.
    found = doctor.check_builds(contract, "npu1", emulator, emulated=False)
    assert found.status == "ok", found.seen
    assert found.data["blocks"] == [[256, 64, 256]] and found.data["xclbin_arguments"] == 6
    # An npu1 stream is refused by its header on npu2.
    wrong = doctor.check_builds(contract, "npu2", emulator, emulated=False)
    assert wrong.status == "fail" and "insts_256x64x256.bin" in wrong.seen
    (folder / "insts_256x64x512.bin").write_bytes(b"\0" * 8)  # cut short
    short = doctor.check_builds(contract, "npu1", emulator, emulated=False)
    assert short.status == "fail" and "insts_256x64x512.bin" in short.seen


def test_known_answer_on_the_emulator_is_exact():
    found = doctor.check_known_answer({"device": "emulator"}, load_contract("gemm_i8_i32"))
    assert found.status == "ok", found.seen


def test_report_exit_code_and_format():
    ok = doctor.Finding("a", "ok", "fine")
    skipped = doctor.not_checked("b", "no module here")
    failed = doctor.Finding("c", "fail", "broken", "mend it")
    assert doctor.Report("auto", None, (ok, skipped)).exit_code == 0
    report = doctor.Report("auto", None, (ok, skipped, failed))
    assert report.exit_code == 1
    text = report.format()
    assert "[ -- ] b              not checked: no module here" in text
    assert "fix: mend it" in text and text.endswith("exit 1")
    assert report.to_dict()["counts"] == {"ok": 1, "warn": 0, "fail": 1, "not checked": 1}
    assert dataclasses.asdict(failed)["fix"] == "mend it"


# -- each failure the emulator plays gives its documented diagnosis ----------------------

TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text()


def documented(failure: str) -> tuple[str, list[str]]:
    """The troubleshooting entry that says the emulator plays ``failure``: its anchor,
    and the pieces (between ``...``) of the first ``[FAIL]`` line its doctor bullet shows."""
    for entry in TROUBLESHOOTING.split("\n## ")[1:]:
        if f"*Emulated: `--emulate {failure}`.*" in entry:
            title = entry.splitlines()[0]
            anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
            doctor_bullet = entry[entry.index("- **doctor.**") :]
            line = re.search(r"`(\[FAIL\][^`]*)`", doctor_bullet)[1]
            return anchor, [" ".join(piece.split()) for piece in line.split("...") if piece]
    raise AssertionError(f"docs/troubleshooting.md has no entry for --emulate {failure}")


PLAYED = [name for name, why in doctor.EMULATED_FAILURES.items() if why is None]


@pytest.mark.parametrize("failure", PLAYED)
def test_each_played_failure_prints_its_documented_diagnosis_and_fix(failure):
    anchor, pieces = documented(failure)
    done = run_doctor("--emulate", failure)
    assert done.returncode == 1, done.stdout + done.stderr
    printed = " ".join(done.stdout.split())
    for piece in pieces:
        assert piece in printed, (piece, done.stdout)
    report = json.loads(run_doctor("--emulate", failure, "--json").stdout)
    failed = [f for f in report["findings"] if f["status"] == "fail"]
    assert f"docs/troubleshooting.md#{anchor}" in failed[0]["fix"]
