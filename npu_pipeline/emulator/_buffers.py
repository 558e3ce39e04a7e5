"""Buffer objects (``pyxrt.bo``): host bytes, a separate device copy, and hazard tracking.

Every root BO owns two byte arrays of its size:

- the *host* bytes, which ``write``, ``read`` and ``map`` touch;
- the *device copy*, which is what a run reads and writes.

``sync(TO_DEVICE)`` copies a range host -> device and ``sync(FROM_DEVICE)``
device -> host; nothing else moves bytes between them. So a missing sync
gives stale bytes in either direction, deterministically, where hardware
(whose sync is a cache flush over shared memory,
docs/hardware-facts.md#buffer-objects) gives
*possibly* stale bytes. Sub-buffers are windows on their root's two arrays.

Runs in flight register the byte ranges they read and write (:class:`Use`).
Host ``write``, ``sync`` or ``map`` of such a range raises
``BufferHazardError``; so does starting a run that would write a range
another run in flight uses, or read a range another run is writing.
"""

from __future__ import annotations

import threading
import weakref
import zlib
from typing import Any

import numpy as np

from npu_pipeline.emulator._enums import BOFlags, xclBOSyncDirection
from npu_pipeline.emulator._state import DeviceState
from npu_pipeline.errors import BufferHazardError, DriverRuleError, explain

#: Flags NPU host code uses for BOs, the only ones the emulator accepts
#: (docs/hardware-facts.md#buffer-objects).
ACCEPTED_FLAGS = (BOFlags.host_only, BOFlags.cacheable)

# One lock for the in-flight bookkeeping of every BO: claims are short and rare.
_USES_LOCK = threading.Lock()
_COUNT_LOCK = threading.Lock()
_live_bos = 0
# Fake device addresses for bo.address(): 4 KiB aligned, never overlapping.
_next_address = 0x8000_0000


def live_bos() -> int:
    """Emulated BOs (roots and sub-buffers) not yet freed by garbage collection."""
    return _live_bos


def _count_bo(delta: int) -> None:
    global _live_bos
    with _COUNT_LOCK:
        _live_bos += delta


def _allocate_address(size: int) -> int:
    global _next_address
    with _COUNT_LOCK:
        address = _next_address
        _next_address += -(-size // 4096) * 4096
        return address


class Storage:
    """The host bytes and device copy of one root BO, and the runs in flight on it.

    Runs in flight are kept in two lists, the ranges they only read and the
    ranges they write: a new read need only be checked against the writers,
    and runs reading the same bytes (every run reads the instruction BO) do
    not slow each other down.
    """

    def __init__(self, size: int, state: DeviceState) -> None:
        # np.zeros maps fresh zero pages, as the driver hands out zeroed memory.
        self.host = np.zeros(size, dtype=np.uint8)
        self.device = np.zeros(size, dtype=np.uint8)
        self.state = state
        self.mapped = False
        self.address = _allocate_address(size)
        self.readers: list[Use] = []
        self.writers: list[Use] = []
        # Bumped by every sync(TO_DEVICE): what was decoded from the device copy
        # (an instruction stream) is still valid while it is unchanged.
        self.device_version = 0

    def check_host_access(self, start: int, end: int, action: str) -> None:
        """Raise BufferHazardError if a run in flight uses any byte of [start, end)."""
        if not (self.readers or self.writers):
            return  # nothing in flight: the common case, no lock needed
        with _USES_LOCK:
            for uses in (self.writers, self.readers):
                for use in uses:
                    if use.start < end and start < use.end:
                        raise BufferHazardError(
                            explain(
                                f"{action} of bytes [{start}, {end}) of a BO while run "
                                f"#{use.run_index}, which {use.verb} bytes [{use.start}, "
                                f"{use.end}), is in flight",
                                "no host write, sync or map of a BO range until every run "
                                "using it has completed",
                                "Wait for the run first (one slot per batch in flight).",
                            )
                        )


#: Ranges at least this long are watched with a copy of their host bytes,
#: shorter ones with a CRC-32: copying and comparing run at memory speed
#: (about 15 us for 256 KiB here, against 125 us for two checksums), while a
#: short range checksums faster than numpy can compare it.
SNAPSHOT_BYTES = 16 * 1024


class Use:
    """One run's use of a byte range of a root BO while the run is in flight.

    Attributes:
        storage: the root BO's storage.
        start, end: the byte range, relative to the root.
        writes: whether the run writes the range (its output) or only reads it.
        run_index: the run's device-wide number, for messages.
        watched: whether the host bytes were recorded when the run started
            (the BO was ever mapped: writes through a ``map()`` view cannot be
            intercepted), in ``crc`` or, for a long range, in ``snapshot``.
    """

    __slots__ = ("crc", "end", "run_index", "snapshot", "start", "storage", "watched", "writes")

    def __init__(
        self, storage: Storage, start: int, end: int, writes: bool, run_index: int
    ) -> None:
        self.storage, self.start, self.end = storage, start, end
        self.writes, self.run_index = writes, run_index
        self.watched = False
        self.crc = 0
        self.snapshot: np.ndarray | None = None  # kept for the next start of the run

    @property
    def verb(self) -> str:
        """``"writes"`` or ``"reads"``."""
        return "writes" if self.writes else "reads"

    def watch(self) -> None:
        """Record the host bytes of the range, to tell later whether they changed."""
        host = self.storage.host[self.start : self.end]
        if host.size >= SNAPSHOT_BYTES:
            if self.snapshot is None or self.snapshot.size != host.size:
                self.snapshot = np.empty(host.size, dtype=np.uint8)
            np.copyto(self.snapshot, host)
        else:
            self.snapshot = None
            self.crc = zlib.crc32(host)
        self.watched = True

    def host_changed(self) -> bool:
        """Whether the host bytes changed since ``watch`` (False if not watched)."""
        if not self.watched:
            return False
        host = self.storage.host[self.start : self.end]
        if self.snapshot is None:
            return zlib.crc32(host) != self.crc
        if host.size % 8 == 0:  # compare eight bytes at a time
            return not np.array_equal(self.snapshot.view(np.uint64), host.view(np.uint64))
        return not np.array_equal(self.snapshot, host)


def claim(uses: list[Use]) -> None:
    """Register a starting run's uses, all or none.

    Raises:
        BufferHazardError: the run would write a range another run in flight
            uses, or read a range another run in flight writes.
    """
    with _USES_LOCK:
        for use in uses:
            storage = use.storage
            others = (storage.writers, storage.readers) if use.writes else (storage.writers,)
            for group in others:
                for other in group:
                    if use.start < other.end and other.start < use.end:
                        raise BufferHazardError(
                            explain(
                                f"run #{use.run_index} {use.verb} bytes [{use.start}, "
                                f"{use.end}) of a BO that run #{other.run_index}, still in "
                                f"flight, {other.verb} ([{other.start}, {other.end}))",
                                "no two runs in flight where one writes bytes the other uses",
                                "Give each batch in flight its own output buffer (slot).",
                            )
                        )
        for use in uses:
            (use.storage.writers if use.writes else use.storage.readers).append(use)


def release(uses: list[Use]) -> None:
    """Forget a finished run's uses."""
    with _USES_LOCK:
        for use in uses:
            (use.storage.writers if use.writes else use.storage.readers).remove(use)


class bo:
    """A buffer object: ``bo(device_or_hw_context, size, flags, group)``,
    ``bo(hw_context, size, group)`` (default flags: ``normal``), or the
    sub-buffer ``bo(parent, size, offset)`` of a root BO.

    Raises:
        DriverRuleError: flags other than ``host_only`` or ``cacheable``, a
            size below 1, a sub-buffer outside its parent or of a sub-buffer.
    """

    flags = BOFlags
    normal = BOFlags.normal
    cacheable = BOFlags.cacheable
    device_only = BOFlags.device_only
    host_only = BOFlags.host_only
    p2p = BOFlags.p2p
    svm = BOFlags.svm

    def __init__(self, owner: Any, size: int, *rest: int) -> None:
        size = int(size)
        if isinstance(owner, bo):
            if len(rest) != 1:
                raise TypeError("bo(parent, size, offset) takes exactly three arguments")
            self._init_sub(owner, size, int(rest[0]))
        else:
            state = getattr(owner, "_state", None)
            if state is None or len(rest) not in (1, 2):
                raise TypeError(
                    "bo() takes (device|hw_context, size, flags, group), "
                    "(hw_context, size, group) or (parent bo, size, offset)"
                )
            flags, group = (BOFlags.normal, rest[0]) if len(rest) == 1 else rest
            self._init_root(state, size, int(flags), int(group))
        _count_bo(+1)
        weakref.finalize(self, _count_bo, -1)

    def _init_root(self, state: DeviceState, size: int, flags: int, group: int) -> None:
        state.check_alive("bo allocation")
        if flags not in ACCEPTED_FLAGS:
            name = next((f.name for f in BOFlags if f == flags), hex(flags))
            raise DriverRuleError(
                explain(
                    f"bo flags {name} are rejected by the NPU driver",
                    "bo.host_only for data buffers, bo.cacheable for the instruction buffer",
                    "The NPU has no device memory: allocate host_only (data) or cacheable "
                    "(instructions).",
                )
            )
        self._check_size(size, "bo size")
        self._storage = Storage(size, state)
        self._offset, self._size, self._flags, self._group = 0, size, BOFlags(flags), group
        self._is_sub = False

    def _init_sub(self, parent: bo, size: int, offset: int) -> None:
        parent._storage.state.check_alive("sub-buffer creation")
        if parent._is_sub:
            raise DriverRuleError(
                explain(
                    "a sub-buffer of a sub-buffer was requested",
                    "sub-buffers derived from the root BO",
                    "Pass the root BO and the absolute offset.",
                )
            )
        self._check_size(size, "sub-buffer size")
        if offset < 0 or offset + size > parent._size:
            raise DriverRuleError(
                explain(
                    f"sub-buffer [{offset}, {offset + size}) lies outside its parent of "
                    f"{parent._size} bytes",
                    "0 <= offset and offset + size <= parent size",
                    "Fix the offset or size.",
                )
            )
        self._storage = parent._storage
        self._offset, self._size = offset, size
        self._flags, self._group = parent._flags, parent._group
        self._is_sub = True

    @staticmethod
    def _check_size(size: int, what: str) -> None:
        if size < 1:
            raise DriverRuleError(explain(f"{what} is {size}", "at least 1 byte", "Fix it."))

    def _range(self, size: int, offset: int, what: str) -> tuple[int, int]:
        """Absolute [start, end) in the root of ``size`` bytes at ``offset`` in this BO."""
        if offset < 0 or size < 0 or offset + size > self._size:
            raise DriverRuleError(
                explain(
                    f"{what} of {size} bytes at offset {offset}",
                    f"a range inside the BO's {self._size} bytes",
                    "Fix the size or offset.",
                )
            )
        return self._offset + offset, self._offset + offset + size

    # -- pyxrt API -----------------------------------------------------------

    def write(self, data: Any, seek: int = 0) -> None:
        """Copy ``data`` (any buffer) into the host bytes at byte ``seek``."""
        src = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        start, end = self._range(src.size, int(seek), "write")
        self._storage.check_host_access(start, end, "write")
        self._storage.host[start:end] = src

    def read(self, size: int, skip: int = 0) -> np.ndarray:
        """A copy of ``size`` host bytes from byte ``skip``, as int8."""
        start, end = self._range(int(size), int(skip), "read")
        return self._storage.host[start:end].view(np.int8).copy()

    def sync(self, direction: int, size: int | None = None, offset: int = 0) -> None:
        """Copy a range host -> device (TO_DEVICE) or device -> host (FROM_DEVICE).

        Raises:
            DriverRuleError: a GMIO direction (not on the NPU) or a bad range.
            BufferHazardError: a run in flight uses the range.
            DeviceError: the device is lost.
        """
        storage = self._storage
        storage.state.check_alive("sync")
        if direction not in (0, 1):
            raise DriverRuleError(
                explain(
                    f"sync direction {direction!r}",
                    "xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE or _FROM_DEVICE",
                    "GMIO directions are for AIE graphs, not NPU kernels.",
                )
            )
        offset = int(offset)
        size = self._size - offset if size is None else int(size)
        start, end = self._range(size, offset, "sync")
        storage.check_host_access(start, end, "sync")
        if direction == xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE:
            storage.device[start:end] = storage.host[start:end]
            storage.device_version += 1
        else:
            storage.host[start:end] = storage.device[start:end]

    def map(self) -> memoryview:
        """A writable view of this BO's host bytes. Writes through it cannot be intercepted;
        runs started later record and compare the bytes of mapped BOs to detect them."""
        start, end = self._offset, self._offset + self._size
        self._storage.check_host_access(start, end, "map")
        self._storage.mapped = True
        return memoryview(self._storage.host[start:end])

    def size(self) -> int:
        """Size in bytes."""
        return self._size

    def address(self) -> int:
        """The (fake) device address of the first byte."""
        return self._storage.address + self._offset

    def __repr__(self) -> str:
        kind = "sub-bo" if self._is_sub else "bo"
        return f"<emulated {kind} {self._size} B, {self._flags.name}, group {self._group}>"
