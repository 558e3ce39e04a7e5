"""NpuDevice: one NPU (or emulated NPU) with one kernel loaded, serving batches of runs."""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from npu_pipeline import emulator
from npu_pipeline.contract import KernelContract
from npu_pipeline.device import faults, known_answer, memlock
from npu_pipeline.device.builds import KernelBuild
from npu_pipeline.device.discovery import DeviceInfo, chaining, generation_of
from npu_pipeline.device.queue import CommandQueue
from npu_pipeline.device.slots import Slot, SlotBuffers
from npu_pipeline.device.submission import Completion, RunShape, Submission
from npu_pipeline.device.xrt import XrtSession, select_backend
from npu_pipeline.errors import DeviceError, OptionError, ShapeError, detached, explain

#: One wait slice, ms: pyxrt holds the GIL inside ``run.wait``
#: (docs/hardware-facts.md#the-pyxrt-binding).
WAIT_SLICE_MS = 2

#: Seconds a waiter lets the GIL go after a wait slice that did not see its run end:
#: long enough for a thread waiting for the GIL to take it.
YIELD_S = 0.0002

#: The amdxdna driver's limit of commands in flight per hardware context.
MAX_RUNS_IN_FLIGHT = 4

#: Driver watchdog default, seconds (amdxdna ``timeout_in_sec``).
DEFAULT_WATCHDOG_S = 2.0


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

    def __init__(self, session: XrtSession, info: DeviceInfo) -> None:
        self.contract, self.info = session.contract, info
        self._session = session
        self._lock = threading.Lock()
        self._buffers = SlotBuffers(session)
        self._queue = CommandQueue(session, self._buffers, info.runs_in_flight)
        self._shapes: dict[tuple[int, int, int], RunShape] = {}  # legal block -> its sizes
        self._closed = False

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
        runlists: bool | None = None,
        build_dir: str | os.PathLike[str] | None = None,
        **emulator_options: Any,
    ) -> NpuDevice:
        """Open device ``index``, load ``contract``'s xclbin, create its context and kernel.

        Args:
            device: ``"auto"`` (real pyxrt if it imports and finds an NPU, else
                the emulator), ``"emulator"``, or ``"xrt"``.
            profile: a device profile (a ``DeviceProfile``, or any object with
                ``generation``, ``runs_in_flight``, ``watchdog_s``, ``run_seconds``),
                or None. Names are looked up by the caller
                (:func:`npu_pipeline.get_profile`).
            xrt_module: a pyxrt-compatible module to use instead of ``import pyxrt``.
            index: device index.
            timed: emulator only: runs complete no earlier than the profile's
                modelled ``run_seconds`` (figures stay *modelled*).
            runlists: submit the runs of a many-run batch as ``runlist``
                chains when the pyxrt module has ``runlist``; False keeps one
                command per run (the window every XRT version supports); None
                (default): chains on the emulator, single runs on real XRT
                (``info.runlists_reason`` says why).
            build_dir: real XRT: the folder holding the build's xclbin and
                instruction files for the device's generation; default
                ``$NPU_PIPELINE_BUILD_DIR``, else ``build/<generation>`` beside
                the contract's ``kernel.json`` (docs/device.md#kernel-builds).
            emulator_options: passed to ``emulator.device`` (``generation``,
                ``watchdog_s``, ``runs_in_flight``, ``insts_unit``, ``zeros``,
                ``faults``, ...). Planned ``faults`` count the runs after the
                known-answer run, so ``run_index=0`` is the first run you start.

        Every open first runs one known-answer block (the smallest legal one;
        under a millisecond on the emulator with an idle BLAS) and compares it
        exactly: a build that completes without computing is refused here, not
        returned as zeros later (docs/device.md#the-known-answer-run).

        Raises:
            DeviceError: the device cannot be opened (``"xrt"`` without XRT, ...),
                or the known-answer run was wrong (the message says what to check).
            ContractError: the contract has no build for the device's generation,
                a build file is missing (the message names it and the make
                command), or an instruction file's header is wrong.
        """
        if isinstance(profile, str):
            raise DeviceError(
                explain(
                    f"profile={profile!r} (a name) given to NpuDevice.open",
                    "a profile object, or None",
                    f"Pass npu_pipeline.get_profile({profile!r}).",
                )
            )
        backend = select_backend(device, xrt_module)
        is_emulator = backend.module is emulator
        if (emulator_options or timed) and not is_emulator:
            raise DeviceError(
                explain(
                    f"emulator options {sorted(emulator_options) + (['timed'] if timed else [])} "
                    "were given but the device is real XRT",
                    "no emulator options with device='xrt'",
                    "Drop them, or pass device='emulator'.",
                )
            )
        # The real-XRT path driven on the emulator module takes its options too.
        check_device_options(emulator_options, "emulator" if is_emulator else backend.name)
        if timed and profile is None:
            raise DeviceError(
                explain("timed=True without a profile", "a profile", "Pass profile=...")
            )
        runs_in_flight = min(
            MAX_RUNS_IN_FLIGHT, getattr(profile, "runs_in_flight", MAX_RUNS_IN_FLIGHT)
        )
        watchdog_s = getattr(profile, "watchdog_s", DEFAULT_WATCHDOG_S)
        settings: dict[str, Any] = {}
        planned = tuple(emulator_options.pop("faults", ())) if is_emulator else ()
        if is_emulator:
            settings = {
                "runs_in_flight": runs_in_flight,
                "watchdog_s": watchdog_s,
                "generation": getattr(profile, "generation", "npu1"),
                "timing": profile if timed else None,
                **emulator_options,
            }
            runs_in_flight, watchdog_s = settings["runs_in_flight"], settings["watchdog_s"]
        session = XrtSession.open(backend, contract, index, settings)
        try:
            name = session.device_name
            generation = generation_of(name, profile)
            build = KernelBuild.locate(contract, generation, backend.name == "emulator", build_dir)
            build.check(known_answer.block_of(contract, generation))
            session.load(build)
        except BaseException:
            session.close()
            raise
        emulated = backend.name == "emulator"
        chained, chained_why = chaining(runlists, backend.name, session.has_runlists)
        info = DeviceInfo(
            backend=backend.name,
            name=name,
            generation=generation,
            kernel=contract.name,
            runs_in_flight=int(runs_in_flight),
            watchdog_s=float(watchdog_s),
            timing=(
                "modelled"
                if settings.get("timing") is not None
                else ("cpu" if emulated else "hardware")
            ),
            default_profile="cpu" if emulated else generation,
            reason=backend.reason,
            runlists=chained,
            runlists_reason=chained_why,
        )
        npu = cls(session, info)
        try:
            known_answer.check(npu)
            npu._queue.forget_pace()  # the check is not a sample of its block's pace
            session.plan_faults(planned, known_answer.KNOWN_ANSWER_RUNS)
        except BaseException as error:
            npu.close()
            # Raised without the frames that held the known-answer slot's BOs.
            raise detached(error) from error.__cause__
        return npu

    @property
    def build(self) -> KernelBuild | None:
        """Where the loaded xclbin and the instruction streams come from (set by open)."""
        return self._session.build

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
        with self._lock:
            self._check_open()
            return self._buffers.allocate(capacity)

    def memory_budget(self, asked: int | None, default: int) -> int:
        """Pinned bytes all slots may use: ``asked``, or ``default`` capped at what the
        locked-memory limit (``RLIMIT_MEMLOCK``; the emulator's ``memlock_bytes``) leaves.

        Raises:
            DeviceError: ``asked`` does not fit under the limit; it says how to raise it.
        """
        return memlock.budget(asked, default, *self._session.memlock())

    def free_slot(self, slot: Slot) -> None:
        """Release a slot's BOs (idempotent). A run still in flight keeps them until it ends."""
        with self._lock:
            self._buffers.free(slot.index)

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
        queue = self._queue
        try:
            if slot.index in queue.active:
                self._poll_orphans(slot)
            with self._lock:
                self._check_open()
                queue.reap()
                if slot.index in queue.active:
                    raise faults.busy(slot)
                roots = self._buffers.roots_of(slot)
                queue.active[slot.index] = sub
                if n_runs > 1 and self.info.runlists:
                    sub.chain = queue.chain_length(block)
            try:
                for name, size in shape.inputs:
                    self._session.copy_in(roots[name], n_runs * size, first_run * size)
                with self._lock:
                    sub.synced = True
                    queue.fill_queued(sub)
            except BaseException:
                self._finish(sub)
                raise
        except RuntimeError as error:
            translated = faults.translate(error, sub)
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
        try:
            try:
                if not self._drain(sub, deadline, should_stop):
                    with self._lock:
                        oldest = sub.running[0] if sub.running else None
                    state = oldest.state_name() if oldest is not None else None
                    raise faults.late(sub, timeout_s, state)
                if sub.start_error is not None:
                    raise sub.start_error
                if sub.failed is not None:
                    index, command = sub.failed
                    # The emulator raises hazards in the final wait.
                    raise faults.failed(sub, index, command, *command.final())
                if not sub.stopped:
                    out, size = sub.shape.output
                    self._session.copy_out(
                        self._buffers.roots_of(sub.slot)[out],
                        sub.n_runs * size,
                        sub.first_run * size,
                    )
            finally:
                self._finish(sub)
        except RuntimeError as error:
            translated = faults.translate(error, sub)
            if translated is error:
                raise
            raise translated from error
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
        queue = self._queue
        while True:
            if should_stop is not None and not sub.stopped and should_stop():
                sub.stopped = True
            with self._lock:
                queue.reap()
                queue.fill_queued(sub)
                if not sub.running and (sub.stopped or sub.next_run == sub.end_run):
                    return True
                # The device's oldest command, whichever batch it belongs to: commands
                # end in order, so it ends no later than this batch's; and only a poll
                # tells that a chain ended, while its own waiter may be busy (waiting
                # for this very batch) or gone (after a timeout).
                head = queue.head
            if deadline is not None and time.perf_counter() > deadline:
                return False
            if head is None:
                time.sleep(WAIT_SLICE_MS / 1000)
            elif not head.poll(WAIT_SLICE_MS):
                # pyxrt held the GIL through the slice: give it to the host stages now,
                # or they get it only when the interpreter forces a switch (5 ms).
                time.sleep(YIELD_S)

    # -- internals ---------------------------------------------------------------

    def _poll_orphans(self, slot: Slot) -> None:
        """Wait for the chains of a batch whose waiter gave up: only a poll tells that
        a chain ended, and nobody else polls them. A chain's wait is untimed (pyxrt
        binds no timed one that Python can call): at most one chain's device time."""
        queue = self._queue
        with self._lock:
            busy = queue.active.get(slot.index)
            orphans = list(busy.running) if busy is not None and busy.closed else []
            head = queue.head
        for command in orphans:
            if command.chain is None:
                continue  # its state() tells
            if command is not head:
                break  # commands end in order: the head has not been seen to end
            if not command.poll(1):
                break
            with self._lock:
                queue.reap()
                head = queue.head

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError(explain("the NpuDevice is closed", "an open device", "Open one."))

    def _shape(self, block: tuple[int, int, int]) -> RunShape:
        """Check ``block`` once and remember what runs of it need."""
        contract = self.contract
        contract.check_block(block, self.info.generation)
        stride = contract.run_buffer_bytes(block)
        out = contract.output_buffer.name
        shape = RunShape(
            stride=stride,
            inputs=tuple((b.name, stride[b.name]) for b in contract.input_buffers),
            output=(out, stride[out]),
        )
        self._shapes[block] = shape
        return shape

    def _finish(self, sub: Submission) -> None:
        with self._lock:
            self._queue.finish(sub)

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Wait (bounded by the watchdog) for runs in flight, then release everything."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        queue = self._queue
        # The watchdog fires one to two periods after the device's last progress
        # (two to three on the older drivers' two-phase check): wait that long.
        deadline = time.perf_counter() + 3 * self.info.watchdog_s + 1.0
        while time.perf_counter() < deadline:
            with self._lock:
                queue.reap()
                oldest = queue.head
            if oldest is None:
                break
            with contextlib.suppress(RuntimeError):  # a lost device: its runs are over
                oldest.poll(WAIT_SLICE_MS)
        with self._lock:
            queue.clear()
            self._buffers.clear()
        self._session.close()

    def __enter__(self) -> NpuDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
