"""The one file that speaks pyxrt: every call into the XRT binding (or the emulator) is here.

Like tinygrad's runtime backends, the rest of the device layer sees a small
interface: open a device with a kernel, allocate a buffer, copy in, copy out,
make and start runs, wait for them. :class:`XrtSession` is that interface
over "a module with pyxrt's API": real ``pyxrt`` (it ships with XRT, not on
PyPI) or :mod:`npu_pipeline.emulator`. On a Ryzen AI machine only the module
changes.

Nothing here was run on an NPU: the real-XRT path follows the pyxrt binding
(Xilinx/XRT ``src/python/pybind11/src/pyxrt.cpp``) and mlir-aie's host code
(docs/hardware-facts.md#the-pyxrt-binding).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from npu_pipeline import emulator
from npu_pipeline.contract import KernelContract
from npu_pipeline.device import builds, memlock
from npu_pipeline.errors import DeviceError, explain

#: ``device=`` choices of :meth:`~npu_pipeline.device.NpuDevice.open`.
BACKENDS = ("auto", "emulator", "xrt")

_INSTALL_XRT = (
    "pyxrt ships with XRT, not on PyPI: install XRT and the amdxdna driver "
    "(https://github.com/amd/xdna-driver), then `source /opt/xilinx/xrt/setup.sh` "
    "so that `import pyxrt` works; or use device='emulator'."
)


@dataclass(frozen=True)
class Backend:
    """Which pyxrt-compatible module drives the device, and why.

    Attributes:
        name: ``"xrt"`` or ``"emulator"``: where the xclbin and instructions
            come from (build files, or the contract itself).
        module: the pyxrt-compatible module (may be the emulator even for
            ``"xrt"``: tests drive the real-XRT path on the emulator).
        reason: why it was chosen.
    """

    name: str
    module: ModuleType
    reason: str


def select_backend(device: str, xrt_module: ModuleType | None) -> Backend:
    """The backend for ``device`` (one of :data:`BACKENDS`).

    Raises:
        DeviceError: an unknown ``device``, or ``"xrt"`` without a working XRT.
    """
    if device not in BACKENDS:
        raise DeviceError(explain(f"device={device!r}", f"one of {BACKENDS}", "Pick one of those."))
    if device == "emulator":
        return Backend("emulator", emulator, "device='emulator' was requested")
    module, why = xrt_module, "xrt_module was given"
    if module is None:
        try:
            import pyxrt  # type: ignore[import-not-found]

            module, why = pyxrt, "pyxrt imported"
        except ImportError as error:
            why = f"pyxrt is not importable ({error})"
    if module is not None:
        try:
            if module.enumerate_devices() > 0:
                return Backend("xrt", module, f"{why} and found an NPU")
            why += " but it found no NPU"
        except RuntimeError as error:
            why += f" but enumerate_devices() failed ({error})"
    if device == "xrt":
        raise DeviceError(explain(f"device='xrt' failed: {why}", "a working XRT", _INSTALL_XRT))
    return Backend("emulator", emulator, f"{why}: using the emulator")


class XrtSession:
    """One open device with one kernel: its handles, and every pyxrt call on them.

    Create it with :meth:`open`. Not locked: the caller serialises what must be.
    """

    def __init__(self, backend: Backend, contract: KernelContract, dev: Any) -> None:
        self.backend, self.contract = backend, contract
        self.module = backend.module
        self._device = dev
        self._xclbin: Any = None
        self._context: Any = None
        self._kernel: Any = None
        #: Where the xclbin and instruction streams come from (set by :meth:`load`).
        self.build: builds.KernelBuild | None = None
        #: A run has ended when its state is >= COMPLETED, as XRT's own poll decides.
        self.completed = int(self.module.ert_cmd_state.ERT_CMD_STATE_COMPLETED)
        #: What a run reports in flight, and a run of a runlist XRT did not mark.
        self.new = int(self.module.ert_cmd_state.ERT_CMD_STATE_NEW)
        direction = self.module.xclBOSyncDirection
        self._to_device = direction.XCL_BO_SYNC_BO_TO_DEVICE
        self._from_device = direction.XCL_BO_SYNC_BO_FROM_DEVICE

    @classmethod
    def open(
        cls, backend: Backend, contract: KernelContract, index: int, settings: dict[str, Any]
    ) -> XrtSession:
        """Open device ``index`` (``settings`` go to the emulated device only)."""
        module = backend.module
        dev = module.device(index, **settings) if module is emulator else module.device(index)
        return cls(backend, contract, dev)

    @property
    def device_name(self) -> str:
        """The device's name (the driver's vbnv string on real XRT)."""
        return self._device.get_info(self.module.xrt_info_device.name)

    def load(self, build: builds.KernelBuild) -> None:
        """Register ``build``'s xclbin, create its context and kernel."""
        module = self.module
        self.build = build
        xclbin = module.xclbin(build.xclbin())
        self._device.register_xclbin(xclbin)
        self._xclbin = xclbin
        self.recreate_context()

    def recreate_context(self) -> None:
        """A new hardware context and kernel for the registered xclbin (the old ones are
        dropped: runs and runlists made on them must be dropped too)."""
        context = self.module.hw_context(self._device, self._xclbin.get_uuid())
        self._kernel = self.module.kernel(context, self.contract.kernel_name)
        self._context = context

    def plan_faults(self, planned: Any, after_runs: int) -> None:
        """Emulator only: plan ``planned`` faults, each ``after_runs`` runs later than it says."""
        for fault in planned:
            emulator.inject_fault(self._device, fault.kind, run_index=fault.run_index + after_runs)

    # -- buffers -------------------------------------------------------------

    def allocate(self, size: int, argument: str) -> Any:
        """A ``host_only`` BO of ``size`` bytes in the memory group of kernel ``argument``."""
        return self.module.bo(self._device, size, self.module.bo.host_only, self._group(argument))

    def sub_buffer(self, root: Any, size: int, offset: int) -> Any:
        """A BO over bytes ``offset .. offset + size`` of ``root``."""
        return self.module.bo(root, size, offset)

    @staticmethod
    def view(bo: Any) -> np.ndarray:
        """The BO's mapped host bytes as a uint8 array (valid while the BO lives)."""
        return np.frombuffer(bo.map(), dtype=np.uint8)

    def copy_in(self, bo: Any, size: int, offset: int) -> None:
        """Sync ``size`` bytes at ``offset`` of ``bo`` to the device."""
        bo.sync(self._to_device, size, offset)

    def copy_out(self, bo: Any, size: int, offset: int) -> None:
        """Sync ``size`` bytes at ``offset`` of ``bo`` back from the device."""
        bo.sync(self._from_device, size, offset)

    def load_instructions(self, words: np.ndarray) -> Any:
        """A cacheable BO holding the instruction stream ``words``, synced to the device."""
        module = self.module
        bo = module.bo(self._device, words.nbytes, module.bo.cacheable, self._group("instr"))
        bo.write(words, 0)
        bo.sync(self._to_device, words.nbytes, 0)
        return bo

    def memlock(self) -> tuple[int | None, int]:
        """The locked-memory limit (None: unlimited) and the bytes the process has locked:
        ``RLIMIT_MEMLOCK`` and ``VmLck`` on real XRT, the emulated ones on the emulator."""
        if self.module is emulator:
            return self._device.memlock_limit(), emulator.locked_bytes()
        return emulator.process_memlock_bytes(), memlock.process_locked_bytes()

    def _group(self, argument: str) -> int:
        return self._kernel.group_id(self.contract.arguments.index(argument))

    # -- runs ----------------------------------------------------------------

    def make_run(self, arguments: tuple[Any, ...]) -> Any:
        """A run of the kernel with its arguments set, not started."""
        run = self.module.run(self._kernel)
        for position, value in enumerate(arguments):
            run.set_arg(position, value)
        return run

    def make_chain(self, runs: list[Any]) -> Any:
        """A ``runlist`` of ``runs`` on the context (newer XRT only)."""
        chain = self.module.runlist(self._context)
        for run in runs:
            chain.add(run)
        return chain

    @property
    def has_runlists(self) -> bool:
        """Whether this pyxrt has ``runlist``."""
        return hasattr(self.module, "runlist")

    @staticmethod
    def start(run: Any) -> None:
        """Start a run (pyxrt holds the GIL while it submits)."""
        run.start()

    @staticmethod
    def state(run: Any) -> Any:
        """A run's current ``ert_cmd_state``, without blocking."""
        return run.state()

    @staticmethod
    def wait(run: Any, timeout_ms: int | None = None) -> Any:
        """Wait for a run (pyxrt holds the GIL inside); its state."""
        return run.wait() if timeout_ms is None else run.wait(timeout_ms)

    @staticmethod
    def execute(chain: Any) -> None:
        """Submit a runlist."""
        chain.execute()

    @staticmethod
    def wait_chain(chain: Any) -> None:
        """Wait for a runlist, untimed: pyxrt's timed overload cannot be called (it takes
        a ``std::chrono::milliseconds`` and the binding has no chrono caster)."""
        chain.wait()

    # -- closing -------------------------------------------------------------

    def close(self) -> None:
        """Drop the handles. pyxrt frees on garbage collection; the emulator joins threads."""
        dev, self._device = self._device, None
        self._xclbin = self._context = self._kernel = None
        if self.module is emulator and dev is not None:
            dev.close()
