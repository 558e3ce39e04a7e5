"""Fault injection: make a chosen run fail the way real hardware fails.

Emulator-only API (real pyxrt has nothing like it)::

    dev = emulator.device(0, watchdog_s=0.2)
    emulator.inject_fault(dev, emulator.FaultKind.HANG, run_index=3)

or, when the device is opened for you (``NpuDevice.open(..., faults=[...])``)::

    emulator.device(0, faults=[emulator.Fault(emulator.FaultKind.ERROR, run_index=0)])

Runs are numbered per device, from 0, in the order they are started
(``run.start()``, ``kernel(...)``, or each run of an executed ``runlist``).
What each kind does is described on :class:`FaultKind`.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from npu_pipeline.errors import DeviceError, explain


class FaultKind(enum.Enum):
    """What an injected fault does to its run.

    - ``ERROR``: the run ends in ``ERT_CMD_STATE_ERROR`` without writing its
      output, as when the firmware answers with a failure status
      (amdxdna ``aie2_sched_resp_handler``).
    - ``HANG``: the run never finishes; the device-wide watchdog ends it in
      ``ERT_CMD_STATE_TIMEOUT`` one to two ``watchdog_s`` periods after the
      device's last progress, and its recovery restarts every hardware
      context: every other run then in flight on any context ends in
      ``ERT_CMD_STATE_ABORT`` (amdxdna TDR: stop and restart).
    - After any of these, and after an ``ERROR``, the run's context is out
      of step with its design: its later runs end in ``ERT_CMD_STATE_ERROR``
      until the host creates a new ``hw_context``.
    - ``DEVICE_LOST``: when the run reaches the device, the device is gone:
      that run and every run in flight end in ``ERT_CMD_STATE_ABORT``, and
      every later driver call (BO allocation, ``sync``, ``start``, creating a
      context or kernel) raises ``DeviceError`` (a ``RuntimeError``, as the
      ``ENODEV`` system error real XRT raises).
    """

    ERROR = "error"
    HANG = "hang"
    DEVICE_LOST = "device_lost"


@dataclass(frozen=True)
class Fault:
    """One planned fault: ``kind`` strikes the run numbered ``run_index`` on its device."""

    kind: FaultKind
    run_index: int


class FaultPlan:
    """The faults planned for one device, and the device's run numbering."""

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self._lock = threading.Lock()
        self._planned: dict[int, FaultKind] = {}
        self._next_run = 0
        for fault in faults:
            self.add(fault.kind, fault.run_index)

    def add(self, kind: FaultKind, run_index: int | None) -> int:
        """Plan ``kind`` for run ``run_index`` (``None``: the next run); return the index."""
        kind = FaultKind(kind)
        with self._lock:
            index = self._next_run if run_index is None else run_index
            if index < self._next_run:
                raise DeviceError(
                    explain(
                        f"run {index} has already started",
                        f"a run index >= {self._next_run}",
                        "Inject the fault before starting the run.",
                    )
                )
            self._planned[index] = kind
            return index

    def number_run(self) -> tuple[int, FaultKind | None]:
        """Give a starting run its index, with the fault planned for it, if any."""
        with self._lock:
            index = self._next_run
            self._next_run += 1
            return index, self._planned.pop(index, None)


def inject_fault(target: object, kind: FaultKind, *, run_index: int | None = None) -> int:
    """Plan a fault for a run on ``target`` (an emulated ``device`` or ``hw_context``).

    Args:
        kind: what happens (see :class:`FaultKind`).
        run_index: the device-wide number of the run to strike; ``None`` means
            the next run started.

    Returns:
        The run index the fault is planned for.
    """
    state = getattr(target, "_state", None)
    if state is None:
        raise TypeError(
            explain(
                f"inject_fault got a {type(target).__name__}",
                "an emulated device or hw_context",
                "Pass the object returned by emulator.device(...) or emulator.hw_context(...).",
            )
        )
    return state.faults.add(kind, run_index)
