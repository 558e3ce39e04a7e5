"""What device was opened: its generation, read from its name, and :class:`DeviceInfo`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from npu_pipeline.errors import DeviceError, explain

#: Words of the device name (``get_info(name)``: the amdxdna driver's vbnv
#: string) per NPU generation, matched whole and case-blind. The driver reports
#: "NPU Phoenix" (Hawk Point too), "NPU Strix", "NPU Strix Halo", "NPU Krackan 1"
#: and "2", "NPU Gorgon Point 1" to "3", "NPU Kracken" (a typo of early 2025),
#: and "RyzenAI-npu1", "-npu4", "-npu5", "-npu6" (older and in-tree drivers);
#: mlir-aie matches the same words (``NPU_MODELS`` in Xilinx/mlir-aie
#: ``python/utils/hostruntime/xrtruntime/hostruntime.py``;
#: docs/hardware-facts.md#device-names).
GENERATION_NAMES = {
    "phoenix": "npu1",
    "npu1": "npu1",
    "strix": "npu2",
    "krackan": "npu2",
    "kracken": "npu2",
    "gorgon point": "npu2",
    "npu4": "npu2",
    "npu5": "npu2",
    "npu6": "npu2",
}

_WORDS = re.compile(r"\b(" + "|".join(re.escape(w) for w in GENERATION_NAMES) + r")\b")


@dataclass(frozen=True)
class DeviceInfo:
    """Which device an :class:`~npu_pipeline.device.NpuDevice` drives, and why.

    Attributes:
        backend: ``"xrt"`` (pyxrt) or ``"emulator"``.
        name: the device name the device reports (``get_info(name)``).
        generation: ``"npu1"`` or ``"npu2"``: the contract geometry used.
        kernel: the contract's name.
        runs_in_flight: most runs kept in flight at once.
        watchdog_s: the driver watchdog the device enforces, seconds.
        timing: ``"hardware"``, ``"modelled"`` (emulator held to a profile's
            run times) or ``"cpu"`` (emulator, runs take their compute time).
        default_profile: the profile name that describes this device.
        reason: why this backend was chosen.
        runlists: batches of many runs are submitted as ``runlist`` chains.
        runlists_reason: why chains are used or not (see :func:`chaining`).
    """

    backend: str
    name: str
    generation: str
    kernel: str
    runs_in_flight: int
    watchdog_s: float
    timing: str
    default_profile: str
    reason: str
    runlists: bool = False
    runlists_reason: str = ""


def chaining(requested: bool | None, backend: str, has_runlists: bool) -> tuple[bool, str]:
    """Whether to chain a batch's runs into ``runlist`` commands, and why.

    ``requested`` None (the default) chains on the emulator only: on real XRT
    chains have not been shown correct on hardware (docs/device.md#runlist-chains),
    so each run is its own command there unless ``runlists=True`` asks.
    """
    if not has_runlists:
        return False, "this pyxrt has no runlist (XRT before mid-2025)"
    if requested is False:
        return False, "runlists=False was requested"
    if requested:
        return True, "runlists=True was requested"
    if backend == "emulator":
        return True, "the emulator plays runlists as XRT and the driver report them"
    return False, (
        "single runs by default on real XRT: runlist chains have not been shown correct "
        "on hardware yet (pass runlists=True to use them)"
    )


def generation_of(name: str, profile: Any) -> str:
    """The NPU generation of the device called ``name``; else the profile's.

    Raises:
        DeviceError: the name is not known and no profile was given.
    """
    found = _WORDS.search(name.lower())
    if found is not None:
        return GENERATION_NAMES[found.group(1)]
    if profile is not None:
        return profile.generation
    raise DeviceError(
        explain(
            f"cannot tell the NPU generation of device {name!r}",
            f"a name with one of the words {sorted(GENERATION_NAMES)}",
            "Name the generation with a profile: open_pipeline(profile='npu1') for "
            "Phoenix or Hawk Point (XDNA), profile='npu2' for Strix, Krackan or Gorgon "
            "Point (XDNA2); `npu-pipeline ... --profile npu2` on the command line. And "
            "report the name, so it can be added.",
        )
    )
