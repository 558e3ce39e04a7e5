"""What one emulated device knows: its generation, options, faults, and whether it is lost."""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from npu_pipeline.emulator._faults import Fault, FaultPlan
from npu_pipeline.emulator._instructions import Firmware
from npu_pipeline.errors import DeviceError, explain

if TYPE_CHECKING:
    from npu_pipeline.emulator._queue import CommandQueue

#: Driver watchdog default, seconds (amdxdna module parameter ``timeout_in_sec``).
DEFAULT_WATCHDOG_S = 2.0

#: Commands in flight per hardware context (amdxdna ``CTX_MAX_CMDS`` in aie2_pci.h).
DRIVER_RUNS_IN_FLIGHT = 4

#: The device name ``get_info(name)`` reports by default, per generation: the
#: amdxdna driver's vbnv string (docs/hardware-facts.md#device-names).
DEVICE_NAMES = {"npu1": "NPU Phoenix", "npu2": "NPU Strix"}

TimingModel = Callable[[Any, tuple[int, int, int], bool], float]


def timing_model(timing: object) -> TimingModel | None:
    """Normalise a timing option: a profile with ``run_seconds``, a callable, or ``None``.

    The model is called as ``(contract, block, queued)``: ``queued`` when the
    run was submitted while the one before it was still executing. A
    profile's ``run_seconds(contract, block, queued=...)`` gets it; a plain
    ``(contract, block)`` callable does not care.
    """
    if timing is None:
        return None
    run_seconds = getattr(timing, "run_seconds", timing)
    if not callable(run_seconds):
        raise TypeError(
            explain(
                f"timing is a {type(timing).__name__}",
                "an object with run_seconds(contract, block) -> seconds, or such a callable",
                "Pass a DeviceProfile, or a function.",
            )
        )
    if hasattr(timing, "queued_dispatch_s"):
        return lambda contract, block, queued: run_seconds(contract, block, queued=queued)
    return lambda contract, block, queued: run_seconds(contract, block)


class DeviceState:
    """Options and live state of one emulated device, shared by its contexts, BOs and runs.

    Attributes:
        generation: ``"npu1"`` or ``"npu2"``.
        timing: modelled device seconds of one run, or ``None`` (runs take as
            long as their CPU compute).
        watchdog_s: the watchdog, seconds; 0 disables it (``timeout_in_sec=0``).
        runs_in_flight: runs in flight per hardware context before ``start`` blocks.
        detect_mapped_writes: record the host bytes of mapped BOs of each run at start and
            completion to catch writes through ``map()`` views.
        reset_leaves_new: play an older driver: a command ended by a watchdog reset
            keeps state ``NEW`` and its wait raises "unexpected command state".
        faults: the planned faults and the run numbering.
        name: the device name ``get_info(name)`` reports (the driver's vbnv string).
        hold_gil: blocking calls hold the GIL as pyxrt's do (see ``_gil``).
        memlock_bytes: the emulated RLIMIT_MEMLOCK, bytes (None: unlimited).
        firmware: how runs read their instructions (count unit, zeros).
    """

    def __init__(
        self,
        *,
        generation: str,
        timing: object,
        watchdog_s: float | None,
        runs_in_flight: int,
        detect_mapped_writes: bool,
        faults: Iterable[Fault],
        name: str | None = None,
        hold_gil: bool = False,
        memlock_bytes: int | None = None,
        reset_leaves_new: bool = False,
        firmware: Firmware,
    ) -> None:
        if generation not in DEVICE_NAMES:
            raise DeviceError(
                explain(
                    f"generation {generation!r} is unknown",
                    f"one of {sorted(DEVICE_NAMES)}",
                    "Pick the NPU generation to emulate.",
                )
            )
        if not 1 <= runs_in_flight <= DRIVER_RUNS_IN_FLIGHT:
            raise DeviceError(
                explain(
                    f"runs_in_flight={runs_in_flight}",
                    f"1..{DRIVER_RUNS_IN_FLIGHT} (the amdxdna driver's limit per context)",
                    "Lower it.",
                )
            )
        self.generation = generation
        self.timing = timing_model(timing)
        if watchdog_s is None:
            watchdog_s = getattr(timing, "watchdog_s", DEFAULT_WATCHDOG_S)
        self.watchdog_s = float(watchdog_s)
        self.runs_in_flight = runs_in_flight
        self.detect_mapped_writes = detect_mapped_writes
        self.reset_leaves_new = reset_leaves_new
        self.faults = FaultPlan(faults)
        self.name = DEVICE_NAMES[generation] if name is None else name
        self.hold_gil = hold_gil
        self.memlock_bytes = memlock_bytes
        self.firmware = firmware
        self.lost = False
        self._lock = threading.Lock()
        self._queues: weakref.WeakSet[CommandQueue] = weakref.WeakSet()
        # perf_counter of the device's last progress: a run submitted or ended, on any context.
        self._last_signal = time.perf_counter()

    def check_alive(self, what: str) -> None:
        """Raise DeviceError (a RuntimeError, like XRT's ENODEV system error) once lost."""
        if self.lost:
            raise DeviceError(
                explain(
                    f"{what} failed: No such device (the emulated NPU was lost by an "
                    "injected DEVICE_LOST fault)",
                    "a present device",
                    "Close every object of this device and open a new one.",
                ),
                state="ERT_CMD_STATE_ABORT",
            )

    def register(self, queue: CommandQueue) -> None:
        """Remember a context's queue, so losing the device can abort its runs."""
        with self._lock:
            self._queues.add(queue)

    # -- the watchdog (amdxdna TDR: docs/emulator.md#what-the-watchdog-reports-and-why) --

    def signal(self) -> None:
        """Record device progress: a run was submitted or ended on some context."""
        self._last_signal = max(self._last_signal, time.perf_counter())

    def watchdog_deadline(self, started: float) -> float:
        """When the watchdog fires on a run that reached the device at ``started`` (s).

        The driver checks every period whether the *device* made progress
        during the last period; the checks of a run begin a period after it
        reached the device. It fires at the first check that finds none:
        between one and two periods after the device's last progress, never
        while another context keeps completing runs. ``inf`` when disabled.
        """
        period = self.watchdog_s
        if period <= 0:
            return math.inf
        quiet_since = max(self._last_signal, started)
        return started + (math.ceil((quiet_since - started) / period) + 1) * period

    def recover(self, hung: CommandQueue) -> None:
        """The watchdog fired on ``hung``'s run: stop and restart every context.

        Every other run in flight on any context (executing or queued) ends in
        ``ABORT``, and every context is then out of step with its design.
        """
        with self._lock:
            queues = list(self._queues)
        for queue in queues:
            queue.reset(hung=queue is hung)

    def lose(self) -> None:
        """Lose the device: abort every queued run of every context."""
        with self._lock:
            self.lost = True
            queues = list(self._queues)
        for queue in queues:
            queue.abort_pending()
