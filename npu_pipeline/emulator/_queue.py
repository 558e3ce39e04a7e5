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
   the real compute end;
5. applies the watchdog: a run whose device time exceeds ``watchdog_s`` ends
   in ``ERT_CMD_STATE_TIMEOUT`` and every other run queued on the context in
   ``ERT_CMD_STATE_ABORT`` (amdxdna TDR, see docs/emulator.md).

At most ``runs_in_flight`` commands are in flight (queued or executing); a
further ``submit`` blocks until one completes, as the driver's does.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from npu_pipeline.contract import KernelContract
from npu_pipeline.emulator._buffers import Use
from npu_pipeline.emulator._compute import Scratch, execute
from npu_pipeline.emulator._enums import ert_cmd_state
from npu_pipeline.emulator._faults import FaultKind
from npu_pipeline.emulator._instructions import InstructionStream
from npu_pipeline.emulator._state import DeviceState
from npu_pipeline.errors import DriverRuleError, explain

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


@dataclass(frozen=True, eq=False)
class Launch:
    """One started run as the device sees it.

    Attributes:
        run: the ``run`` object; the queue calls its ``_finish(launch, state)``.
        index: the run's device-wide number.
        fault: the fault injected for this run, if any.
        contract: what the kernel computes.
        stream: the decoded instruction stream, or ``None`` if malformed.
        views: uint8 views of each buffer's device copy, sized for the block.
        uses: the byte ranges the run holds while in flight.
        submitted_at: ``time.perf_counter()`` when the run was started.
    """

    run: Any
    index: int
    fault: FaultKind | None
    contract: KernelContract
    stream: InstructionStream | None
    views: Mapping[str, np.ndarray]
    uses: list[Use]
    submitted_at: float


class Command:
    """One unit of the queue: a started run, or an executed runlist."""

    def __init__(self, launches: list[Launch]) -> None:
        self.launches = launches
        self.done = threading.Event()

    def finish_all(self, state: ert_cmd_state) -> None:
        """End every run of the command in ``state`` (a command that never executes)."""
        for launch in self.launches:
            launch.run._finish(launch, state)
        self.done.set()


class CommandQueue:
    """FIFO of commands of one hardware context, executed by one device thread."""

    def __init__(self, state: DeviceState) -> None:
        self._state = state
        self._cond = threading.Condition()
        self._pending: deque[Command] = deque()
        self._in_flight = 0
        self._closing = False
        self._stop = threading.Event()  # wakes a sleeping run when the context closes
        self._last_completion = 0.0
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

    def abort_pending(self) -> None:
        """End every queued (not yet executing) command in ERT_CMD_STATE_ABORT."""
        with self._cond:
            aborted = list(self._pending)
            self._pending.clear()
        for command in aborted:
            command.finish_all(ABORT)
        self._retire(len(aborted))

    def close(self) -> None:
        """Abort queued runs, stop the device thread and join it (unless called from it)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._stop.set()
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
        failed = False
        for launch in command.launches:
            # A failed run ends the rest of its runlist (XRT skips them as ABORT).
            state = ABORT if failed or self._stop.is_set() else self._execute(launch)
            self._last_completion = time.perf_counter()
            launch.run._finish(launch, state)
            failed = state != COMPLETED
            if state == TIMEOUT:
                # Watchdog recovery stops and restarts the context: queued runs abort.
                self.abort_pending()
        command.done.set()
        self._retire(1)

    def _sleep_until(self, deadline: float) -> bool:
        """Sleep until ``deadline`` (perf_counter seconds); False if the context closed."""
        return not self._stop.wait(max(0.0, deadline - time.perf_counter()))

    def _execute(self, launch: Launch) -> ert_cmd_state:
        state = self._state
        # When the run reached the device: its start, or the previous run's end (FIFO).
        device_start = max(launch.submitted_at, self._last_completion)
        watchdog = state.watchdog_s
        if state.lost:
            return ABORT
        if launch.fault is FaultKind.DEVICE_LOST:
            state.lose()
            return ABORT
        if launch.fault is FaultKind.HANG:
            if watchdog <= 0:
                self._stop.wait()  # no watchdog: hangs until the context closes
                return ABORT
            return TIMEOUT if self._sleep_until(device_start + watchdog) else ABORT
        if launch.fault is FaultKind.ERROR or launch.stream is None:
            return ERROR
        block = launch.stream.block
        modelled = state.timing(launch.contract, block) if state.timing else None
        if modelled is not None and 0 < watchdog < modelled:
            return TIMEOUT if self._sleep_until(device_start + watchdog) else ABORT
        execute(launch.contract, launch.stream, launch.views, self._scratch)
        if modelled is not None and not self._sleep_until(device_start + modelled):
            return ABORT
        if modelled is None and 0 < watchdog < time.perf_counter() - device_start:
            return TIMEOUT
        # Another context may have lost the device while this run computed.
        return ABORT if state.lost else COMPLETED
