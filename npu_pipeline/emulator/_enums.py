"""pyxrt's enumerations, with the numeric values real XRT uses.

Values of ``ert_cmd_state``, ``bo.flags`` and ``xclBOSyncDirection`` are the
ones in docs/hardware-facts.md#run-states-and-waits and
docs/hardware-facts.md#buffer-objects, from XRT's
``ert.h``/``xrt_bo.h``. ``xrt_info_device`` lists the members of pyxrt's stub
(``src/python/pybind11/pyxrt.pyi``) in its order; the stub gives no numbers,
so host code must use the names, never the values.
"""

from __future__ import annotations

import enum


class ert_cmd_state(enum.IntEnum):
    """State of one run (an ERT command). A run in flight reports ``NEW``.

    The amdxdna driver writes ``NEW`` when it hands a command to the firmware
    and one final state when it ends (aie2_ctx.c), so ``NEW`` is all a host
    ever sees of a command in flight.
    """

    ERT_CMD_STATE_NEW = 1
    ERT_CMD_STATE_QUEUED = 2
    ERT_CMD_STATE_COMPLETED = 4
    ERT_CMD_STATE_ERROR = 5
    ERT_CMD_STATE_ABORT = 6
    ERT_CMD_STATE_SUBMITTED = 7
    ERT_CMD_STATE_TIMEOUT = 8
    ERT_CMD_STATE_NORESPONSE = 9
    ERT_CMD_STATE_SKERROR = 10
    ERT_CMD_STATE_SKCRASHED = 11


class xclBOSyncDirection(enum.IntEnum):
    """Direction of ``bo.sync``: on the NPU, a cache flush or invalidate of the range."""

    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1
    XCL_BO_SYNC_BO_GMIO_TO_AIE = 2
    XCL_BO_SYNC_BO_AIE_TO_GMIO = 3


class BOFlags(enum.IntEnum):
    """``bo.flags``: how a buffer object is allocated."""

    normal = 0
    cacheable = 1 << 24
    svm = 1 << 27
    device_only = 1 << 28
    host_only = 1 << 29
    p2p = 1 << 30


#: pyxrt's module-level alias of ``bo.flags.normal``.
XCL_BO_FLAGS_NONE = int(BOFlags.normal)


class xrt_info_device(enum.IntEnum):
    """Keys of ``device.get_info``. Only ``name`` and ``bdf`` are answered by the emulator."""

    bdf = 0
    interface_uuid = 1
    kdma = 2
    max_clock_frequency_mhz = 3
    m2m = 4
    name = 5
    nodma = 6
    offline = 7
    electrical = 8
    thermal = 9
    mechanical = 10
    memory = 11
    platform = 12
    pcie_info = 13
    host = 14
    dynamic_regions = 15
    vmr = 16


class AccessMode(enum.IntEnum):
    """``hw_context.access_mode``; the emulator accepts either and behaves the same."""

    exclusive = 0
    shared = 1
