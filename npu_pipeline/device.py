"""NpuDevice: the only library code that calls pyxrt (real XRT, or the emulated NPU).

One :class:`NpuDevice` opens the device, the xclbin, the hardware context and
the kernel once (doing it per call costs about 95 ms,
docs/hardware-facts.md#setup-and-dispatch-costs) and then
serves batches:

- :meth:`NpuDevice.allocate_slot` makes a :class:`Slot`: one ``host_only`` BO
  per contract buffer in the kernel's group for it, with numpy views over
  ``bo.map()`` so the packer writes in place;
- :meth:`NpuDevice.start` syncs the used input bytes to the device (one sync
  per buffer) and starts the batch's run(s); a batch of many runs (tile pairs
  of the ``tile16_legacy`` contract) uses a sub-buffer per run, derived from
  the root BO;
- :meth:`NpuDevice.wait`, meant for a worker thread, waits in 2 ms slices
  (pyxrt holds the GIL inside ``wait``), keeps up to ``runs_in_flight``
  commands in flight across the device (starting the next as one completes,
  so no ``start`` ever blocks in the driver), then syncs the used output
  bytes back (one sync). A run that does not complete raises
  :class:`DeviceError` naming its state, batch and request.

A command is one run, or (when the pyxrt module has ``runlist``, newer XRT)
a chain of up to 24 runs of one batch submitted as one ``runlist``: the
device then hands off once per chain instead of once per run. Chains are as
long as fit in :data:`CHAIN_BUDGET_S` of device time, measured per block
shape; until a shape has been measured its runs go one per command (see
docs/device.md).

The same code drives real ``pyxrt`` and :mod:`npu_pipeline.emulator`; where
they differ (the instruction stream, and closing the emulator's threads) is
:class:`_Backend`. Nothing here was run on an NPU: the real-XRT path follows
pyxrt's documented API and the mlir-aie host code only (docs/device.md).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import threading
import time
from collections.abc import Callable, Mapping
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
    OptionError,
    ShapeError,
    explain,
)

#: ``device=`` choices of :meth:`NpuDevice.open`.
BACKENDS = ("auto", "emulator", "xrt")

#: One wait slice, ms: pyxrt holds the GIL inside ``run.wait``
#: (docs/hardware-facts.md#the-pyxrt-binding).
WAIT_SLICE_MS = 2

#: The amdxdna driver's limit of commands in flight per hardware context.
MAX_RUNS_IN_FLIGHT = 4

#: Driver watchdog default, seconds (amdxdna ``timeout_in_sec``).
DEFAULT_WATCHDOG_S = 2.0

#: Most runs one ``runlist`` chains into one command (XRT's runlist submits
#: chains of at most 24 runs, ``runlist_impl::submit_size``;
#: docs/hardware-facts.md#runlists).
RUNLIST_MAX = 24

#: Device time one chain of runs may take, seconds. A command costs the host
#: a submission and a completion whatever its length: 45-80 us on hardware
#: (docs/hardware-facts.md#setup-and-dispatch-costs), about 150 us on the
#: emulator here (two thread hand-offs;
#: docs/benchmarks.md). 4 ms keeps that under 4% of the device time; a
#: longer chain only delays cancellation and failure reports and eats into
#: the watchdog's margin (2 s).
CHAIN_BUDGET_S = 0.004

#: Weight of the past in the measured seconds per run of a block shape.
_DECAY = 0.75

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
        runlists: batches of many runs are submitted as ``runlist`` chains
            (the pyxrt module has ``runlist`` and they were not turned off).
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
    """The runs of one batch: made by :meth:`NpuDevice.start`, ended by :meth:`NpuDevice.wait`.

    Attributes (read-only for callers):
        first_run, end_run: the submission runs runs ``first_run .. end_run - 1``
            of its slot.
        next_run: index of the next run to start.
        running: this batch's commands in flight (a run, or a chain of runs),
            oldest first.
    """

    __slots__ = (
        "batch",
        "block",
        "chain",
        "closed",
        "end_run",
        "failed",
        "first_run",
        "n_runs",
        "next_run",
        "request",
        "running",
        "shape",
        "slot",
        "start_error",
        "started_at",
        "stopped",
        "synced",
    )

    def __init__(
        self,
        slot: Slot,
        block: tuple[int, int, int],
        n_runs: int,
        batch: int | None,
        request: int | None,
        shape: _Shape,
        first_run: int = 0,
    ) -> None:
        self.slot, self.block, self.n_runs = slot, block, n_runs
        self.first_run, self.end_run = first_run, first_run + n_runs
        self.batch, self.request = batch, request
        self.shape = shape
        self.started_at = time.perf_counter()
        self.next_run = first_run  # index of the next run to start
        self.running: list[_Command] = []  # commands in flight, oldest first
        # (index of the failed run or None when the device did not say, its command)
        self.failed: tuple[int | None, _Command] | None = None
        self.stopped = False  # start no more runs
        self.synced = False  # inputs synced: its runs may start
        # Raised by wait(): starting a run failed in another batch's start or wait.
        self.start_error: Exception | None = None
        self.closed = False  # wait() has returned or raised
        self.chain = 1  # runs per command, fixed at the first start


@dataclass(frozen=True)
class _Shape:
    """What start and wait need of one block shape, computed once.

    Attributes:
        stride: bytes of each buffer one run uses, by name.
        inputs: (name, bytes per run) of each input buffer.
        output: (name, bytes per run) of the output buffer.
    """

    stride: Mapping[str, int]
    inputs: tuple[tuple[str, int], ...]
    output: tuple[str, int]


class _Flag:
    """A mutable boolean shared by several objects."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False


class _Command:
    """One command in flight: a single run, or a runlist chaining ``count`` runs.

    ``poll`` waits for it (at most ``timeout_ms``) and is the only call that
    blocks. A chain's end is known only from ``runlist.wait`` (XRT does not
    guarantee ``state()`` of runs in a runlist while it executes), so a chain
    records its outcome when a poll sees it end; one thread at a time polls it.
    """

    __slots__ = (
        "chain",
        "count",
        "first",
        "outcome",
        "polling",
        "run",
        "runs",
        "sub",
        "submitted_at",
        "untimed",
    )

    def __init__(
        self,
        sub: Submission,
        first: int,
        count: int,
        run: Any = None,
        chain: Any = None,
        runs: tuple[Any, ...] = (),
        untimed: _Flag | None = None,
    ) -> None:
        self.sub, self.first, self.count = sub, first, count
        self.run, self.chain, self.runs = run, chain, runs
        self.untimed = untimed  # shared by a device's chains: no timed runlist.wait
        self.polling = threading.Lock() if chain is not None else None
        self.submitted_at = time.perf_counter()
        # Once ended: (completed, index of the failed run or None, state name, exception).
        self.outcome: tuple[bool, int | None, str, BaseException | None] | None = None

    def ended(self, completed: int) -> bool:
        """Whether the command has ended, without blocking."""
        if self.outcome is not None:
            return True
        if self.chain is not None:
            return False
        state = self.run.state()
        if int(state) < completed:
            return False
        ok = int(state) == completed
        self.outcome = (ok, None if ok else self.first, _state_name(state), None)
        return True

    def poll(self, timeout_ms: int, completed: int) -> bool:
        """Wait up to ``timeout_ms`` for the command's end; whether it has ended."""
        if self.outcome is not None:
            return True
        if self.chain is None:
            try:
                self.run.wait(timeout_ms)
            except BufferHazardError as error:  # emulator: the run ended in ERROR
                self.outcome = (False, self.first, "ERT_CMD_STATE_ERROR", error)
                return True
            return self.ended(completed)
        if not self.polling.acquire(timeout=timeout_ms / 1000):
            return self.outcome is not None  # another thread polled it meanwhile
        try:
            if self.outcome is None:
                self._wait_chain(timeout_ms, completed)
        finally:
            self.polling.release()
        return self.outcome is not None

    def _wait_chain(self, timeout_ms: int, completed: int) -> None:
        try:
            if self.untimed.value:
                # This pyxrt's runlist.wait(timeout) does not take (or return) the
                # stub's types. The untimed wait blocks until the chain ends: at most
                # about CHAIN_BUDGET_S, as only the oldest command in flight is polled.
                self.chain.wait()
                state = "ERT_CMD_STATE_COMPLETED"
            else:
                try:
                    state = self.chain.wait(timeout_ms)
                except TypeError:
                    self.untimed.value = True
                    self.chain.wait()
                    state = "ERT_CMD_STATE_COMPLETED"
        except BufferHazardError as error:
            self.outcome = (False, *self._failed_run(completed, None), error)
        except RuntimeError as error:  # XRT raises when a run of the list failed
            said = getattr(error, "state", None)
            self.outcome = (False, *self._failed_run(completed, said), None)
        else:
            name = state if isinstance(state, str) else _state_name(state)
            if name == "ERT_CMD_STATE_COMPLETED" or (
                name != "ERT_CMD_STATE_TIMEOUT" and int(state) >= completed
            ):
                self.outcome = (True, None, "ERT_CMD_STATE_COMPLETED", None)

    def _failed_run(self, completed: int, said: str | None) -> tuple[int | None, str]:
        """The first run of a failed chain that did not complete, and its state.

        XRT marks the failed run's state and aborts the later ones when the
        list's wait throws; when no run says so, the chain's range is reported.
        """
        for position, r in enumerate(self.runs):
            state = r.state()
            if int(state) != completed:
                return self.first + position, _state_name(state)
        return None, said or "ERT_CMD_STATE_ERROR"

    def final(self) -> str:
        """The state name of a failed command; raises the hazard the emulator reported."""
        assert self.outcome is not None
        if self.chain is None and self.outcome[3] is None:
            # pyxrt's final wait (the emulator raises a mapped-write hazard here).
            return _state_name(self.run.wait())
        if self.outcome[3] is not None:
            raise self.outcome[3]
        return self.outcome[2]

    def state_name(self) -> str:
        """The current state, for messages."""
        if self.outcome is not None:
            return self.outcome[2]
        if self.chain is not None:
            return "ERT_CMD_STATE_NEW"
        return _state_name(self.run.state())


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


def check_device_options(options: Mapping[str, Any], device: str = "auto") -> None:
    """Refuse option names that :meth:`NpuDevice.open` on ``device`` does not accept.

    Accepted on every backend: the keyword arguments of ``NpuDevice.open``
    other than ``contract``, ``device``, ``profile`` and ``timed`` (arguments
    of their own, in ``open_pipeline`` too); unless ``device="xrt"``, also the emulated
    device's (``generation``, ``watchdog_s``, ``faults``, ...). Both lists are
    read from the signatures, so they cannot drift from what the calls take.

    Raises:
        OptionError: an unknown name; the message lists the accepted ones.
    """
    own = {"contract", "device", "profile", "timed"}
    accepted = _keywords(NpuDevice.open) - own
    if device != "xrt":
        accepted |= _keywords(emulator.device)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise OptionError(
            explain(
                f"unknown device option(s) {unknown} for device={device!r}",
                f"option names among {sorted(accepted)}",
                "Check the spelling; the kernel, device, profile and timed are arguments "
                "of their own.",
            )
        )


def _keywords(function: Callable[..., Any]) -> set[str]:
    return {
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


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
        self._in_flight: list[_Command] = []  # every command in flight, oldest first
        self._active: dict[int, Submission] = {}  # slot index -> its unfinished submission
        self._roots: dict[int, dict[str, Any]] = {}  # slot index -> root BO per buffer
        self._subs: dict[tuple[int, str, int], list[Any]] = {}  # (slot, buffer, stride) -> BOs
        self._instr: dict[tuple[int, int, int], tuple[Any, int]] = {}  # block -> (BO, n_insts)
        self._shapes: dict[tuple[int, int, int], _Shape] = {}  # legal block -> its sizes
        # (slot, block, run) -> run object with its arguments set: started again.
        self._runs: dict[tuple[int, tuple[int, int, int], int], Any] = {}
        # (slot, block, first run, runs) -> (runlist, its runs): re-executed, as XRT allows.
        self._chains: dict[tuple[int, tuple[int, int, int], int, int], tuple[Any, tuple]] = {}
        # block -> (decayed seconds, decayed runs) observed: seconds per run of the shape.
        self._pace: dict[tuple[int, int, int], tuple[float, float]] = {}
        self._last_end = 0.0  # when the last command was seen to end (perf_counter)
        self._untimed = _Flag()  # set if this pyxrt's runlist.wait(timeout) does not work
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
        runlists: bool = True,
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
            runlists: submit the runs of a many-run batch as ``runlist``
                chains when the pyxrt module has ``runlist``; False keeps one
                command per run (the window every XRT version supports).
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
        check_device_options(emulator_options, backend.name)
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
            runlists=bool(runlists) and hasattr(xrt, "runlist"),
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
            for key in [key for key in self._chains if key[0] == slot.index]:
                del self._chains[key]
            for key in [key for key in self._runs if key[0] == slot.index]:
                del self._runs[key]

    # -- runs --------------------------------------------------------------------

    def start(
        self,
        slot: Slot,
        block: tuple[int, int, int],
        n_runs: int = 1,
        batch: int | None = None,
        request: int | None = None,
        first_run: int = 0,
    ) -> Submission:
        """Sync the used input bytes of ``slot`` to the device and start its runs.

        The slot holds runs of ``block`` side by side: run ``i`` uses bytes
        ``[i * s, (i + 1) * s)`` of each buffer, ``s`` being the bytes one run
        needs. This starts runs ``first_run .. first_run + n_runs - 1``, so a
        caller can run again part of what a failed submission lost: as many
        as the in-flight limit allows now; the rest start as places free, in
        the order batches were started, from whichever :meth:`wait` is running.

        Raises:
            BufferHazardError: the slot's previous batch still has runs in flight.
            ShapeError: the slot is too small for ``n_runs`` runs of ``block``.
            ContractError: ``block`` is not legal for the contract.
            DeviceError: the device refused a call.
        """
        block = tuple(block)
        shape = self._shapes.get(block) or self._shape(block)
        capacity = slot.capacity
        for name, size in shape.stride.items():
            if n_runs < 1 or first_run < 0 or (first_run + n_runs) * size > capacity[name]:
                raise ShapeError(
                    explain(
                        f"runs {first_run}..{first_run + n_runs - 1} of block {block} need "
                        f"{(first_run + n_runs) * size} bytes of buffer {name!r}; "
                        f"the slot has {capacity[name]}",
                        "n_runs >= 1 and first_run >= 0, all runs within the slot",
                        "Allocate a larger slot.",
                    )
                )
        sub = Submission(slot, block, n_runs, batch, request, shape, first_run)
        try:
            if slot.index in self._active:
                self._poll_orphans(slot)
            with self._lock:
                self._check_open()
                self._reap()
                if slot.index in self._active:
                    raise _busy(slot)
                roots = self._roots_of(slot)
                self._active[slot.index] = sub
                if n_runs > 1 and self.info.runlists:
                    sub.chain = self._chain_length(block)
            try:
                for name, size in shape.inputs:
                    roots[name].sync(self._to_device, n_runs * size, first_run * size)
                with self._lock:
                    sub.synced = True
                    self._fill_queued(sub)
            except BaseException:
                self._finish(sub)
                raise
        except RuntimeError as error:
            translated = self._translate(error, sub)
            if translated is error:
                raise
            raise translated from error
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
            try:
                late = not self._drain(sub, deadline, should_stop)
                if late:
                    with self._lock:
                        oldest = sub.running[0] if sub.running else None
                    late_state = oldest.state_name() if oldest is not None else None
                elif sub.start_error is not None:
                    raise sub.start_error
                elif sub.failed is not None:
                    failed_state = sub.failed[1].final()  # the emulator raises hazards here
                elif not sub.stopped:
                    out, size = sub.shape.output
                    self._roots_of(sub.slot)[out].sync(
                        self._from_device, sub.n_runs * size, sub.first_run * size
                    )
            finally:
                self._finish(sub)
        except RuntimeError as error:
            translated = self._translate(error, sub)
            if translated is error:
                raise
            raise translated from error
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
            index, command = sub.failed
            which = (
                f"run {index}"
                if index is not None
                else f"a run of runs {command.first}..{command.first + command.count - 1}"
            )
            raise DeviceError(
                explain(
                    f"{which} of batch {sub.batch} (request {sub.request}) ended in {failed_state}",
                    "ERT_CMD_STATE_COMPLETED",
                    "The batch's output is lost; retry it or fail its request.",
                ),
                state=failed_state,
                batch=sub.batch,
                request=sub.request,
                run=index,
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
        completed = self._completed
        while True:
            if should_stop is not None and not sub.stopped and should_stop():
                sub.stopped = True
            with self._lock:
                self._reap()
                self._fill_queued(sub)
                if not sub.running and (sub.stopped or sub.next_run == sub.end_run):
                    return True
                # The device's oldest command, whichever batch it belongs to: commands
                # end in order, so it ends no later than this batch's; and only a poll
                # tells that a chain ended, while its own waiter may be busy (waiting
                # for this very batch) or gone (after a timeout).
                head = self._in_flight[0] if self._in_flight else None
            if deadline is not None and time.perf_counter() > deadline:
                return False
            if head is None:
                time.sleep(WAIT_SLICE_MS / 1000)
            else:
                head.poll(WAIT_SLICE_MS, completed)

    # -- internals (hold self._lock where noted) ---------------------------------

    @staticmethod
    def _translate(error: RuntimeError, sub: Submission) -> RuntimeError:
        """Turn a failed pyxrt call into DeviceError naming the batch and request.

        Rule violations (DriverRuleError, BufferHazardError) are bugs in host
        code, not device faults: they pass unchanged.
        """
        if isinstance(error, DriverRuleError):
            return error
        if isinstance(error, DeviceError):
            if error.batch is not None or error.request is not None:
                return error
            translated = DeviceError(
                str(error), state=error.state, batch=sub.batch, request=sub.request
            )
        else:
            translated = DeviceError(
                explain(
                    f"XRT call failed: {error}",
                    "a working device",
                    "Check `xrt-smi examine` and dmesg; reopen the device.",
                ),
                batch=sub.batch,
                request=sub.request,
            )
        return translated

    def _poll_orphans(self, slot: Slot) -> None:
        """Look (1 ms at most each) whether the chains of a batch whose waiter gave up
        have ended: only a poll tells, and nobody else polls them."""
        with self._lock:
            busy = self._active.get(slot.index)
            orphans = list(busy.running) if busy is not None and busy.closed else []
            head = self._in_flight[0] if self._in_flight else None
        for command in orphans:
            if command.chain is None:
                continue  # its state() tells
            if command is not head:
                break  # commands end in order: the head has not been seen to end
            if not command.poll(1, self._completed):
                break
            with self._lock:
                self._reap()
                head = self._in_flight[0] if self._in_flight else None

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError(explain("the NpuDevice is closed", "an open device", "Open one."))

    def _shape(self, block: tuple[int, int, int]) -> _Shape:
        """Check ``block`` once and remember what runs of it need."""
        contract = self.contract
        contract.check_block(block, self.info.generation)
        stride = contract.run_buffer_bytes(block)
        out = contract.output_buffer.name
        shape = _Shape(
            stride=stride,
            inputs=tuple((b.name, stride[b.name]) for b in contract.input_buffers),
            output=(out, stride[out]),
        )
        self._shapes[block] = shape
        return shape

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
        """The BO of each buffer for run ``run``: the root for a lone run 0, else a
        cached sub-buffer (lock held)."""
        roots = self._roots_of(sub.slot)
        if sub.n_runs == 1 and run == 0:
            return [roots[b.name] for b in self.contract.buffers]
        bos = []
        for name, stride in sub.shape.stride.items():
            subs = self._subs.setdefault((sub.slot.index, name, stride), [])
            while len(subs) <= run:
                subs.append(self._xrt.bo(roots[name], stride, len(subs) * stride))
            bos.append(subs[run])
        return bos

    def _chain_length(self, block: tuple[int, int, int]) -> int:
        """Runs per command for a batch of ``block``: as many as fit in the chain budget
        at the measured pace, at most 24; one until the shape has been measured (lock held)."""
        pace = self._pace.get(block)
        if pace is None:
            return 1
        seconds = pace[0] / pace[1]
        if seconds <= CHAIN_BUDGET_S / RUNLIST_MAX:
            return RUNLIST_MAX
        return max(1, min(RUNLIST_MAX, int(CHAIN_BUDGET_S / seconds)))

    def _run(self, sub: Submission, index: int) -> Any:
        """The run object of run ``index`` of ``sub``'s slot, its arguments set (lock held).

        Made once per slot, block and index and started again for later
        batches (``run.start()`` of a run that ended), which spares creating a
        run (and its command buffer) and setting its arguments per start.
        """
        key = (sub.slot.index, sub.block, index)
        run = self._runs.get(key)
        if run is None:
            instr, n_insts = self._instructions(sub.block)
            run = self._xrt.run(self._kernel)
            for position, value in enumerate(
                (self.contract.opcode, instr, n_insts, *self._run_bos(sub, index))
            ):
                run.set_arg(position, value)
            self._runs[key] = run
        return run

    def _chain(self, sub: Submission, first: int, count: int) -> tuple[Any, tuple]:
        """The runlist of runs ``first .. first + count - 1`` of ``sub``'s slot (lock held).

        Made once per slot, block and range, and executed again for later
        batches (XRT allows it once the list was waited for).
        """
        key = (sub.slot.index, sub.block, first, count)
        cached = self._chains.get(key)
        if cached is None:
            xrt = self._xrt
            instr, n_insts = self._instructions(sub.block)
            chain = xrt.runlist(self._context)
            runs = []
            for index in range(first, first + count):
                r = xrt.run(self._kernel)
                for position, value in enumerate(
                    (self.contract.opcode, instr, n_insts, *self._run_bos(sub, index))
                ):
                    r.set_arg(position, value)
                chain.add(r)
                runs.append(r)
            cached = self._chains[key] = (chain, tuple(runs))
        return cached

    def _fill_queued(self, own: Submission) -> None:
        """Start runs of every started batch, oldest first, while the device has room
        (lock held).

        Not only ``own``'s: runs left over when the device was full would
        otherwise wait for their own batch's ``wait()``, and a caller waiting
        for an older batch first (the pipeline drains in order) would leave
        the device idle meanwhile. An error starting ``own``'s runs is raised;
        another batch's is kept for its ``wait()`` to raise.
        """
        for sub in self._active.values():  # _fill never adds or removes a batch
            if len(self._in_flight) >= self.info.runs_in_flight:
                return
            if sub is own:
                self._fill(sub)
            elif sub.synced and not sub.closed and sub.start_error is None:
                try:
                    self._fill(sub)
                except Exception as error:
                    sub.start_error = error

    def _fill(self, sub: Submission) -> None:
        """Start commands of ``sub`` while the device has room (lock held)."""
        limit = self.info.runs_in_flight
        if sub.stopped or sub.next_run >= sub.end_run or len(self._in_flight) >= limit:
            return
        while not sub.stopped and sub.next_run < sub.end_run and len(self._in_flight) < limit:
            first = sub.next_run
            count = min(sub.chain, sub.end_run - first)
            sub.next_run += count
            try:
                if count == 1:
                    run = self._run(sub, first)
                    run.start()
                    command = _Command(sub, first, 1, run=run)
                else:
                    chain, runs = self._chain(sub, first, count)
                    chain.execute()
                    command = _Command(
                        sub, first, count, chain=chain, runs=runs, untimed=self._untimed
                    )
            except BaseException:
                sub.stopped = True
                raise
            sub.running.append(command)
            self._in_flight.append(command)

    def _reap(self) -> None:
        """Retire every command in flight that has ended, whichever batch it belongs to
        (lock held)."""
        in_flight = self._in_flight
        if not in_flight:
            return
        completed = self._completed
        ended = [command.ended(completed) for command in in_flight]
        if not any(ended):
            return
        now = time.perf_counter()
        still = []
        for command, done in zip(in_flight, ended, strict=True):
            if not done:
                still.append(command)
                continue
            sub = command.sub
            sub.running.remove(command)
            ok, index, _, _ = command.outcome
            if ok:
                self._observe(command, now)
            else:
                self._pace.pop(sub.block, None)  # slow down again after a failure
                if sub.failed is None:
                    sub.failed, sub.stopped = (index, command), True
            if sub.closed and not sub.running and self._active.get(sub.slot.index) is sub:
                del self._active[sub.slot.index]
        self._in_flight = still

    def _observe(self, command: _Command, now: float) -> None:
        """Account a completed command's device time to its block shape (lock held).

        The command reached the device at its submission or when the one
        before it ended (in order, one context), so the time charged is at
        least its device time: host delays make the estimate longer, and
        chains shorter, never the reverse.
        """
        began = max(command.submitted_at, self._last_end)
        self._last_end = now
        block = command.sub.block
        seconds, runs = self._pace.get(block, (0.0, 0.0))
        self._pace[block] = (
            _DECAY * seconds + max(0.0, now - began),
            _DECAY * runs + command.count,
        )

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
                oldest = self._in_flight[0] if self._in_flight else None
            if oldest is None:
                break
            with contextlib.suppress(RuntimeError):  # a lost device: its runs are over
                oldest.poll(WAIT_SLICE_MS, self._completed)
        dev = self._device
        with self._lock:
            self._in_flight.clear()
            self._active.clear()
            self._chains.clear()
            self._runs.clear()
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
