"""A batch's runs on their way through the device: :class:`Submission` and how it ended."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from npu_pipeline.device.commands import Command
    from npu_pipeline.device.slots import Slot


@dataclass(frozen=True)
class RunShape:
    """What start and wait need of one block shape, computed once.

    Attributes:
        stride: bytes of each buffer one run uses, by name.
        inputs: (name, bytes per run) of each input buffer.
        output: (name, bytes per run) of the output buffer.
    """

    stride: Mapping[str, int]
    inputs: tuple[tuple[str, int], ...]
    output: tuple[str, int]


@dataclass(frozen=True)
class Completion:
    """How a batch ended (returned by :meth:`~npu_pipeline.device.NpuDevice.wait`).

    Attributes:
        batch, request: as given to :meth:`~npu_pipeline.device.NpuDevice.start`.
        n_runs: runs the batch had.
        started_at: ``time.perf_counter()`` when ``start`` began, s.
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
    """The runs of one batch: made by ``NpuDevice.start``, ended by ``NpuDevice.wait``.

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
        shape: RunShape,
        first_run: int = 0,
    ) -> None:
        self.slot, self.block, self.n_runs = slot, block, n_runs
        self.first_run, self.end_run = first_run, first_run + n_runs
        self.batch, self.request = batch, request
        self.shape = shape
        self.started_at = time.perf_counter()
        self.next_run = first_run  # index of the next run to start
        self.running: list[Command] = []  # commands in flight, oldest first
        # (index of the failed run or None when the device did not say, its command)
        self.failed: tuple[int | None, Command] | None = None
        self.stopped = False  # start no more runs
        self.synced = False  # inputs synced: its runs may start
        # Raised by wait(): starting a run failed in another batch's start or wait.
        self.start_error: Exception | None = None
        self.closed = False  # wait() has returned or raised
        self.chain = 1  # runs per command, fixed at the first start
