"""NpuDevice: the only library code that calls pyxrt (real XRT, or the emulated NPU).

One :class:`NpuDevice` opens the device, the xclbin, the hardware context and
the kernel once (doing it per call costs about 95 ms, NPU_FACTS.md) and then
serves batches:

- :meth:`NpuDevice.allocate_slot` makes a :class:`Slot`: one ``host_only`` BO
  per contract buffer in the kernel's group for it, with numpy views over
  ``bo.map()`` so the packer writes in place;
- :meth:`NpuDevice.start` syncs the used input bytes to the device (one sync
  per buffer) and starts the batch's run(s); a batch of many runs (tile pairs
  of the ``tile16_legacy`` contract) uses a sub-buffer per run, derived from
  the root BO;
- :meth:`NpuDevice.wait`, meant for a worker thread, waits in 2 ms slices
  (pyxrt holds the GIL inside ``wait``), keeps up to ``runs_in_flight`` runs
  in flight across the device (starting the next as one completes, so no
  ``start`` ever blocks in the driver), then syncs the used output bytes back
  (one sync). A run that does not complete raises :class:`DeviceError` naming
  its state, batch and request.

The same code drives real ``pyxrt`` and :mod:`npu_pipeline.emulator`; where
they differ (the instruction stream, and closing the emulator's threads) is
:class:`_Backend`. Nothing here was run on an NPU: the real-XRT path follows
pyxrt's documented API and the mlir-aie host code only (docs/device.md).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from npu_pipeline import emulator
from npu_pipeline.contract import KernelContract
from npu_pipeline.errors import (
    BufferHazardError,
    ContractError,
    DeviceError,
    DriverRuleError,
    ShapeError,
    explain,
)

#: ``device=`` choices of :meth:`NpuDevice.open`.
BACKENDS = ("auto", "emulator", "xrt")

#: One wait slice, ms: pyxrt holds the GIL inside ``run.wait`` (NPU_FACTS.md).
WAIT_SLICE_MS = 2

#: The amdxdna driver's limit of commands in flight per hardware context.
MAX_RUNS_IN_FLIGHT = 4

#: Driver watchdog default, seconds (amdxdna ``timeout_in_sec``).
DEFAULT_WATCHDOG_S = 2.0

#: Device name fragments (``get_info(name)``) per NPU generation.
_GENERATION_NAMES = {
    "phoenix": "npu1",
    "hawk": "npu1",
    "strix": "npu2",
    "krackan": "npu2",
}

_INSTALL_XRT = (
    "pyxrt ships with XRT, not on PyPI: install XRT and the amdxdna driver "
    "(https://github.com/amd/xdna-driver), then `source /opt/xilinx/xrt/setup.sh` "
    "so that `import pyxrt` works; or use device='emulator'."
)


@dataclass(frozen=True)
class DeviceInfo:
    """Which device an :class:`NpuDevice` drives, and why.

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


@dataclass(frozen=True, eq=False)
class Slot:
    """The buffers one batch uses: one BO per contract buffer.

    Attributes:
        index: the slot's number in its device.
        capacity: bytes of each buffer, by buffer name.
        dtypes: each buffer's element type, by buffer name.
        views: a uint8 numpy view over each BO's mapped host bytes. Valid
            until the slot is freed or the device closed.
    """

    index: int
    capacity: Mapping[str, int]
    dtypes: Mapping[str, str]
    views: Mapping[str, np.ndarray]

    def view(self, name: str, dtype: Any = None) -> np.ndarray:
        """The whole of buffer ``name`` as a flat array of ``dtype`` (default its own)."""
        return self.views[name].view(dtype or self.dtypes[name])


@dataclass(frozen=True)
class Completion:
    """How a batch ended (returned by :meth:`NpuDevice.wait`).

    Attributes:
        batch, request: as given to :meth:`NpuDevice.start`.
        n_runs: runs the batch had.
        started_at: ``time.perf_counter()`` when :meth:`NpuDevice.start` began, s.
        completed_at: ``time.perf_counter()`` after the output sync, s.
        cancelled: ``should_stop`` ended the wait: runs not yet started were
            skipped and the output was not synced.
    """

    batch: int | None
    request: int | None
    n_runs: int
    started_at: float
    completed_at: float
    cancelled: bool = False


class Submission:
    """The runs of one batch: made by :meth:`NpuDevice.start`, ended by :meth:`NpuDevice.wait`."""

    def __init__(
        self,
        slot: Slot,
        block: tuple[int, int, int],
        n_runs: int,
        batch: int | None,
        request: int | None,
    ) -> None:
        self.slot, self.block, self.n_runs = slot, block, n_runs
        self.batch, self.request = batch, request
        self.started_at = time.perf_counter()
        self.next_run = 0  # index of the next run to start
        self.running: list[Any] = []  # runs in flight, oldest first
        self.failed: tuple[int, Any] | None = None  # (run index, run) of the first failure
        self.stopped = False  # start no more runs
        self.closed = False  # wait() has returned or raised


@dataclass(frozen=True)
class _Backend:
    """What differs between real XRT and the emulator, in one place.

    Attributes:
        name: ``"xrt"`` or ``"emulator"``: where instructions come from.
        module: the pyxrt-compatible module (may be the emulator even for
            ``"xrt"``: tests drive the real-XRT path on the emulator).
        reason: why it was chosen.
    """

    name: str
    module: ModuleType
    reason: str

    def xclbin(self, contract: KernelContract) -> Any:
        """The xclbin: the build folder's file on XRT, the contract itself on the emulator."""
        if self.name == "emulator":
            return self.module.xclbin(contract)
        return self.module.xclbin(str(self._build_file(contract, contract.xclbin)))

    def instructions(
        self, contract: KernelContract, block: tuple[int, int, int], generation: str
    ) -> np.ndarray:
        """The instruction stream of ``block`` as uint32 words."""
        if self.name == "emulator":
            return emulator.instructions(contract, block, generation)
        path = self._build_file(contract, contract.instruction_file(block))
        return np.fromfile(path, dtype="<u4")

    @staticmethod
    def _build_file(contract: KernelContract, name: str) -> Path:
        path = Path(contract.source).parent / name
        if not path.is_file():
            raise ContractError(
                explain(
                    f"kernel build file {path} does not exist",
                    f"the files the contract names beside {contract.source}",
                    "Build the kernel (see kernels/<name>/), or use device='emulator'.",
                )
            )
        return path

    def close(self, dev: Any) -> None:
        """Release the device. pyxrt frees on garbage collection; the emulator joins threads."""
        if self.module is emulator:
            dev.close()


def _select_backend(device: str, xrt_module: ModuleType | None) -> _Backend:
    if device not in BACKENDS:
        raise DeviceError(explain(f"device={device!r}", f"one of {BACKENDS}", "Pick one of those."))
    if device == "emulator":
        return _Backend("emulator", emulator, "device='emulator' was requested")
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
                return _Backend("xrt", module, f"{why} and found an NPU")
            why += " but it found no NPU"
        except RuntimeError as error:
            why += f" but enumerate_devices() failed ({error})"
    if device == "xrt":
        raise DeviceError(explain(f"device='xrt' failed: {why}", "a working XRT", _INSTALL_XRT))
    return _Backend("emulator", emulator, f"{why}: using the emulator")


def _generation(name: str, profile: Any) -> str:
    lowered = name.lower()
    for fragment, generation in _GENERATION_NAMES.items():
        if fragment in lowered:
            return generation
    if profile is not None:
        return profile.generation
    raise DeviceError(
        explain(
            f"cannot tell the NPU generation of device {name!r}",
            f"a name containing one of {sorted(_GENERATION_NAMES)}",
            "Pass profile='npu1' or 'npu2'.",
        )
    )


class NpuDevice:
    """One NPU (or emulated NPU) with one kernel loaded. Thread-safe; a context manager.

    Create it with :meth:`open`. Every :meth:`start` must be followed by one
    :meth:`wait` of its submission.
    """

    def __init__(
        self,
        backend: _Backend,
        contract: KernelContract,
        info: DeviceInfo,
        handles: tuple[Any, Any, Any, Any],
    ) -> None:
        self.contract, self.info = contract, info
        self._backend = backend
        self._xrt = backend.module
        self._device, self._xclbin, self._context, self._kernel = handles
        self._lock = threading.Lock()
        self._in_flight: list[tuple[Any, Submission, int]] = []  # (run, submission, index)
        self._active: dict[int, Submission] = {}  # slot index -> its unfinished submission
        self._roots: dict[int, dict[str, Any]] = {}  # slot index -> root BO per buffer
        self._subs: dict[tuple[int, str, int], list[Any]] = {}  # (slot, buffer, stride) -> BOs
        self._instr: dict[tuple[int, int, int], tuple[Any, int]] = {}  # block -> (BO, n_insts)
        self._slot_numbers = itertools.count()
        self._closed = False
        # A run has ended when its state is >= COMPLETED, as XRT's own poll decides.
        self._completed = int(self._xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED)
        direction = self._xrt.xclBOSyncDirection
        self._to_device = direction.XCL_BO_SYNC_BO_TO_DEVICE
        self._from_device = direction.XCL_BO_SYNC_BO_FROM_DEVICE

    @classmethod
    def open(
        cls,
        contract: KernelContract,
        *,
        device: str = "auto",
        profile: Any = None,
        xrt_module: ModuleType | None = None,
        index: int = 0,
        timed: bool = False,
        **emulator_options: Any,
    ) -> NpuDevice:
        """Open device ``index``, load ``contract``'s xclbin, create its context and kernel.

        Args:
            device: ``"auto"`` (real pyxrt if it imports and finds an NPU, else
                the emulator), ``"emulator"``, or ``"xrt"``.
            profile: a device profile (name or object with ``generation``,
                ``runs_in_flight``, ``watchdog_s``, ``run_seconds``), or None.
            xrt_module: a pyxrt-compatible module to use instead of ``import pyxrt``.
            index: device index.
            timed: emulator only: runs complete no earlier than the profile's
                modelled ``run_seconds`` (figures stay *modelled*).
            emulator_options: passed to ``emulator.device`` (``generation``,
                ``watchdog_s``, ``runs_in_flight``, ``faults``, ...).

        Raises:
            DeviceError: the device cannot be opened (``"xrt"`` without XRT, ...).
            ContractError: the contract has no build for the device's generation.
        """
        if isinstance(profile, str):
            from npu_pipeline.profiles import get_profile

            profile = get_profile(profile)
        backend = _select_backend(device, xrt_module)
        xrt = backend.module
        is_emulator = xrt is emulator
        if (emulator_options or timed) and not is_emulator:
            raise DeviceError(
                explain(
                    f"emulator options {sorted(emulator_options) + (['timed'] if timed else [])} "
                    "were given but the device is real XRT",
                    "no emulator options with device='xrt'",
                    "Drop them, or pass device='emulator'.",
                )
            )
        if timed and profile is None:
            raise DeviceError(
                explain("timed=True without a profile", "a profile", "Pass profile=...")
            )
        settings = {
            "runs_in_flight": min(
                MAX_RUNS_IN_FLIGHT, getattr(profile, "runs_in_flight", MAX_RUNS_IN_FLIGHT)
            ),
            "watchdog_s": getattr(profile, "watchdog_s", DEFAULT_WATCHDOG_S),
        }
        if is_emulator:
            settings["generation"] = getattr(profile, "generation", "npu1")
            settings["timing"] = profile if timed else None
            settings.update(emulator_options)
            dev = xrt.device(index, **settings)
        else:
            dev = xrt.device(index)
        try:
            name = dev.get_info(xrt.xrt_info_device.name)
            generation = _generation(name, profile)
            contract.target(generation)
            xclbin = backend.xclbin(contract)
            dev.register_xclbin(xclbin)
            context = xrt.hw_context(dev, xclbin.get_uuid())
            kernel = xrt.kernel(context, contract.kernel_name)
        except BaseException:
            backend.close(dev)
            raise
        emulated = backend.name == "emulator"
        info = DeviceInfo(
            backend=backend.name,
            name=name,
            generation=generation,
            kernel=contract.name,
            runs_in_flight=int(settings["runs_in_flight"]),
            watchdog_s=float(settings["watchdog_s"]),
            timing=(
                "modelled"
                if settings.get("timing") is not None
                else ("cpu" if emulated else "hardware")
            ),
            default_profile="cpu" if emulated else generation,
            reason=backend.reason,
        )
        return cls(backend, contract, info, (dev, xclbin, context, kernel))

    # -- slots -------------------------------------------------------------------

    def allocate_slot(self, size: tuple[int, int, int] | Mapping[str, int]) -> Slot:
        """Allocate one ``host_only`` BO per contract buffer.

        Args:
            size: a block shape (m, k, n), sized for one run of it, or the
                bytes of each buffer by name (e.g. ``n_runs`` runs' worth).
        """
        contract = self.contract
        if isinstance(size, Mapping):
            capacity = {b.name: int(size[b.name]) for b in contract.buffers}
        else:
            capacity = contract.run_buffer_bytes(tuple(size))
        xrt = self._xrt
        with self._lock:
            self._check_open()
            index = next(self._slot_numbers)
            roots = {
                b.name: xrt.bo(
                    self._device,
                    capacity[b.name],
                    xrt.bo.host_only,
                    self._kernel.group_id(contract.arguments.index(b.name)),
                )
                for b in contract.buffers
            }
            self._roots[index] = roots
        views = {name: np.frombuffer(bo.map(), dtype=np.uint8) for name, bo in roots.items()}
        dtypes = {b.name: b.dtype for b in contract.buffers}
        return Slot(index=index, capacity=capacity, dtypes=dtypes, views=views)

    def free_slot(self, slot: Slot) -> None:
        """Release a slot's BOs (idempotent). A run still in flight keeps them until it ends."""
        with self._lock:
            self._roots.pop(slot.index, None)
            for key in [key for key in self._subs if key[0] == slot.index]:
                del self._subs[key]

    # -- runs --------------------------------------------------------------------

    def start(
        self,
        slot: Slot,
        block: tuple[int, int, int],
        n_runs: int = 1,
        batch: int | None = None,
        request: int | None = None,
    ) -> Submission:
        """Sync the used input bytes of ``slot`` to the device and start its runs.

        Run ``i`` of ``n_runs`` uses bytes ``[i * s, (i + 1) * s)`` of each
        buffer, ``s`` being the bytes one run of ``block`` needs. Starts as
        many runs as the in-flight limit allows; :meth:`wait` starts the rest.

        Raises:
            BufferHazardError: the slot's previous batch still has runs in flight.
            ShapeError: the slot is too small for ``n_runs`` runs of ``block``.
            ContractError: ``block`` is not legal for the contract.
            DeviceError: the device refused a call.
        """
        contract = self.contract
        contract.check_block(block, self.info.generation)
        stride = contract.run_buffer_bytes(block)
        for name, size in stride.items():
            if n_runs < 1 or n_runs * size > slot.capacity[name]:
                raise ShapeError(
                    explain(
                        f"{n_runs} runs of block {block} need {n_runs * size} bytes of "
                        f"buffer {name!r}; the slot has {slot.capacity[name]}",
                        "n_runs >= 1 runs that fit the slot",
                        "Allocate a larger slot.",
                    )
                )
        sub = Submission(slot, block, n_runs, batch, request)
        with self._calls(sub):
            with self._lock:
                self._check_open()
                self._reap()
                if slot.index in self._active:
                    raise _busy(slot)
                roots = self._roots_of(slot)
                self._active[slot.index] = sub
            try:
                for spec in contract.input_buffers:
                    roots[spec.name].sync(self._to_device, n_runs * stride[spec.name], 0)
                with self._lock:
                    self._fill(sub)
            except BaseException:
                self._finish(sub)
                raise
        return sub

    def wait(
        self,
        submission: Submission,
        *,
        timeout_s: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Completion:
        """Block (in a worker thread) until every run of ``submission`` ended; sync the output.

        Waits in 2 ms slices. ``should_stop`` is polled every slice: when it
        returns True, no further run is started, the runs in flight are
        waited for (so the slot is safe to reuse) and a ``cancelled``
        completion is returned.

        Raises:
            DeviceError: a run ended in a state other than COMPLETED (named in
                ``state``), the device failed, or ``timeout_s`` passed (its
                runs may then still be in flight: the slot stays busy until they end).
            BufferHazardError: the emulator saw the host write a BO of a run in flight.
        """
        sub = submission
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        late, late_state, failed_state = False, None, None
        try:
            with self._calls(sub):
                late = not self._drain(sub, deadline, should_stop)
                if late:
                    with self._lock:
                        oldest = sub.running[0] if sub.running else None
                    late_state = _state_name(oldest.state()) if oldest is not None else None
                elif sub.failed is not None:
                    failed_state = sub.failed[1].wait()  # final; the emulator raises hazards here
                elif not sub.stopped:
                    out = self.contract.output_buffer.name
                    size = sub.n_runs * self.contract.run_buffer_bytes(sub.block)[out]
                    self._roots_of(sub.slot)[out].sync(self._from_device, size, 0)
        finally:
            self._finish(sub)
        if late:
            raise DeviceError(
                explain(
                    f"batch {sub.batch} of request {sub.request} did not complete within "
                    f"{timeout_s} s",
                    "runs that finish within the timeout",
                    "Its runs may still be in flight; the slot stays busy until they end.",
                ),
                state=late_state,
                batch=sub.batch,
                request=sub.request,
            )
        if failed_state is not None:
            name = _state_name(failed_state)
            raise DeviceError(
                explain(
                    f"run {sub.failed[0]} of batch {sub.batch} (request {sub.request}) "
                    f"ended in {name}",
                    "ERT_CMD_STATE_COMPLETED",
                    "The batch's output is lost; retry it or fail its request.",
                ),
                state=name,
                batch=sub.batch,
                request=sub.request,
            )
        return Completion(
            batch=sub.batch,
            request=sub.request,
            n_runs=sub.n_runs,
            started_at=sub.started_at,
            completed_at=time.perf_counter(),
            cancelled=sub.stopped,
        )

    def _drain(
        self,
        sub: Submission,
        deadline: float | None,
        should_stop: Callable[[], bool] | None,
    ) -> bool:
        """Start and wait for ``sub``'s runs in 2 ms slices: True when all have ended,
        False when the deadline passed first."""
        while True:
            if should_stop is not None and not sub.stopped and should_stop():
                sub.stopped = True
            with self._lock:
                self._reap()
                self._fill(sub)
                if not sub.running and (sub.stopped or sub.next_run == sub.n_runs):
                    return True
                oldest = sub.running[0] if sub.running else None
            if deadline is not None and time.perf_counter() > deadline:
                return False
            if oldest is None:
                time.sleep(WAIT_SLICE_MS / 1000)
            else:
                oldest.wait(WAIT_SLICE_MS)

    # -- internals (hold self._lock where noted) ---------------------------------

    @contextlib.contextmanager
    def _calls(self, sub: Submission) -> Iterator[None]:
        """Turn a failed pyxrt call into DeviceError naming the batch and request.

        Rule violations (DriverRuleError, BufferHazardError) are bugs in host
        code, not device faults: they pass unchanged.
        """
        try:
            yield
        except DriverRuleError:
            raise
        except DeviceError as error:
            if error.batch is not None or error.request is not None:
                raise
            raise DeviceError(
                str(error), state=error.state, batch=sub.batch, request=sub.request
            ) from error
        except RuntimeError as error:
            raise DeviceError(
                explain(
                    f"XRT call failed: {error}",
                    "a working device",
                    "Check `xrt-smi examine` and dmesg; reopen the device.",
                ),
                batch=sub.batch,
                request=sub.request,
            ) from error

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError(explain("the NpuDevice is closed", "an open device", "Open one."))

    def _roots_of(self, slot: Slot) -> dict[str, Any]:
        roots = self._roots.get(slot.index)
        if roots is None:
            raise ShapeError(
                explain(
                    f"slot {slot.index} has been freed",
                    "an allocated slot, freed only after wait() returned",
                    "Allocate a new slot.",
                )
            )
        return roots

    def _instructions(self, block: tuple[int, int, int]) -> tuple[Any, int]:
        """The cached instruction BO of ``block`` and its ``n_insts`` (lock held)."""
        cached = self._instr.get(block)
        if cached is None:
            xrt, contract = self._xrt, self.contract
            words = self._backend.instructions(contract, block, self.info.generation)
            bo = xrt.bo(
                self._device,
                words.nbytes,
                xrt.bo.cacheable,
                self._kernel.group_id(contract.arguments.index("instr")),
            )
            bo.write(words, 0)
            bo.sync(self._to_device)
            cached = self._instr[block] = (bo, emulator.instruction_count(contract, len(words)))
        return cached

    def _run_bos(self, sub: Submission, run: int) -> list[Any]:
        """The BO of each buffer for run ``run``: the root, or a cached sub-buffer (lock held)."""
        roots = self._roots_of(sub.slot)
        if sub.n_runs == 1:
            return [roots[b.name] for b in self.contract.buffers]
        bos = []
        for name, stride in self.contract.run_buffer_bytes(sub.block).items():
            subs = self._subs.setdefault((sub.slot.index, name, stride), [])
            while len(subs) <= run:
                subs.append(self._xrt.bo(roots[name], stride, len(subs) * stride))
            bos.append(subs[run])
        return bos

    def _fill(self, sub: Submission) -> None:
        """Start runs of ``sub`` while the device has room (lock held)."""
        instr, n_insts = self._instructions(sub.block)
        while (
            not sub.stopped
            and sub.next_run < sub.n_runs
            and len(self._in_flight) < self.info.runs_in_flight
        ):
            index = sub.next_run
            bos = self._run_bos(sub, index)
            sub.next_run += 1
            try:
                run = self._kernel(self.contract.opcode, instr, n_insts, *bos)
            except BaseException:
                sub.stopped = True
                raise
            sub.running.append(run)
            self._in_flight.append((run, sub, index))

    def _reap(self) -> None:
        """Retire every run in flight that has ended, whichever batch it belongs to (lock held)."""
        still = []
        for entry in self._in_flight:
            run, sub, index = entry
            state = int(run.state())
            if state < self._completed:
                still.append(entry)
                continue
            sub.running.remove(run)
            if state != self._completed and sub.failed is None:
                sub.failed, sub.stopped = (index, run), True
            if sub.closed and not sub.running:
                self._active.pop(sub.slot.index, None)
        self._in_flight = still

    def _finish(self, sub: Submission) -> None:
        """The caller is done with ``sub``; its slot is free once its runs ended."""
        with self._lock:
            sub.closed = True
            if not sub.running and self._active.get(sub.slot.index) is sub:
                del self._active[sub.slot.index]

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Wait (bounded by the watchdog) for runs in flight, then release everything."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.perf_counter() + self.info.watchdog_s + 1.0
        while time.perf_counter() < deadline:
            with self._lock:
                self._reap()
                if not self._in_flight:
                    break
            time.sleep(WAIT_SLICE_MS / 1000)
        dev = self._device
        with self._lock:
            self._in_flight.clear()
            self._active.clear()
            self._subs.clear()
            self._roots.clear()
            self._instr.clear()
        self._device = self._xclbin = self._context = self._kernel = None
        self._backend.close(dev)

    def __enter__(self) -> NpuDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _state_name(state: Any) -> str:
    """``ERT_CMD_STATE_...`` of a pyxrt state (pybind11 and Python enums both have ``name``)."""
    return getattr(state, "name", str(state))


def _busy(slot: Slot) -> BufferHazardError:
    return BufferHazardError(
        explain(
            f"slot {slot.index} was started while its previous batch is still in flight",
            "one batch in flight per slot",
            "wait() for the previous batch before packing and starting the next one.",
        )
    )
