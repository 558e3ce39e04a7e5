"""The device layer: the only library code that calls pyxrt (real XRT, or the emulated NPU).

One :class:`NpuDevice` opens the device, the xclbin, the hardware context and
the kernel once (doing it per call costs about 95 ms,
docs/hardware-facts.md#setup-and-dispatch-costs) and then serves batches:

- :meth:`NpuDevice.allocate_slot` makes a :class:`Slot`: one ``host_only`` BO
  per contract buffer in the kernel's group for it, with numpy views over
  ``bo.map()`` so the packer writes in place;
- :meth:`NpuDevice.start` syncs the used input bytes to the device (one sync
  per buffer) and starts the batch's run(s); a batch of many runs (tile pairs
  of the ``tile16_legacy`` contract) uses a sub-buffer per run;
- :meth:`NpuDevice.wait`, meant for a worker thread, waits in 2 ms slices
  (pyxrt holds the GIL inside ``wait``), keeps up to ``runs_in_flight``
  commands in flight across the device, then syncs the used output bytes
  back. A run that does not complete raises :class:`DeviceError` naming its
  state, batch and request.

The parts, one job each:

============================  ==============================================
``xrt``                       the one module that speaks pyxrt: open, buffers, copies, runs
``discovery``                 :class:`DeviceInfo`; the NPU generation from the device's name
``builds``                    where a kernel's build files are, their checks; instruction streams
``known_answer``              the known-answer run every open makes
``slots``                     :class:`Slot`; slot BOs and the runs made over them
``submission``                :class:`Submission`, :class:`Completion`
``commands``                  one run or one runlist chain in flight, and polling it
``queue``                     the commands in flight across the device: fill, reap, pace
``faults``                    failed pyxrt calls and runs as :class:`DeviceError`
``npu``                       :class:`NpuDevice`, the facade over all of them
============================  ==============================================

Nothing here was run on an NPU: the real-XRT path follows pyxrt's binding
and the mlir-aie host code only (docs/device.md).
"""

from npu_pipeline.device.discovery import DeviceInfo
from npu_pipeline.device.npu import (
    DEFAULT_WATCHDOG_S,
    MAX_RUNS_IN_FLIGHT,
    WAIT_SLICE_MS,
    NpuDevice,
    check_device_options,
)
from npu_pipeline.device.queue import CHAIN_BUDGET_S, RUNLIST_MAX
from npu_pipeline.device.slots import Slot
from npu_pipeline.device.submission import Completion, Submission
from npu_pipeline.device.xrt import BACKENDS

__all__ = [
    "BACKENDS",
    "CHAIN_BUDGET_S",
    "DEFAULT_WATCHDOG_S",
    "MAX_RUNS_IN_FLIGHT",
    "RUNLIST_MAX",
    "WAIT_SLICE_MS",
    "Completion",
    "DeviceInfo",
    "NpuDevice",
    "Slot",
    "Submission",
    "check_device_options",
]
