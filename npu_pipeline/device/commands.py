"""One command in flight on the device: a single run, or a ``runlist`` chaining several."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from npu_pipeline.device.faults import state_name
from npu_pipeline.errors import BufferHazardError

if TYPE_CHECKING:
    from npu_pipeline.device.submission import Submission
    from npu_pipeline.device.xrt import XrtSession


class Flag:
    """A mutable boolean shared by several objects."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False


class Command:
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
        "session",
        "sub",
        "submitted_at",
        "untimed",
    )

    def __init__(
        self,
        session: XrtSession,
        sub: Submission,
        first: int,
        count: int,
        run: Any = None,
        chain: Any = None,
        runs: tuple[Any, ...] = (),
        untimed: Flag | None = None,
    ) -> None:
        self.session, self.sub, self.first, self.count = session, sub, first, count
        self.run, self.chain, self.runs = run, chain, runs
        self.untimed = untimed  # shared by a device's chains: no timed runlist.wait
        self.polling = threading.Lock() if chain is not None else None
        self.submitted_at = time.perf_counter()
        # Once ended: (completed, index of the failed run or None, state name, exception).
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
            except BufferHazardError as error:  # emulator: the run ended in ERROR
                self.outcome = (False, self.first, "ERT_CMD_STATE_ERROR", error)
                return True
            return self.ended()
        if not self.polling.acquire(timeout=timeout_ms / 1000):
            return self.outcome is not None  # another thread polled it meanwhile
        try:
            if self.outcome is None:
                self._wait_chain(timeout_ms)
        finally:
            self.polling.release()
        return self.outcome is not None

    def _wait_chain(self, timeout_ms: int) -> None:
        session = self.session
        try:
            if self.untimed.value:
                # This pyxrt's runlist.wait(timeout) does not take (or return) the
                # stub's types. The untimed wait blocks until the chain ends: at most
                # about CHAIN_BUDGET_S, as only the oldest command in flight is polled.
                session.wait_chain(self.chain)
                state = "ERT_CMD_STATE_COMPLETED"
            else:
                try:
                    state = session.wait_chain(self.chain, timeout_ms)
                except TypeError:
                    self.untimed.value = True
                    session.wait_chain(self.chain)
                    state = "ERT_CMD_STATE_COMPLETED"
        except BufferHazardError as error:
            self.outcome = (False, *self._failed_run(None), error)
        except RuntimeError as error:  # XRT raises when a run of the list failed
            self.outcome = (False, *self._failed_run(getattr(error, "state", None)), None)
        else:
            name = state if isinstance(state, str) else state_name(state)
            if name == "ERT_CMD_STATE_COMPLETED" or (
                name != "ERT_CMD_STATE_TIMEOUT" and int(state) >= session.completed
            ):
                self.outcome = (True, None, "ERT_CMD_STATE_COMPLETED", None)

    def _failed_run(self, said: str | None) -> tuple[int | None, str]:
        """The first run of a failed chain that did not complete, and its state.

        XRT marks the failed run's state and aborts the later ones when the
        list's wait throws; when no run says so, the chain's range is reported.
        """
        completed = self.session.completed
        for position, r in enumerate(self.runs):
            state = self.session.state(r)
            if int(state) != completed:
                return self.first + position, state_name(state)
        return None, said or "ERT_CMD_STATE_ERROR"

    def final(self) -> str:
        """The state name of a failed command; raises the hazard the emulator reported."""
        assert self.outcome is not None
        if self.chain is None and self.outcome[3] is None:
            # pyxrt's final wait (the emulator raises a mapped-write hazard here).
            return state_name(self.session.wait(self.run))
        if self.outcome[3] is not None:
            raise self.outcome[3]
        return self.outcome[2]

    def state_name(self) -> str:
        """The current state, for messages."""
        if self.outcome is not None:
            return self.outcome[2]
        if self.chain is not None:
            return "ERT_CMD_STATE_NEW"
        return state_name(self.session.state(self.run))
