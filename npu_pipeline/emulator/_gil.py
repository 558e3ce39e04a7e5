"""Holding the GIL where pyxrt holds it: in ``run.wait``, ``run.start``, ``bo.sync``,
``bo.read``/``write`` and ``runlist.execute``/``wait``.

pyxrt's binding releases the GIL in none of those calls (Xilinx/XRT
``src/python/pybind11/src/pyxrt.cpp``: only context, kernel and xclbin
creation carry a ``gil_scoped_release``), so while one thread blocks in
``wait()`` no other Python thread runs. The emulator plays that with two
libc calls made through ``ctypes.PyDLL``, which (unlike ``ctypes.CDLL``) does
not release the GIL around a foreign call:

- :func:`hold_until` sleeps in ``nanosleep`` with the GIL held;
- :func:`copy` copies bytes with ``memmove`` with the GIL held (numpy
  releases it for large copies).

The emulated device computes in its own Python thread, which needs the GIL
itself. So a blocked call holds the GIL through the device time the device
thread has announced (its ``busy_until``: the modelled end of the run it is
sleeping on, or the watchdog's deadline of a hung run), and lets the GIL go
only while the device thread computes on the CPU. With a timing model (a
profile, ``timed=True``) nearly all of a run's time is announced; without one
a run lasts as long as its CPU compute and little is held. See
docs/emulator.md#the-gil.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: Longest a blocked call lets the GIL go at once while the device thread
#: computes, seconds: short, so the hold resumes as soon as the device
#: announces its next busy period.
RELEASE_S = 0.0005


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc() -> ctypes.PyDLL | None:
    try:
        libc = ctypes.PyDLL(None)
        libc.nanosleep.argtypes = [ctypes.POINTER(_Timespec), ctypes.POINTER(_Timespec)]
        libc.memmove.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        libc.memmove.restype = ctypes.c_void_p
    except (OSError, AttributeError, TypeError):  # no libc to load (Windows)
        return None
    return libc


_LIBC = _libc()

#: Whether this platform can hold the GIL through a sleep (Linux, macOS: libc).
AVAILABLE = _LIBC is not None


def hold_until(deadline: float) -> None:
    """Sleep until ``deadline`` (``time.perf_counter()`` seconds) without releasing the GIL."""
    remaining = deadline - time.perf_counter()
    while remaining > 0:  # a signal ends nanosleep early: sleep what is left
        whole = int(remaining)
        span = _Timespec(whole, int((remaining - whole) * 1e9))
        _LIBC.nanosleep(ctypes.byref(span), None)
        remaining = deadline - time.perf_counter()


def copy(dst: np.ndarray, src: np.ndarray) -> None:
    """Copy contiguous uint8 ``src`` into ``dst`` (same size) without releasing the GIL."""
    if src.size:
        _LIBC.memmove(dst.ctypes.data, src.ctypes.data, src.size)


def block(
    done: Callable[[], bool],
    busy_until: Callable[[], float],
    let_go: Callable[[float], object],
    deadline: float | None = None,
) -> bool:
    """Block until ``done()``, holding the GIL through announced device time.

    Args:
        done: whether the call may return.
        busy_until: until when (perf_counter seconds) the device is known to
            be busy; in the past when it is computing on the CPU.
        let_go: waits up to the given seconds with the GIL released (an
            ``Event.wait``, which returns early when the event is set).
        deadline: give up at this perf_counter time (None: never).

    Returns:
        True when ``done()``, False when the deadline passed first.
    """
    while not done():
        now = time.perf_counter()
        if deadline is not None and now >= deadline:
            return False
        horizon = busy_until()
        if horizon > now:
            hold_until(horizon if deadline is None else min(horizon, deadline))
        else:
            let_go(RELEASE_S if deadline is None else min(RELEASE_S, deadline - now))
    return True


def wait(event: threading.Event, queue: Any, timeout_s: float | None, hold: bool) -> bool:
    """Wait for ``event`` (a run's or runlist's end) as pyxrt's ``wait`` does.

    Args:
        event: set when the run or runlist ended.
        queue: the context's command queue (its ``busy_until``).
        timeout_s: seconds to wait at most, or None.
        hold: hold the GIL through the device's announced busy time.

    Returns:
        Whether the event was set in time.
    """
    if not hold:
        return event.wait(timeout_s)
    deadline = None if timeout_s is None else time.perf_counter() + timeout_s
    return block(event.is_set, lambda: queue.busy_until, event.wait, deadline)


def wait_for_room(queue: Any, limit: int) -> None:
    """Block, GIL held through announced device time, while ``limit`` commands are in
    flight on ``queue``: a submit beyond the driver's limit blocks in the kernel
    (``down_killable``) with the GIL held. The queue's own ``submit`` then checks
    again under its lock."""
    block(lambda: queue._in_flight < limit or queue._closing, lambda: queue.busy_until, time.sleep)
