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
(BO flags, sync before use, 4 runs in flight, the device-wide watchdog, a
context out of step after a failed run, runlists as XRT reports them, buffer
hazards).

Emulator-only extras: :func:`instructions` (the emulated insts.bin),
:func:`write_build` (an emulated build folder), :func:`inject_fault` with
:class:`FaultKind` and :class:`Fault`, ``close()`` and ``memlock_limit()`` on
``device``, ``close()`` and ``out_of_step`` on ``hw_context``,
:func:`emulated_host` (no device, a low memlock limit, the GIL mode), the
device names :data:`VBNV_NAMES`, and the counters :func:`live_device_threads`,
:func:`live_bos` and :func:`locked_bytes`. See docs/emulator.md.
"""

from npu_pipeline.emulator._buffers import POISON, bo, live_bos
from npu_pipeline.emulator._device import (
    VBNV_NAMES,
    EmulatedHost,
    device,
    emulated_host,
    enumerate_devices,
    hw_context,
    process_memlock_bytes,
)
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
from npu_pipeline.emulator._pinned import locked_bytes
from npu_pipeline.emulator._queue import live_device_threads
from npu_pipeline.emulator._runs import kernel, run, runlist
from npu_pipeline.emulator._xclbin import uuid, write_build, xclbin

__all__ = [
    "POISON",
    "VBNV_NAMES",
    "XCL_BO_FLAGS_NONE",
    "EmulatedHost",
    "Fault",
    "FaultKind",
    "InstructionStream",
    "bo",
    "decode",
    "device",
    "emulated_host",
    "enumerate_devices",
    "ert_cmd_state",
    "hw_context",
    "inject_fault",
    "instructions",
    "kernel",
    "live_bos",
    "live_device_threads",
    "locked_bytes",
    "process_memlock_bytes",
    "run",
    "runlist",
    "uuid",
    "write_build",
    "xclBOSyncDirection",
    "xclbin",
    "xrt_info_device",
]
