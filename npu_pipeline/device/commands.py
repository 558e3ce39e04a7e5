"""One command in flight on the device: a single run, or a ``runlist`` chaining several."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from npu_pipeline.device.faults import state_name
from npu_pipeline.errors import BufferHazardError, DriverRuleError

if TYPE_CHECKING:
    from npu_pipeline.device.submission import Submission
    from npu_pipeline.device.xrt import XrtSession


class Command:
    """One command in flight: a single run, or a runlist chaining ``count`` runs.

    ``poll`` waits for it (at most ``timeout_ms``) and is the only call that
    blocks. A chain's end is known only from ``runlist.wait`` (XRT does not
    guarantee ``state()`` of runs in a runlist while it executes), so a chain
    records its outcome when a poll sees it end; one thread at a time polls it.
    ``epoch`` is the hardware context it was started on (the queue counts
    the contexts it recreated); ``secondary`` is set when it failed after an
    earlier command on the same context had failed (its design was already
    out of step: the failure is not its batch's own).
    """

    __slots__ = (
        "chain",
        "count",
        "epoch",
        "first",
        "outcome",
        "polling",
        "run",
        "runs",
        "secondary",
        "session",
        "sub",
        "submitted_at",
    )

    def __init__(
        self,
        session: XrtSession,
        sub: Submission,
        first: int,
        count: int,
        epoch: int,
        run: Any = None,
        chain: Any = None,
        runs: tuple[Any, ...] = (),
    ) -> None:
        self.session, self.sub, self.first, self.count = session, sub, first, count
        self.epoch = epoch
        self.secondary = False
        self.run, self.chain, self.runs = run, chain, runs
        self.polling = threading.Lock() if chain is not None else None
        self.submitted_at = time.perf_counter()
        # Once ended: (completed, index of the failed run or None, state name, the
        # exception a wait raised: a hazard to raise again, or what XRT said).
        self.outcome: tuple[bool, int | None, str, BaseException | None] | None = None

    def ended(self) -> bool:
        """Whether the command has ended, without blocking."""
        if self.outcome is not None:
            return True
        if self.chain is not None:
            return False
        state = self.session.state(self.run)
        completed = self.session.completed
        if int(state) < completed:
            return False
        ok = int(state) == completed
        self.outcome = (ok, None if ok else self.first, state_name(state), None)
        return True

    def poll(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for the command's end; whether it has ended."""
        if self.outcome is not None:
            return True
        if self.chain is None:
            try:
                self.session.wait(self.run, timeout_ms)
            except DriverRuleError:
                raise
            except BufferHazardError as error:  # emulator: the run ended in ERROR
                self.outcome = (False, self.first, "ERT_CMD_STATE_ERROR", error)
                return True
            except RuntimeError as error:
                # XRT's wait threw: e.g. "unexpected command state" when an older
                # driver's reset left the command NEW. It never ends by state(): end
                # it here, or it would hold its place in flight for ever.
                self.outcome = (False, self.first, state_name(self.session.state(self.run)), error)
                return True
            return self.ended()
        if not self.polling.acquire(timeout=timeout_ms / 1000):
            return self.outcome is not None  # another thread polled it meanwhile
        try:
            if self.outcome is None:
                self._wait_chain()
        finally:
            self.polling.release()
        return self.outcome is not None

    def _wait_chain(self) -> None:
        # Untimed: pyxrt binds runlist.wait(timeout) with std::chrono::milliseconds
        # and no chrono caster, so no Python value reaches the timed overload
        # (Xilinx/XRT src/python/pybind11/src/pyxrt.cpp). The wait blocks until the
        # chain ends: at most about CHAIN_BUDGET_S, as only the oldest command in
        # flight is polled.
        try:
            self.session.wait_chain(self.chain)
        except DriverRuleError:
            raise
        except RuntimeError as error:  # XRT raises when a run of the list failed
            self.outcome = (False, *self._failed_run(), error)
        else:
            self.outcome = (True, None, "ERT_CMD_STATE_COMPLETED", None)

    def _failed_run(self) -> tuple[int | None, str]:
        """The run of a failed chain that failed, and its state.

        The driver records only the failing index; XRT's wait then gives that
        run the chain's state and the later runs ``ABORT``, and never updates
        the runs before it, which stay ``NEW`` (amd/xdna-driver
        ``aie2_sched_cmdlist_resp_handler``, Xilinx/XRT ``runlist_impl::wait``).
        So the failed run is the first one neither NEW nor COMPLETED. When XRT
        marked none (its wait threw before, as "unexpected command state"
        does), the chain's range is reported.
        """
        unmarked = (int(self.session.new), self.session.completed)
        for position, r in enumerate(self.runs):
            state = self.session.state(r)
            if int(state) not in unmarked:
                return self.first + position, state_name(state)
        return None, "ERT_CMD_STATE_NEW"

    def final(self) -> tuple[str, str | None]:
        """The state name of a failed command, and what XRT said when its wait threw.

        Raises:
            BufferHazardError: the emulator saw a mapped write during a run of it.
        """
        assert self.outcome is not None
        error = self.outcome[3]
        if isinstance(error, BufferHazardError):
            raise error
        if error is not None:
            return self.outcome[2], str(error)
        if self.chain is None:
            # pyxrt's final wait (the emulator raises a mapped-write hazard here).
            return state_name(self.session.wait(self.run)), None
        return self.outcome[2], None

    def state_name(self) -> str:
        """The current state, for messages."""
        if self.outcome is not None:
            return self.outcome[2]
        if self.chain is not None:
            return "ERT_CMD_STATE_NEW"
        return state_name(self.session.state(self.run))
