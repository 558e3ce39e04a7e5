"""``npu-pipeline doctor``: is this machine ready to run matmuls on its NPU, and if not, why?

Each check is a small function returning a :class:`Finding`: its name, a
status (``ok``, ``warn``, ``fail``, or ``not checked`` with the reason), what
was seen, and the fix. :func:`diagnose` runs them in order and gathers a
:class:`Report`; the command prints it (or its JSON) and exits 1 when a
check failed. docs/troubleshooting.md has one entry per failure a check
names, with the same fix.

The same code runs on the emulated NPU, which can play a failure
(:data:`EMULATED_FAILURES`: ``doctor --emulate low-memlock``), so that every
diagnosis is tested without hardware. Checks that need what the machine has
(its XRT, ``/dev/accel``, the amdxdna module) read the machine even then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from npu_pipeline import emulator, insts
from npu_pipeline.benchmarks import random_operands, shape_name
from npu_pipeline.contract import KernelContract, load_contract
from npu_pipeline.device import known_answer, memlock
from npu_pipeline.device.builds import KernelBuild
from npu_pipeline.errors import DeviceError, NpuPipelineError

#: Finding statuses, best first. ``not checked`` never counts as a pass or a failure.
STATUSES = ("ok", "warn", "fail", "not checked")

#: Where an XRT installation records its version (Xilinx/XRT packaging).
XRT_VERSION_FILE = Path("/opt/xilinx/xrt/version.json")

#: The amdxdna watchdog parameter: ``(sysfs file, unit seconds)``; the
#: out-of-tree driver (amd/xdna-driver ``src/driver/amdxdna``) names it
#: ``timeout_in_sec``, the in-tree one (Linux ``drivers/accel/amdxdna``) ``tdr_timeout_ms``.
WATCHDOG_PARAMETERS = (
    (Path("/sys/module/amdxdna/parameters/timeout_in_sec"), 1.0),
    (Path("/sys/module/amdxdna/parameters/tdr_timeout_ms"), 1e-3),
)

#: ``doctor --emulate NAME``: what the emulated NPU plays, each the failure
#: docs/troubleshooting.md describes under the same name; ``None`` while the
#: emulator cannot play it (the reason is given instead).
EMULATED_FAILURES: dict[str, str | None] = {
    "no-device": None,
    "low-memlock": None,
    "wrong-insts-unit": None,
    "zeros-returned": None,
}

#: The locked-memory limit ``--emulate low-memlock`` plays, bytes: below the
#: default plan's pinned memory, as on a machine left at a small default.
LOW_MEMLOCK_BYTES = 1 << 20


@contextlib.contextmanager
def playing(failure: str | None) -> Iterator[dict[str, Any]]:
    """Inside the block the emulated NPU plays ``failure`` (a name of
    :data:`EMULATED_FAILURES`, or ``None`` for none); yields the device options it needs."""
    host: dict[str, Any] = {}
    if failure == "no-device":
        host = {"devices": 0}
    elif failure == "low-memlock":
        host = {"memlock_bytes": LOW_MEMLOCK_BYTES}
    # The emulated firmware reads n_insts in bytes where the contract says words,
    # or returns zeros whatever it is given.
    options = {"wrong-insts-unit": {"insts_unit": "bytes"}, "zeros-returned": {"zeros": True}}
    with emulator.emulated_host(**host):
        yield dict(options.get(failure or "", {}))


#: Shape of the small verified matmul: odd sizes, so padding is exercised.
CHECK_SHAPE = (97, 130, 75)


@dataclass(frozen=True)
class Finding:
    """The outcome of one check.

    Attributes:
        name: what was checked (``"pyxrt"``, ``"memlock"``, ...).
        status: one of :data:`STATUSES`.
        seen: what the check saw (for ``not checked``: why it was not checked).
        fix: what to do about a ``warn`` or ``fail``; empty otherwise.
        data: the figures behind ``seen``, for the JSON report.
    """

    name: str
    status: str
    seen: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dataclasses.asdict(self)


def not_checked(name: str, why: str) -> Finding:
    """A finding for a check that could not run here, saying why."""
    return Finding(name, "not checked", why)


#: How :func:`format_findings` tags each status.
TAGS = {"ok": "[ ok ]", "warn": "[WARN]", "fail": "[FAIL]", "not checked": "[ -- ]"}


def format_findings(findings: tuple[Finding, ...]) -> list[str]:
    """One line per finding (``[ ok ]``, ``[WARN]``, ``[FAIL]``, ``[ -- ]``), its fix indented."""
    lines = []
    for f in findings:
        seen = f"not checked: {f.seen}" if f.status == "not checked" else f.seen
        lines.append(f"{TAGS[f.status]} {f.name:<14} {seen}")
        if f.fix:
            lines.append(f"{'':>21}fix: {f.fix}")
    return lines


@dataclass(frozen=True)
class Report:
    """Every finding of one ``doctor`` run.

    Attributes:
        device: the ``--device`` asked for.
        emulated_failure: the failure the emulator played, or ``None``.
        findings: the checks' findings, in the order they ran.
    """

    device: str
    emulated_failure: str | None
    findings: tuple[Finding, ...]

    @property
    def exit_code(self) -> int:
        """1 when a check failed, else 0 (warnings and unchecked items do not fail)."""
        return 1 if any(f.status == "fail" for f in self.findings) else 0

    def counts(self) -> dict[str, int]:
        """How many findings have each status."""
        return {s: sum(f.status == s for f in self.findings) for s in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, with the exit code."""
        return {
            "device": self.device,
            "emulated_failure": self.emulated_failure,
            "findings": [f.to_dict() for f in self.findings],
            "counts": self.counts(),
            "exit_code": self.exit_code,
        }

    def format(self) -> str:
        """A title, :func:`format_findings`, and the counts with the exit code."""
        played = f"; the emulator plays {self.emulated_failure!r}" if self.emulated_failure else ""
        lines = [f"npu-pipeline doctor (device {self.device}{played})"]
        lines += format_findings(self.findings)
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        lines.append(f"summary: {counts}; exit {self.exit_code}")
        return "\n".join(lines)


# -- the checks ------------------------------------------------------------------


def _pyxrt_version(module: ModuleType) -> str | None:
    for attribute in ("__version__", "version"):
        value = getattr(module, attribute, None)
        if isinstance(value, str):
            return value
    return None


def xrt_version() -> tuple[str | None, str]:
    """XRT's version, and where it was read: ``version.json``, ``xrt-smi --version``, or why not."""
    try:
        info = json.loads(XRT_VERSION_FILE.read_text())
        version = info.get("BUILD_VERSION") or info.get("version")
        if version:
            return str(version), str(XRT_VERSION_FILE)
    except (OSError, ValueError, AttributeError):
        pass
    smi = shutil.which("xrt-smi") or shutil.which("xrt-smi", path="/opt/xilinx/xrt/bin")
    if smi is None:
        return None, f"no {XRT_VERSION_FILE} and no xrt-smi on PATH"
    try:
        out = subprocess.run(
            [smi, "--version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{smi} --version failed ({error})"
    found = re.search(r"Version\s*:\s*(\S+)", out)
    return (found[1] if found else None), f"{smi} --version"


def check_pyxrt(device: str, module: ModuleType | None, import_error: str) -> Finding:
    """Whether ``pyxrt`` imports, its and XRT's version, and whether it has ``runlist``.

    ``module`` is the imported pyxrt (``None`` when it did not import:
    ``import_error`` says why). Without it, ``device="xrt"`` fails; otherwise
    the emulated NPU is used, which is worth a warning.
    """
    version, where = xrt_version()
    data: dict[str, Any] = {"xrt_version": version, "xrt_version_source": where}
    if module is None:
        fix = (
            "Install XRT and the amdxdna driver, then `source /opt/xilinx/xrt/setup.sh` "
            "(docs/hardware.md#installing-xrt-and-the-amdxdna-driver); or use the emulator."
        )
        status = "fail" if device == "xrt" else "warn"
        seen = f"pyxrt is not importable ({import_error}); the checks below use the emulated NPU"
        return Finding("pyxrt", status, seen, fix, {**data, "importable": False})
    runlist = hasattr(module, "runlist")
    data.update(
        importable=True,
        pyxrt_version=_pyxrt_version(module),
        pyxrt_file=getattr(module, "__file__", None),
        runlist=runlist,
    )
    seen = (
        f"pyxrt {data['pyxrt_version'] or '(no version attribute)'} from {data['pyxrt_file']}; "
        f"XRT {version or 'version unknown'} ({where}); "
        + ("runlist present" if runlist else "no runlist (older XRT: one command per run)")
    )
    return Finding("pyxrt", "ok", seen, "", data)


def check_accel_nodes(required: bool, pattern: str = "/dev/accel/accel*") -> Finding:
    """Whether the NPU's device nodes exist and this user can read and write them.

    Missing or inaccessible nodes fail when a real device is ``required``, else warn.
    """
    nodes = sorted(glob.glob(pattern))
    bad = "fail" if required else "warn"
    if not nodes:
        return Finding(
            "/dev/accel",
            bad,
            f"no {pattern}: no NPU driver is bound (amdxdna not loaded, or no NPU)",
            "Install and load the amdxdna driver (docs/troubleshooting.md#no-device-or-no-pyxrt).",
        )
    access = {n: os.access(n, os.R_OK | os.W_OK) for n in nodes}
    denied = [n for n, ok in access.items() if not ok]
    if denied:
        return Finding(
            "/dev/accel",
            bad,
            f"{', '.join(denied)} not readable and writable by this user",
            "Add your user to the group that owns the node (often 'render': "
            "sudo usermod -aG render $USER, then log in again).",
            {"nodes": access},
        )
    return Finding(
        "/dev/accel", "ok", f"{', '.join(nodes)} readable and writable", "", {"nodes": access}
    )


def check_device_name(
    name: str | None, error: str | None, emulated: bool = False
) -> tuple[Finding, str | None]:
    """The device's name (the driver's vbnv) and the NPU generation read from it;
    ``emulated`` says the name is the emulated NPU's.

    Returns the finding and the generation (``None`` when it cannot be told).
    """
    from npu_pipeline.device.discovery import generation_of

    if name is None:
        return (
            Finding(
                "device",
                "fail",
                f"no NPU could be opened ({error})",
                "Check the driver (docs/troubleshooting.md#no-device-or-no-pyxrt).",
            ),
            None,
        )
    try:
        generation = generation_of(name, None)
    except NpuPipelineError:
        return (
            Finding(
                "device",
                "fail",
                f"device name {name!r}: its NPU generation is unknown",
                "Pass profile='npu1' or 'npu2' to open_pipeline, and report the name "
                "(docs/troubleshooting.md#unknown-device-name).",
                {"name": name},
            ),
            None,
        )
    where = " (the emulated NPU)" if emulated else ""
    return (
        Finding(
            "device",
            "ok",
            f"{name!r}{where}: generation {generation}",
            "",
            {"name": name, "generation": generation},
        ),
        generation,
    )


def check_memlock(limit: int | None, needed: int, source: str) -> Finding:
    """``RLIMIT_MEMLOCK`` (``limit`` bytes, ``None`` unlimited) against ``needed`` bytes.

    NPU buffers are pinned host memory that counts against the limit; the
    default plan pins up to the profile's memory budget.
    """
    data = {"limit_bytes": limit, "needed_bytes": needed, "source": source}
    shown = "unlimited" if limit is None else f"{limit / 2**20:g} MiB"
    seen = f"RLIMIT_MEMLOCK {shown} ({source}); the default plan pins {needed / 2**20:g} MiB"
    if limit is not None and limit < needed:
        fix = f"{memlock.RAISE_LIMIT} (docs/troubleshooting.md#low-memlock)"
        return Finding("memlock", "fail", seen, fix, data)
    return Finding("memlock", "ok", seen, "", data)


def check_watchdog(
    expected_s: float, parameters: tuple[tuple[Path, float], ...] = WATCHDOG_PARAMETERS
) -> Finding:
    """The amdxdna watchdog period, read from the module's parameter, against the profile's."""
    for path, unit in parameters:
        try:
            value = float(path.read_text().strip()) * unit
        except (OSError, ValueError):
            continue
        data = {"parameter": str(path), "watchdog_s": value, "profile_watchdog_s": expected_s}
        seen = f"{path.name} = {path.read_text().strip()} ({value:g} s)"
        if value == 0:
            return Finding(
                "watchdog",
                "warn",
                seen + ": the watchdog is off, a hung run blocks for ever",
                "Reload amdxdna with the default (docs/troubleshooting.md#watchdog-or-tdr).",
                data,
            )
        if value < expected_s:
            return Finding(
                "watchdog",
                "warn",
                seen + f", shorter than the profile's {expected_s:g} s",
                f"Pass a profile with watchdog_s={value:g}, so the planner keeps runs under it.",
                data,
            )
        return Finding("watchdog", "ok", seen, "", data)
    names = " or ".join(str(p) for p, _ in parameters)
    return not_checked("watchdog", f"{names} not readable (amdxdna not loaded here)")


def build_dir(contract: KernelContract, generation: str) -> Path:
    """The folder where ``contract``'s build files for ``generation`` are looked for
    (``$NPU_PIPELINE_BUILD_DIR``, else the contract's layout: docs/device.md#kernel-builds)."""
    folder = KernelBuild.locate(contract, generation, emulated=False).folder
    assert folder is not None  # only the emulator's build has none
    return folder


def find_builds(contract: KernelContract, generation: str) -> dict[tuple[int, int, int], Path]:
    """The instruction files of ``contract``'s build folder, by block shape."""
    pattern = re.escape(contract.instr_file)
    for axis in "mkn":
        pattern = pattern.replace(re.escape("{" + axis + "}"), r"(\d+)")
    found = {}
    for path in sorted(build_dir(contract, generation).glob("*")):
        match = re.fullmatch(pattern, path.name)
        if match:
            found[tuple(int(g) for g in match.groups())] = path
    return found


def check_builds(
    contract: KernelContract, generation: str, module: ModuleType | None, emulated: bool
) -> Finding:
    """The kernel builds found: the xclbin and one instruction file per block, and the
    xclbin's argument count against the contract's."""
    if emulated:
        return not_checked(
            "builds", "the emulated NPU makes its xclbin and instructions from the contract"
        )
    folder = build_dir(contract, generation)
    xclbin_path = folder / contract.xclbin
    blocks = find_builds(contract, generation)
    data: dict[str, Any] = {"folder": str(folder), "blocks": [list(b) for b in blocks]}
    build_fix = "Build the kernel (docs/hardware.md#building-the-kernels)."
    if not xclbin_path.is_file():
        return Finding("builds", "fail", f"no {xclbin_path}", build_fix, data)
    if not blocks:
        return Finding("builds", "fail", f"no {contract.instr_file} in {folder}", build_fix, data)
    problems = []
    for block, path in blocks.items():
        try:
            contract.check_block(block, generation)
        except NpuPipelineError as error:
            problems.append(f"{shape_name(block)}: {error}")
        header = insts.header_problem(path.read_bytes(), generation)
        if header:
            problems.append(f"{path.name}: {header}")
    args = None
    if module is not None:
        try:
            kernels = module.xclbin(str(xclbin_path)).get_kernels()
            args = {k.get_name(): k.get_num_args() for k in kernels}.get(contract.kernel_name)
        except RuntimeError as error:
            problems.append(f"{xclbin_path} does not load ({error})")
    data["xclbin_arguments"] = args
    if args is not None and args != len(contract.arguments):
        problems.append(
            f"kernel {contract.kernel_name} takes {args} arguments, the contract names "
            f"{len(contract.arguments)} ({', '.join(contract.arguments)})"
        )
    seen = f"{xclbin_path.name} and {len(blocks)} instruction file(s) in {folder}"
    if problems:
        return Finding("builds", "fail", seen + "; " + "; ".join(problems), build_fix, data)
    return Finding("builds", "ok", seen, "", data)


def check_known_answer(open_options: dict[str, Any], contract: KernelContract) -> Finding:
    """The known-answer run every ``NpuDevice.open`` makes (one block of known
    operands, compared exactly); when it fails, the same with the other
    instruction-count unit, to say which one this firmware expects
    (docs/troubleshooting.md#wrong-instruction-count-unit)."""
    from npu_pipeline.device import NpuDevice

    try:
        with NpuDevice.open(contract, **open_options) as npu:
            block = known_answer.block_of(contract, npu.info.generation)
    except DeviceError as error:
        other = known_answer.try_other_count_unit(contract, **open_options)
        seen = f"{error}".split(";")[0]
        data = {"count_unit": contract.instr_count_unit, "other_unit_exact": other}
        if other is not None:
            return Finding(
                "known answer",
                "fail",
                f"{seen} with the instruction count in {contract.instr_count_unit}; "
                f"exact in {other}",
                f'Set "count_unit": "{other}" under "instructions" in {contract.source} '
                "(docs/troubleshooting.md#wrong-instruction-count-unit).",
                data,
            )
        return Finding(
            "known answer",
            "fail",
            f"{seen}; in the other unit too",
            "Rebuild the xclbin and the instruction files from one design "
            "(docs/troubleshooting.md#zeros-returned).",
            data,
        )
    except NpuPipelineError as error:
        return Finding(
            "known answer",
            "fail",
            f"the device did not open: {type(error).__name__}: {error}",
            "See the builds line (docs/hardware.md#building-the-kernels).",
        )
    return Finding(
        "known answer",
        "ok",
        f"block {shape_name(block)} exact (the run every open makes)",
        "",
        {"count_unit": contract.instr_count_unit},
    )


async def _verified_matmul(shape: tuple[int, int, int], **options: Any) -> tuple[bool, str]:
    from npu_pipeline.pipeline import open_pipeline

    a, b = random_operands(np.random.default_rng(7), *shape)
    async with open_pipeline(**options) as pipe:
        c = await pipe.matmul(a, b, out_dtype=np.int32)
        name = pipe.device_info.name
    ok = np.array_equal(c.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))
    return ok, name


def check_matmul(options: dict[str, Any], shape: tuple[int, int, int] = CHECK_SHAPE) -> Finding:
    """A small matmul through ``open_pipeline(**options)``, compared exactly with int64."""
    import anyio

    label = shape_name(shape)
    try:
        ok, name = anyio.run(lambda: _verified_matmul(shape, **options))
    except NpuPipelineError as error:
        return Finding(
            "matmul",
            "fail",
            f"{label} failed: {type(error).__name__}: {error}",
            "See the findings above and docs/troubleshooting.md.",
        )
    if not ok:
        return Finding(
            "matmul",
            "fail",
            f"{label} on {name!r} is NOT exact",
            "See docs/troubleshooting.md#zeros-returned.",
        )
    return Finding("matmul", "ok", f"{label} on {name!r} exact (equals A @ B in int64)")


# -- running them ------------------------------------------------------------------


def import_pyxrt() -> tuple[ModuleType | None, str]:
    """The real ``pyxrt`` module, or ``None`` and why it does not import."""
    try:
        import pyxrt  # type: ignore[import-not-found]
    except ImportError as error:
        return None, str(error)
    return pyxrt, ""


@dataclass(frozen=True)
class DeviceFacts:
    """What opening device 0 told: its name and the locked-memory limit its BOs count against.

    Attributes:
        name: the name the driver reports (``get_info(name)``), or ``None``.
        error: why no device could be opened, or ``None``.
        memlock_bytes: the limit, bytes (``None``: unlimited).
        memlock_source: where the limit was read.
    """

    name: str | None
    error: str | None
    memlock_bytes: int | None
    memlock_source: str


def read_device(module: ModuleType | None, options: dict[str, Any]) -> DeviceFacts:
    """Open device 0 of ``module`` (pyxrt, or the emulator with ``options``) and read it.

    The limit is the process's ``RLIMIT_MEMLOCK`` on real XRT, the emulated
    device's (``memlock_limit()``) on the emulator.
    """
    limit, source = emulator.process_memlock_bytes(), "this process's RLIMIT_MEMLOCK"
    if module is None:
        return DeviceFacts(None, "no pyxrt", limit, source)
    try:
        if module.enumerate_devices() < 1:
            return DeviceFacts(None, "enumerate_devices() found no device", limit, source)
        dev = module.device(0, **options) if module is emulator else module.device(0)
        try:
            name = str(dev.get_info(module.xrt_info_device.name))
            if module is emulator:
                limit, source = dev.memlock_limit(), "the emulated device's limit"
        finally:
            if module is emulator:
                dev.close()
    except RuntimeError as error:
        return DeviceFacts(None, f"{type(error).__name__}: {error}", limit, source)
    return DeviceFacts(name, None, limit, source)


def diagnose(
    device: str = "auto", emulate: str | None = None, kernel: str = "gemm_i8_i32"
) -> Report:
    """Run every check for ``device`` (``auto``, ``emulator`` or ``xrt``) and gather the report.

    Args:
        device: which device the checks open, as ``open_pipeline(device=...)``.
        emulate: a name of :data:`EMULATED_FAILURES`: the emulated NPU plays it
            (implies the emulator).
        kernel: the kernel contract whose builds and runs are checked.
    """

    contract = load_contract(kernel)
    pyxrt, import_error = import_pyxrt()
    findings = [check_pyxrt(device, pyxrt, import_error)]
    if emulate is not None:
        why = EMULATED_FAILURES[emulate]
        if why is not None:
            findings.append(not_checked(f"emulate {emulate}", why))
            return Report(device, emulate, tuple(findings))
        device = "emulator"
    with playing(emulate) as options:
        findings += _device_checks(device, contract, pyxrt is None, options)
    return Report(device, emulate, tuple(findings))


def _device_checks(
    device: str, contract: KernelContract, no_pyxrt: bool, options: dict[str, Any]
) -> list[Finding]:
    """The checks after ``pyxrt``'s: the device nodes, the device, its limits, builds, runs."""
    from npu_pipeline.profile_lookup import get_profile

    emulated = device == "emulator" or (device == "auto" and no_pyxrt)
    module = emulator if emulated else import_pyxrt()[0]
    findings = [check_accel_nodes(required=not emulated)]
    facts = read_device(module, options)
    device_finding, generation = check_device_name(facts.name, facts.error, emulated)
    findings.append(device_finding)
    profile = get_profile(generation or "npu1")
    needed = profile.memory_budget_bytes + memlock.INSTRUCTION_RESERVE_BYTES
    findings.append(check_memlock(facts.memlock_bytes, needed, facts.memlock_source))
    findings.append(check_watchdog(profile.watchdog_s))
    findings.append(check_builds(contract, generation or "npu1", module, emulated))
    if generation is None:
        findings.append(not_checked("known answer", "no device was opened"))
        findings.append(not_checked("matmul", "no device was opened"))
        return findings
    backend = "emulator" if emulated else "xrt"
    findings.append(check_known_answer({"device": backend, **options}, contract))
    findings.append(
        check_matmul(
            {"device": backend, "kernel": contract, "device_options": options, "host_path": False}
        )
    )
    return findings
