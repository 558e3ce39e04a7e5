"""The device thread of one hardware context: a FIFO command queue, like the NPU's.

Each ``hw_context`` owns one :class:`CommandQueue` and its thread. A command
is one started run, or one executed ``runlist`` (its runs in order). The
thread takes commands first in, first out, and for each run:

1. applies an injected fault, if one is planned for it (see ``_faults``);
2. ends the run in ``ERT_CMD_STATE_ERROR`` if its instruction stream was
   malformed;
3. computes the block bit-exactly from the BOs' device copies (GIL released
   inside numpy);
4. with a timing model, holds the run until its modelled completion
   ``max(submitted, previous completion) + run_seconds``, never earlier than
   the real compute end (a run submitted while the previous one executed is
   modelled as queued: ``queued_dispatch_s`` in place of ``dispatch_s``);
5. applies the device-wide watchdog (``DeviceState.watchdog_deadline``): a
   run still on the device when no context made progress for a period ends
   in ``ERT_CMD_STATE_TIMEOUT``, and the recovery restarts every context of
   the device: every other run in flight on any of them ends in
   ``ERT_CMD_STATE_ABORT`` (amdxdna TDR, see docs/emulator.md).

A run that ends in any state other than COMPLETED leaves its context *out of
step*: the design's cores loop forever and no longer match what the host
submits, so every later run on that context ends in ``ERT_CMD_STATE_ERROR``
until the host creates a new ``hw_context``.

At most ``runs_in_flight`` commands are in flight (queued or executing); a
further ``submit`` blocks until one completes, as the driver's does. A
command's place is given back before its last run is seen to end. Runs of a
runlist on consecutive sub-buffers are computed together when
every per-run rule allows it (see ``_run_group``).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from npu_pipeline.contract import KernelContract
from npu_pipeline.emulator._buffers import Use
from npu_pipeline.emulator._compute import can_group, execute, product_of_runs, write_runs
from npu_pipeline.emulator._enums import ert_cmd_state
from npu_pipeline.emulator._faults import FaultKind
from npu_pipeline.emulator._instructions import InstructionStream
from npu_pipeline.emulator._state import DeviceState
from npu_pipeline.errors import DriverRuleError, explain
from npu_pipeline.exact import Scratch

_log = logging.getLogger(__name__)

#: Name prefix of every emulator device thread (see :func:`live_device_threads`).
THREAD_PREFIX = "npu-emulator-"

#: Longest a closing context waits for its thread to finish the run it computes, seconds.
JOIN_TIMEOUT_S = 60.0

_thread_numbers = itertools.count()

COMPLETED = ert_cmd_state.ERT_CMD_STATE_COMPLETED
ERROR = ert_cmd_state.ERT_CMD_STATE_ERROR
ABORT = ert_cmd_state.ERT_CMD_STATE_ABORT
TIMEOUT = ert_cmd_state.ERT_CMD_STATE_TIMEOUT


def live_device_threads() -> int:
    """Emulator device threads still alive (one per open hw_context)."""
    return sum(t.name.startswith(THREAD_PREFIX) for t in threading.enumerate())


class Launch:
    """One started run as the device sees it.

    Attributes:
        run: the ``run`` object; the queue ends it with ``_end`` and ``_signal``.
        index: the run's device-wide number.
        fault: the fault injected for this run, if any.
        contract: what the kernel computes.
        stream: the decoded instruction stream, or ``None`` if malformed.
        views: uint8 views of each buffer's device copy, sized for the block.
        uses: the byte ranges the run holds while in flight.
        watched: the uses whose host bytes were recorded at start (mapped
            BOs, when mapped-write detection is on): checked again at the end.
        submitted_at: ``time.perf_counter()`` when the run was started.
    """

    __slots__ = (
        "contract",
        "fault",
        "index",
        "run",
        "stream",
        "submitted_at",
        "uses",
        "views",
        "watched",
    )

    def __init__(
        self,
        run: Any,
        index: int,
        fault: FaultKind | None,
        contract: KernelContract,
        stream: InstructionStream | None,
        views: Mapping[str, np.ndarray],
        uses: list[Use],
        submitted_at: float,
    ) -> None:
        self.run, self.index, self.fault, self.contract = run, index, fault, contract
        self.stream, self.views, self.uses = stream, views, uses
        self.watched = [use for use in uses if use.watched]
        self.submitted_at = submitted_at


class Command:
    """One unit of the queue: a started run, or an executed runlist.

    Attributes:
        launches: its runs, in order.
        done: set when every run ended (a runlist waits on it), or ``None``
            for a single run (whose own ``wait`` is enough).
        failed: position in ``launches`` of the first run that did not end
            in ``ERT_CMD_STATE_COMPLETED``, once the command ended.
    """

    __slots__ = ("done", "failed", "launches")

    def __init__(self, launches: list[Launch], done: threading.Event | None = None) -> None:
        self.launches = launches
        self.done = done
        self.failed: int | None = None

    def finish_all(self, state: ert_cmd_state, stale: bool = False) -> None:
        """End every run of the command in ``state`` (a command that never executes);
        ``stale``: as an older driver ends a command it reset (see ``run._end``)."""
        for launch in self.launches:
            launch.run._finish(launch, state, stale=stale)
        if self.launches and state != COMPLETED:
            self.failed = 0
        if self.done is not None:
            self.done.set()


class CommandQueue:
    """FIFO of commands of one hardware context, executed by one device thread."""

    def __init__(self, state: DeviceState) -> None:
        self._state = state
        self._cond = threading.Condition()
        self._pending: deque[Command] = deque()
        self._in_flight = 0
        self._closing = False
        self._stop = threading.Event()  # set (under _cond) when the context closes
        self._resets = 0  # watchdog recoveries of the device seen by this context
        #: Why the context's design is out of step with the host, once a run failed.
        self.out_of_step: str | None = None
        self._last_completion = 0.0
        # Until when the device thread sleeps through modelled device time (perf_counter
        # seconds): a blocked pyxrt call holds the GIL that long (see _gil).
        self.busy_until = 0.0
        self._scratch = Scratch()  # used only by the device thread
        self._thread = threading.Thread(
            target=self._loop, name=f"{THREAD_PREFIX}{next(_thread_numbers)}", daemon=True
        )
        state.register(self)
        self._thread.start()

    # -- host side -------------------------------------------------------------

    def submit(self, command: Command) -> None:
        """Queue a command; block while ``runs_in_flight`` commands are in flight.

        Raises:
            DriverRuleError: the context is closed.
        """
        with self._cond:
            while self._in_flight >= self._state.runs_in_flight and not self._closing:
                self._cond.wait()
            if self._closing:
                raise DriverRuleError(
                    explain(
                        "a run was started on a closed hw_context",
                        "an open hw_context",
                        "Create a new hw_context and kernel.",
                    )
                )
            self._in_flight += 1
            self._pending.append(command)
            self._cond.notify_all()
        self._state.signal()

    def abort_pending(self) -> None:
        """End every queued (not yet executing) command in ERT_CMD_STATE_ABORT."""
        with self._cond:
            aborted = list(self._pending)
            self._pending.clear()
        for command in aborted:
            command.finish_all(ABORT)
        self._retire(len(aborted))

    def reset(self, hung: bool) -> None:
        """The watchdog's recovery stops and restarts this context: its queued runs
        abort, its executing run ends (TIMEOUT if ``hung``, else ABORT), and its
        design is out of step from now on."""
        with self._cond:
            self._resets += 1
            aborted = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        self._lose_step(
            "the driver watchdog reset every hardware context of the device"
            + ("" if hung else " (after a hang on another context)")
        )
        for command in aborted:
            command.finish_all(ABORT, stale=self._state.reset_leaves_new)
        self._retire(len(aborted))

    def _lose_step(self, cause: str) -> None:
        """Mark the context out of step after ``cause`` (the first cause is kept)."""
        with self._cond:
            if self.out_of_step is not None:
                return
            self.out_of_step = explain(
                f"{cause}; the design's cores loop forever and are now out of step with "
                "the host, so every later run on this hw_context ends in ERT_CMD_STATE_ERROR",
                "runs on a hw_context whose runs all completed",
                "Recreate the hw_context and its kernel (and runs) before the next run.",
            )
        _log.warning("emulated NPU: %s", self.out_of_step)

    def close(self) -> None:
        """Abort queued runs, stop the device thread and join it (unless called from it)."""
        with self._cond:
            self._closing = True
            self._stop.set()
            self._cond.notify_all()
        self.abort_pending()
        if threading.current_thread() is not self._thread:
            self._thread.join(JOIN_TIMEOUT_S)

    # -- device thread ---------------------------------------------------------

    def _retire(self, n: int) -> None:
        with self._cond:
            self._in_flight -= n
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                command = self._pending.popleft()
            self._run_command(command)
            # A finished command must not stay referenced from this frame: its runs
            # hold the kernel and so the hw_context, which is closed when collected.
            del command

    def _run_command(self, command: Command) -> None:
        launches = command.launches
        position = 0
        stale_resets = self._state.reset_leaves_new
        try:
            while position < len(launches):
                if (
                    position < len(launches) - 1
                    and command.failed is None
                    and not self._stop.is_set()
                ):
                    end = self._group_end(launches, position)
                    if end - position > 1:
                        done = self._run_group(command, position, end)
                        position += done
                        if done:
                            continue  # what is left of the group runs one by one
                # A failed run ends the rest of its runlist (XRT skips them as ABORT).
                skip = command.failed is not None or self._stop.is_set()
                resets = self._resets
                state = ABORT if skip else self._execute(launches[position], resets)
                self._last_completion = time.perf_counter()
                stale = stale_resets and not skip and self._resets != resets
                self._complete(command, position, state, stale=stale)
                position += 1
        except Exception:
            # A bug in the emulator itself. Were this thread to die, every
            # waiter would block forever: report it as a lost device instead
            # (what XRT reports as ENODEV), loudly, and end the remaining runs.
            _log.exception("emulated NPU failed while executing a command")
            self._state.lose()
            for rest in range(position, len(launches)):
                self._complete(command, rest, ABORT)

    def _complete(
        self,
        command: Command,
        position: int,
        state: ert_cmd_state,
        checked: bool = False,
        stale: bool = False,
    ) -> None:
        """End run ``position`` of ``command``; after its last run, end the command.

        The command's in-flight slot is given back before its last run is
        seen to end, so a host that starts the next run as soon as it sees
        the end never blocks on the slot. A run the device failed leaves
        the context out of step (a mapped-write hazard does not: the device
        ran it).
        """
        launch = command.launches[position]
        self._state.signal()
        if state != COMPLETED:
            self._lose_step(f"run #{launch.index} ended in {state.name}")
        final = launch.run._end(launch, state, checked, stale=stale)
        if final != COMPLETED and command.failed is None:
            command.failed = position
        if position < len(command.launches) - 1:
            launch.run._signal()
            return
        self._retire(1)
        launch.run._signal()
        if command.done is not None:
            command.done.set()

    # -- runs of a runlist computed together ---------------------------------------
    #
    # A runlist of small runs (tile pairs of 16x16x16, or the small gemm blocks
    # of short batches sharing a slot) spends much of its device time in per-run
    # Python and numpy calls, not arithmetic. Consecutive runs of one stream
    # whose buffers are consecutive equal slices of the same BOs (sub-buffers
    # of one root, as NpuDevice lays a batch out) are computed in one batched
    # product into scratch. Nothing is written, and no run ends, unless every
    # per-run rule holds as it would run by run: no timing model, no fault
    # planned, the device not lost, the context not closing, the watchdog not
    # passed, and no mapped-write hazard (checked per run, in order: from the
    # first run with one, the runs go one by one, so that run ends in ERROR
    # and the rest ABORT with their outputs unwritten, exactly as without
    # grouping).

    def _group_end(self, launches: list[Launch], position: int) -> int:
        """End (exclusive) of the runs from ``position`` that can be computed together."""
        first = launches[position]
        stream = first.stream
        if (
            self._state.timing is not None
            or self.out_of_step is not None
            or first.fault is not None
            or stream is None
            or not can_group(first.contract, stream)
        ):
            return position
        # The data buffers, in contract order (the last use is the instruction BO):
        # (storage, start of run `position`, bytes per run).
        data = [(use.storage, use.start, use.end - use.start) for use in first.uses[:-1]]
        end = position + 1
        while end < len(launches):
            launch = launches[end]
            if (
                launch.fault is not None
                or launch.contract is not first.contract
                or (launch.stream is not stream and launch.stream != stream)
            ):
                break
            step = end - position
            for use, (storage, start, size) in zip(launch.uses, data, strict=False):
                if (
                    use.storage is not storage
                    or use.start != start + step * size
                    or use.end - use.start != size
                ):
                    return end
            end += 1
        return end

    def _run_group(self, command: Command, position: int, end: int) -> int:
        """Compute runs ``position .. end - 1`` of ``command`` together; end the leading
        runs that complete; return how many did (0: they must go one by one)."""
        state = self._state
        group = command.launches[position:end]
        first = group[0]
        contract = first.contract
        device_start = max(first.submitted_at, self._last_completion)
        resets = self._resets
        runs = len(group)
        # Each buffer's bytes of every run of the group, a run per row (as _group_end checked).
        rows = {
            spec.name: use.storage.device[
                use.start : use.start + runs * (use.end - use.start)
            ].reshape(runs, -1)
            for spec, use in zip(contract.buffers, first.uses, strict=False)
        }
        product = product_of_runs(contract, first.stream, rows, self._scratch)
        now = time.perf_counter()
        if (
            state.lost
            or self._stop.is_set()
            or self._resets != resets
            or now >= state.watchdog_deadline(device_start)
        ):
            return 0
        done = runs
        for index, launch in enumerate(group):
            if any(use.host_changed() for use in launch.watched):
                done = index
                break
        if done:
            write_runs(contract, product[:done], rows[contract.output_buffer.name][:done])
        for index in range(position, position + done):
            self._last_completion = now
            self._complete(command, index, COMPLETED, checked=True)
        return done

    def _sleep_until(self, deadline: float, resets: int) -> bool:
        """Sleep until ``deadline`` (perf_counter s, may be inf); False if the context
        closed or the device was reset meanwhile."""
        # Announced to GIL-holding waiters (emulator/_gil.py); never an endless
        # hold (a hang with the watchdog off): the reset that ends it needs the GIL.
        self.busy_until = 0.0 if math.isinf(deadline) else deadline
        with self._cond:
            woken = self._cond.wait_for(
                lambda: self._stop.is_set() or self._resets != resets,
                None if math.isinf(deadline) else max(0.0, deadline - time.perf_counter()),
            )
        return not woken

    def _hold(self, started: float, until: float, resets: int) -> ert_cmd_state:
        """Keep a run that reached the device at ``started`` on it until ``until``
        (inf: a hang), unless the watchdog fires first (TIMEOUT, after recovering the
        device), the device is reset by another context's hang or the context closes
        (ABORT). Other contexts' progress pushes the watchdog's deadline back."""
        state = self._state
        while True:
            deadline = state.watchdog_deadline(started)
            if until <= deadline:
                return COMPLETED if self._sleep_until(until, resets) else ABORT
            if not self._sleep_until(deadline, resets):
                return ABORT
            if time.perf_counter() >= state.watchdog_deadline(started):
                state.recover(self)
                return TIMEOUT

    def _execute(self, launch: Launch, resets: int) -> ert_cmd_state:
        state = self._state
        # When the run reached the device: its start, or the previous run's end (FIFO).
        device_start = max(launch.submitted_at, self._last_completion)
        if state.lost:
            return ABORT
        if launch.fault is FaultKind.DEVICE_LOST:
            state.lose()
            return ABORT
        if self.out_of_step is not None:
            launch.run._why = self.out_of_step
            return ERROR
        if launch.fault is FaultKind.HANG:
            return self._hold(device_start, math.inf, resets)
        if launch.fault is FaultKind.ERROR or launch.stream is None:
            return ERROR
        block = launch.stream.block
        queued = launch.submitted_at < self._last_completion  # it waited for the run before
        modelled = state.timing(launch.contract, block, queued) if state.timing else None
        execute(launch.contract, launch.stream, launch.views, self._scratch)
        if modelled is not None:
            ended = self._hold(device_start, device_start + modelled, resets)
        elif self._resets != resets:
            ended = ABORT
        elif time.perf_counter() >= state.watchdog_deadline(device_start):
            state.recover(self)
            ended = TIMEOUT
        else:
            ended = COMPLETED
        # Another context may have lost the device while this run computed.
        return ABORT if state.lost else ended
