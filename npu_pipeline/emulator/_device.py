"""``pyxrt.device`` and ``pyxrt.hw_context``: the emulated NPU and its hardware contexts."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import weakref
from collections.abc import Iterable, Iterator

from npu_pipeline.emulator import _gil
from npu_pipeline.emulator._enums import AccessMode, xrt_info_device
from npu_pipeline.emulator._faults import Fault
from npu_pipeline.emulator._instructions import Firmware
from npu_pipeline.emulator._queue import CommandQueue
from npu_pipeline.emulator._state import DRIVER_RUNS_IN_FLIGHT, DeviceState
from npu_pipeline.emulator._xclbin import uuid, xclbin
from npu_pipeline.errors import DeviceError, DriverRuleError, explain

#: The PCI address the emulated device reports.
EMULATED_BDF = "0000:00:00.1"


#: Every device name the amdxdna driver reports (its vbnv strings), by generation
#: (docs/hardware-facts.md#device-names); ``device(name=...)`` plays any of them.
VBNV_NAMES = {
    "npu1": ("NPU Phoenix", "RyzenAI-npu1"),
    "npu2": (
        "NPU Strix",
        "NPU Strix Halo",
        "NPU Krackan 1",
        "NPU Krackan 2",
        "NPU Kracken",
        "NPU Gorgon Point 1",
        "NPU Gorgon Point 2",
        "NPU Gorgon Point 3",
        "RyzenAI-npu4",
        "RyzenAI-npu5",
        "RyzenAI-npu6",
    ),
}


@dataclasses.dataclass(frozen=True)
class EmulatedHost:
    """The machine around the emulated NPU: what a ``doctor`` run or a test plays.

    Attributes:
        devices: what ``enumerate_devices()`` returns; 0 plays a machine with no
            NPU (or no driver), and ``device(0)`` then fails.
        memlock_bytes: the locked-memory limit of devices opened without their own,
            bytes; None reads the process's ``RLIMIT_MEMLOCK`` when a device opens.
        hold_gil: whether devices opened without their own ``hold_gil`` hold the
            GIL in the calls where pyxrt does (docs/emulator.md#the-gil).
    """

    devices: int = 1
    memlock_bytes: int | None = None
    hold_gil: bool = _gil.AVAILABLE


_host = EmulatedHost()


@contextlib.contextmanager
def emulated_host(**changes: object) -> Iterator[EmulatedHost]:
    """Change the :class:`EmulatedHost` (``devices``, ``memlock_bytes``, ``hold_gil``)
    inside a ``with`` block; devices opened in it keep what they were opened with."""
    global _host
    before = _host
    _host = dataclasses.replace(before, **changes)
    try:
        yield _host
    finally:
        _host = before


def enumerate_devices() -> int:
    """Number of devices: one, unless :func:`emulated_host` plays another number."""
    return _host.devices


def process_memlock_bytes() -> int | None:
    """The process's soft ``RLIMIT_MEMLOCK``, bytes; None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else int(soft)


class device:
    """The emulated NPU: ``device(index)`` opens it (index 0 only).

    Keyword options are emulator-only; host code written for real pyxrt never
    passes them:

    Args:
        generation: ``"npu1"`` (Phoenix, default) or ``"npu2"`` (Strix).
        timing: a timing model: an object with ``run_seconds(contract, block)``
            (and optionally ``watchdog_s``), or such a callable; ``None``
            (default) lets each run take as long as its CPU compute.
        watchdog_s: the watchdog, seconds; default the timing model's
            ``watchdog_s``, else 2 (amdxdna ``timeout_in_sec``); 0 disables it.
        runs_in_flight: runs in flight per context before ``start`` blocks (1..4).
        detect_mapped_writes: record the host bytes of mapped BOs around each run to catch
            writes through ``map()`` views while it is in flight (default on).
        faults: faults planned from the start (see ``inject_fault``).
        name: the name ``get_info(name)`` reports; default the generation's first
            in :data:`VBNV_NAMES` ("NPU Phoenix", "NPU Strix").
        hold_gil: hold the GIL in ``run.wait``/``start``, ``bo.sync``/``read``/``write``
            and ``runlist.execute``/``wait``, as pyxrt does; default the
            :class:`EmulatedHost`'s (on where libc allows it).
        memlock_bytes: the locked-memory limit root BOs count against, bytes
            (``resource.RLIM_INFINITY``: unlimited); default the
            :class:`EmulatedHost`'s, else the process's ``RLIMIT_MEMLOCK``.
        reset_leaves_new: play an older amdxdna driver: a command ended by a
            watchdog reset stays ``NEW`` and its ``wait`` raises "unexpected
            command state", as XRT's does (default off).
        insts_unit: the unit the emulated firmware reads ``n_insts`` in,
            ``"words"`` (default, the shipped contracts' unit) or ``"bytes"``;
            a run whose count does not match its stream completes with its
            output all zero (docs/emulator.md#the-instruction-stream).
        zeros: every run completes with its output all zero, as a missing
            or wrong instruction stream can on hardware.
    """

    def __init__(
        self,
        index: int = 0,
        *,
        generation: str = "npu1",
        timing: object = None,
        watchdog_s: float | None = None,
        runs_in_flight: int = DRIVER_RUNS_IN_FLIGHT,
        detect_mapped_writes: bool = True,
        faults: Iterable[Fault] = (),
        name: str | None = None,
        hold_gil: bool | None = None,
        memlock_bytes: int | None = None,
        reset_leaves_new: bool = False,
        insts_unit: str = "words",
        zeros: bool = False,
    ) -> None:
        host = _host
        if not 0 <= index < host.devices:
            raise DeviceError(
                explain(
                    f"no device with index {index} ({host.devices} found)",
                    "an index below enumerate_devices()",
                    "Open device(0) of a machine with an NPU.",
                )
            )
        if hold_gil is None:
            hold_gil = host.hold_gil
        if hold_gil and not _gil.AVAILABLE:
            raise DeviceError(
                explain(
                    "hold_gil=True on a platform without libc's nanosleep",
                    "Linux or macOS",
                    "Pass hold_gil=False.",
                )
            )
        if memlock_bytes is None:
            memlock_bytes = host.memlock_bytes
        limit = process_memlock_bytes() if memlock_bytes is None else memlock_bytes
        if limit == resource.RLIM_INFINITY:
            limit = None
        self._state = DeviceState(
            generation=generation,
            timing=timing,
            watchdog_s=watchdog_s,
            runs_in_flight=runs_in_flight,
            detect_mapped_writes=detect_mapped_writes,
            faults=faults,
            name=name,
            hold_gil=hold_gil,
            memlock_bytes=limit,
            reset_leaves_new=reset_leaves_new,
            firmware=Firmware(insts_unit, zeros),
        )
        self._xclbins: dict[uuid, xclbin] = {}
        self._last_uuid: uuid | None = None
        self._contexts: weakref.WeakSet[hw_context] = weakref.WeakSet()

    def register_xclbin(self, xb: xclbin) -> uuid:
        """Register an xclbin; return its UUID for ``hw_context``."""
        self._state.check_alive("register_xclbin")
        if not isinstance(xb, xclbin):
            raise TypeError(f"register_xclbin takes an xclbin, got {type(xb).__name__}")
        key = xb.get_uuid()
        self._xclbins[key] = xb
        self._last_uuid = key
        return key

    def load_xclbin(self, xb: xclbin | str | os.PathLike[str]) -> uuid:
        """Deprecated in pyxrt; here the same as ``register_xclbin``."""
        return self.register_xclbin(xb if isinstance(xb, xclbin) else xclbin(xb))

    def get_xclbin_uuid(self) -> uuid:
        """UUID of the xclbin registered last."""
        if self._last_uuid is None:
            raise DriverRuleError(
                explain("no xclbin registered", "a registered xclbin", "register_xclbin first.")
            )
        return self._last_uuid

    def get_info(self, key: xrt_info_device) -> str:
        """Device name (``name``) or PCI address (``bdf``)."""
        if key == xrt_info_device.name:
            return self._state.name
        if key == xrt_info_device.bdf:
            return EMULATED_BDF
        raise DriverRuleError(
            explain(
                f"get_info({xrt_info_device(key).name})",
                "xrt_info_device.name or .bdf",
                "The emulator answers only those.",
            )
        )

    def memlock_limit(self) -> int | None:
        """Emulator-only: the locked-memory limit root BOs count against, bytes (None: none)."""
        return self._state.memlock_bytes

    def close(self) -> None:
        """Emulator-only: close every hardware context of this device (joins their threads)."""
        for ctx in list(self._contexts):
            ctx.close()


class hw_context:
    """``hw_context(device, uuid | xclbin | xclbin_path[, mode | cfg_param])``: one device thread.

    Closing it (emulator-only ``close()``, ``device.close()``, or garbage
    collection) aborts its queued runs and stops and joins its thread.
    """

    access_mode = AccessMode
    exclusive = AccessMode.exclusive
    shared = AccessMode.shared

    def __init__(
        self,
        dev: device,
        source: uuid | xclbin | str | os.PathLike[str],
        mode: AccessMode | dict[str, int] = AccessMode.shared,
    ) -> None:
        if not isinstance(dev, device):
            raise TypeError(f"hw_context needs an emulated device, got {type(dev).__name__}")
        dev._state.check_alive("hw_context creation")
        if not isinstance(source, uuid):
            source = dev.register_xclbin(source if isinstance(source, xclbin) else xclbin(source))
        if source not in dev._xclbins:
            raise DriverRuleError(
                explain(
                    f"xclbin {source.to_string()} is not registered on the device",
                    "the UUID returned by device.register_xclbin",
                    "Register the xclbin first.",
                )
            )
        self._device = dev
        self._state = dev._state
        self._uuid = source
        # A dict is pyxrt's cfg_param overload; the emulator has nothing to configure.
        self._mode = AccessMode.shared if isinstance(mode, dict) else AccessMode(mode)
        self._queue = CommandQueue(dev._state)
        self._closer = weakref.finalize(self, self._queue.close)
        dev._contexts.add(self)

    def get_device(self) -> device:
        """The device the context was created on."""
        return self._device

    def get_xclbin_uuid(self) -> uuid:
        """UUID of the context's xclbin."""
        return self._uuid

    def get_xclbin(self) -> xclbin:
        """The context's xclbin."""
        return self._device._xclbins[self._uuid]

    def get_mode(self) -> AccessMode:
        """The access mode it was created with."""
        return self._mode

    @property
    def out_of_step(self) -> str | None:
        """Emulator-only: why every run on this context now fails (a run failed or the
        watchdog reset the device), or ``None``. Only a new hw_context clears it."""
        return self._queue.out_of_step

    def close(self) -> None:
        """Emulator-only: abort queued runs, stop and join the device thread. Idempotent."""
        self._closer()
