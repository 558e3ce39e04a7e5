"""A pyxrt-compatible emulated AMD Ryzen AI NPU.

Host code written for XRT's Python binding runs on it unchanged::

    try:
        import pyxrt
    except ImportError:
        from npu_pipeline import emulator as pyxrt

It provides the part of pyxrt's API that NPU host code uses (``device``,
``xclbin``, ``uuid``, ``hw_context``, ``kernel``, ``run``, ``runlist``,
``bo``, ``xclBOSyncDirection``, ``ert_cmd_state``, ``xrt_info_device``,
``enumerate_devices``), executes each kernel contract bit-exactly on the CPU
in one device thread per hardware context, and enforces the driver's rules
(BO flags, sync before use, 4 runs in flight, the watchdog, buffer hazards).

Emulator-only extras: :func:`instructions` (the emulated insts.bin),
:func:`write_build` (an emulated build folder), :func:`inject_fault` with :class:`FaultKind` and
:class:`Fault`, ``close()`` on ``device`` and ``hw_context``, and the leak
counters :func:`live_device_threads` and :func:`live_bos`. See docs/emulator.md.
"""

from npu_pipeline.emulator._buffers import bo, live_bos
from npu_pipeline.emulator._device import device, enumerate_devices, hw_context
from npu_pipeline.emulator._enums import (
    XCL_BO_FLAGS_NONE,
    ert_cmd_state,
    xclBOSyncDirection,
    xrt_info_device,
)
from npu_pipeline.emulator._faults import Fault, FaultKind, inject_fault
from npu_pipeline.emulator._instructions import (
    InstructionStream,
    decode,
    instructions,
)
from npu_pipeline.emulator._queue import live_device_threads
from npu_pipeline.emulator._runs import kernel, run, runlist
from npu_pipeline.emulator._xclbin import uuid, write_build, xclbin

__all__ = [
    "XCL_BO_FLAGS_NONE",
    "Fault",
    "FaultKind",
    "InstructionStream",
    "bo",
    "decode",
    "device",
    "enumerate_devices",
    "ert_cmd_state",
    "hw_context",
    "inject_fault",
    "instructions",
    "kernel",
    "live_bos",
    "live_device_threads",
    "run",
    "runlist",
    "uuid",
    "write_build",
    "xclBOSyncDirection",
    "xclbin",
    "xrt_info_device",
]
