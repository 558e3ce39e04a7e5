"""The commands in flight across the device: starting them as places free, reaping them.

The amdxdna driver keeps at most 4 commands in flight per hardware context
(``HWCTX_MAX_CMDS`` in amd/xdna-driver ``src/driver/amdxdna/aie2_pci.h``;
a fifth submission blocks in the driver). :class:`CommandQueue` never submits
past the limit: it starts the next command of whichever started batch is
oldest when one ends, and measures each block shape's device time so that
chains fit :data:`CHAIN_BUDGET_S`.

A command that fails (ERROR, TIMEOUT, ABORT, or a wait XRT threw from)
leaves the design's forever-looping cores out of step with the host. The
queue then starts nothing more on that hardware context: once every command
started on it has ended, it recreates the context and its kernel, drops the
runs and runlists bound to the old one, and goes on (docs/device.md#recovery).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from npu_pipeline.device.commands import Command

if TYPE_CHECKING:
    from npu_pipeline.device.slots import SlotBuffers
    from npu_pipeline.device.submission import Submission
    from npu_pipeline.device.xrt import XrtSession

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


class CommandQueue:
    """The device's commands in flight, oldest first, and the batches they belong to.

    Not locked: the device calls every method with its lock held.
    """

    def __init__(self, session: XrtSession, buffers: SlotBuffers, runs_in_flight: int) -> None:
        self._session, self._buffers = session, buffers
        self._limit = runs_in_flight
        self.in_flight: list[Command] = []  # every command in flight, oldest first
        self.active: dict[int, Submission] = {}  # slot index -> its unfinished submission
        # block -> (decayed seconds, decayed runs) observed: seconds per run of the shape.
        self._pace: dict[tuple[int, int, int], tuple[float, float]] = {}
        self._last_end = 0.0  # when the last command was seen to end (perf_counter)
        self._epoch = 0  # hardware contexts recreated so far
        self._failed_epoch: int | None = None  # the context a failure left out of step
        #: Hardware contexts recreated after a failure (for reports and tests).
        self.recoveries = 0

    def forget_pace(self) -> None:
        """Drop every block's measured pace (a cold first run is no sample of it)."""
        self._pace.clear()
        self._last_end = 0.0

    @property
    def head(self) -> Command | None:
        """The oldest command in flight (commands end in order on one context)."""
        return self.in_flight[0] if self.in_flight else None

    def chain_length(self, block: tuple[int, int, int]) -> int:
        """Runs per command for a batch of ``block``: as many as fit in the chain budget
        at the measured pace, at most 24; one until the shape has been measured."""
        pace = self._pace.get(block)
        if pace is None:
            return 1
        seconds = pace[0] / pace[1]
        if seconds <= CHAIN_BUDGET_S / RUNLIST_MAX:
            return RUNLIST_MAX
        return max(1, min(RUNLIST_MAX, int(CHAIN_BUDGET_S / seconds)))

    def fill_queued(self, own: Submission) -> None:
        """Start runs of every started batch, oldest first, while the device has room.

        Not only ``own``'s: runs left over when the device was full would
        otherwise wait for their own batch's ``wait()``, and a caller waiting
        for an older batch first (the pipeline drains in order) would leave
        the device idle meanwhile. An error starting ``own``'s runs is raised;
        another batch's is kept for its ``wait()`` to raise.
        """
        for sub in self.active.values():  # _fill never adds or removes a batch
            if len(self.in_flight) >= self._limit:
                return
            if sub is own:
                self._fill(sub)
            elif sub.synced and not sub.closed and sub.start_error is None:
                try:
                    self._fill(sub)
                except Exception as error:
                    sub.start_error = error

    def _fill(self, sub: Submission) -> None:
        """Start commands of ``sub`` while the device has room."""
        session, buffers = self._session, self._buffers
        while not sub.stopped and sub.next_run < sub.end_run and len(self.in_flight) < self._limit:
            if self._failed_epoch is not None:
                if self.in_flight:
                    return  # commands of the out-of-step context are still to end
                self._recover()
            first = sub.next_run
            count = min(sub.chain, sub.end_run - first)
            sub.next_run += count
            try:
                if count == 1:
                    run = buffers.run(sub, first)
                    session.start(run)
                    command = Command(session, sub, first, 1, self._epoch, run=run)
                else:
                    chain, runs = buffers.chain(sub, first, count)
                    session.execute(chain)
                    command = Command(
                        session, sub, first, count, self._epoch, chain=chain, runs=runs
                    )
            except BaseException:
                sub.stopped = True
                raise
            sub.running.append(command)
            self.in_flight.append(command)

    def _recover(self) -> None:
        """Recreate the hardware context and kernel; drop the runs bound to the old one."""
        self._buffers.drop_runs()
        self._session.recreate_context()
        self._epoch += 1
        self._failed_epoch = None
        self.recoveries += 1

    def reap(self) -> None:
        """Retire every command in flight that has ended, whichever batch it belongs to."""
        in_flight = self.in_flight
        if not in_flight:
            return
        ended = [command.ended() for command in in_flight]
        if not any(ended):
            return
        now = time.perf_counter()
        still: list[Command] = []
        for command, done in zip(in_flight, ended, strict=True):
            # A failure is judged only once every older command has been seen to end
            # (an older one may have ended, unseen, between the two looks).
            if not done or (not command.outcome[0] and still):
                still.append(command)
                continue
            sub = command.sub
            sub.running.remove(command)
            ok, index, _, _ = command.outcome
            if ok:
                self._observe(command, now)
            else:
                self._pace.pop(sub.block, None)  # slow down again after a failure
                # Commands end in order: the first failure seen on a context is its
                # own; a later one on the same context met a design out of step.
                command.secondary = self._failed_epoch == command.epoch
                self._failed_epoch = command.epoch
                if sub.failed is None:
                    blamed = None if command.secondary else index
                    sub.failed, sub.stopped = (blamed, command), True
            if sub.closed and not sub.running and self.active.get(sub.slot.index) is sub:
                del self.active[sub.slot.index]
        self.in_flight = still

    def _observe(self, command: Command, now: float) -> None:
        """Account a completed command's device time to its block shape.

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

    def finish(self, sub: Submission) -> None:
        """The caller is done with ``sub``; its slot is free once its runs ended."""
        sub.closed = True
        if not sub.running and self.active.get(sub.slot.index) is sub:
            del self.active[sub.slot.index]

    def clear(self) -> None:
        """Forget every command and batch (the device is closing)."""
        self.in_flight.clear()
        self.active.clear()
