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
``BufferHazardError``, and so does a ``read`` of a range a run in flight
writes; so does starting a run that would write a range another run in
flight uses, or read a range another run is writing.

As on the NPU, where data buffers are pinned host memory
(docs/hardware-facts.md#buffer-objects), every root BO counts against the
locked-memory limit (``RLIMIT_MEMLOCK``, or the device's ``memlock_bytes``):
an allocation beyond it fails with a plain ``RuntimeError``, as XRT's does.
A ``map()`` view does not keep its BO alive: freeing the BO while a view of
it lives fills the bytes with :data:`POISON` and the next call on a BO of
the device raises ``BufferHazardError``.

The call signatures are pyxrt's (Xilinx/XRT ``src/python/pybind11/src/pyxrt.cpp``):
a call no pyxrt overload accepts raises ``TypeError``, as pybind11 does.
"""

from __future__ import annotations

import enum
import threading
import weakref
import zlib
from typing import Any

import numpy as np

from npu_pipeline.emulator import _gil
from npu_pipeline.emulator._enums import BOFlags, xclBOSyncDirection
from npu_pipeline.emulator._pinned import lock_pages, unlock_pages
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
# Per device: freed BOs whose map() views were alive then (weak references to them).
_dangling: weakref.WeakKeyDictionary[DeviceState, list[list[weakref.ref]]] = (
    weakref.WeakKeyDictionary()
)

#: The byte written over host memory a program must not read: a freed BO's
#: bytes behind a live view, and a mapped output while its run is in flight.
POISON = 0xA5


def live_bos() -> int:
    """Emulated BOs (roots and sub-buffers) not yet freed by garbage collection."""
    return _live_bos


def check_dangling(state: DeviceState) -> None:
    """Raise BufferHazardError if a BO of ``state`` was freed while a ``map()`` view of it
    is still alive (the view reads and writes freed memory on hardware)."""
    records = _dangling.get(state)
    if not records:
        return
    alive = [record for record in records if any(view() is not None for view in record)]
    records[:] = []  # reported once
    if alive:
        raise BufferHazardError(
            explain(
                f"{len(alive)} BO(s) were freed while a map() view of them was still alive "
                f"(its bytes now read {POISON:#x})",
                "every view of a BO dropped before the BO (pyxrt's map() views do not keep "
                "it alive; on hardware they then point at freed memory)",
                "Keep a reference to the BO for as long as any array made from its map() lives.",
            )
        )


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
        self.views: list[weakref.ref] = []  # exporters of the map() views handed out
        self.bos = 0  # live bo objects (the root and its sub-buffers) on this storage
        self.address = _allocate_address(size)
        self.readers: list[Use] = []
        self.writers: list[Use] = []
        # Bumped by every sync(TO_DEVICE): what was decoded from the device copy
        # (an instruction stream) is still valid while it is unchanged.
        self.device_version = 0

    def check_host_access(self, start: int, end: int, action: str, reads: bool = False) -> None:
        """Raise BufferHazardError if a run in flight uses any byte of [start, end)
        (writes it, when the host only ``reads``)."""
        if not (self.readers or self.writers):
            return  # nothing in flight: the common case, no lock needed
        with _USES_LOCK:
            for uses in (self.writers,) if reads else (self.writers, self.readers):
                for use in uses:
                    if use.start < end and start < use.end:
                        raise BufferHazardError(
                            explain(
                                f"{action} of bytes [{start}, {end}) of a BO while run "
                                f"#{use.run_index}, which {use.verb} bytes [{use.start}, "
                                f"{use.end}), is in flight",
                                "no host write, sync or map of a BO range until every run "
                                "using it has completed, and no read of a run's output "
                                "until it has",
                                "Wait for the run first (one slot per batch in flight).",
                            )
                        )

    def release_bo(self) -> None:
        """One bo object on this storage was freed; after the last, check its views."""
        self.bos -= 1
        if self.bos:
            return
        views = [view for view in self.views if view() is not None]
        if views:
            self.host.fill(POISON)
            _dangling.setdefault(self.state, []).append(views)


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

    def poison(self) -> None:
        """Fill the host bytes of the range: what the host reads of a mapped output
        while its run is in flight is undefined on hardware."""
        self.storage.host[self.start : self.end] = POISON
        self.watched = False

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


def _free_bo(storage: Storage, locked: int) -> None:
    """A bo object was collected: unlock its pages (a root's) and check its views."""
    _count_bo(-1)
    if locked:
        unlock_pages(locked)
    storage.release_bo()


#: pyxrt's ``bo`` constructors, as pybind11 lists them in its TypeError.
_BO_OVERLOADS = (
    "bo(device, size, flags, group)",
    "bo(hw_context, size, flags, group)",
    "bo(hw_context, size, group)",
    "bo(parent: bo, size, offset)",
)


def _no_overload(call: str, overloads: tuple[str, ...]) -> TypeError:
    """The TypeError pybind11 raises when no overload accepts the arguments."""
    listed = "".join(f"\n    {n}. {o}" for n, o in enumerate(overloads, 1))
    return TypeError(
        f"{call}: incompatible function arguments. The following argument types are "
        f"supported:{listed}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | enum.Enum)


class bo:
    """A buffer object, with pyxrt's constructors: ``bo(device, size, flags, group)``,
    ``bo(hw_context, size, flags, group)``, ``bo(hw_context, size, group)`` (default
    flags: ``normal``, refused by the NPU driver), or the sub-buffer
    ``bo(parent, size, offset)`` of a root BO. ``flags`` must be a ``bo.flags`` member.

    Raises:
        TypeError: arguments no pyxrt constructor takes.
        DriverRuleError: flags other than ``host_only`` or ``cacheable``, a
            size below 1, a sub-buffer outside its parent or of a sub-buffer.
        RuntimeError: the locked-memory limit would be passed (a plain one, as XRT's).
    """

    flags = BOFlags
    normal = BOFlags.normal
    cacheable = BOFlags.cacheable
    device_only = BOFlags.device_only
    host_only = BOFlags.host_only
    p2p = BOFlags.p2p
    svm = BOFlags.svm

    def __init__(self, owner: Any, size: int, *rest: Any) -> None:
        from npu_pipeline.emulator._device import device, hw_context

        if not _is_int(size) or not all(_is_int(r) or isinstance(r, BOFlags) for r in rest):
            raise _no_overload("bo.__init__()", _BO_OVERLOADS)
        size = int(size)
        if isinstance(owner, bo) and len(rest) == 1 and _is_int(rest[0]):
            self._init_sub(owner, size, int(rest[0]))
        elif (
            isinstance(owner, device | hw_context)
            and len(rest) == 2
            and isinstance(rest[0], BOFlags)
            and _is_int(rest[1])
        ):
            self._init_root(owner._state, size, rest[0], int(rest[1]))
        elif isinstance(owner, hw_context) and len(rest) == 1 and _is_int(rest[0]):
            self._init_root(owner._state, size, BOFlags.normal, int(rest[0]))
        else:
            raise _no_overload("bo.__init__()", _BO_OVERLOADS)
        self._storage.bos += 1
        _count_bo(+1)
        weakref.finalize(self, _free_bo, self._storage, self._locked)

    def _init_root(self, state: DeviceState, size: int, flags: BOFlags, group: int) -> None:
        state.check_alive("bo allocation")
        check_dangling(state)
        if flags not in ACCEPTED_FLAGS:
            raise DriverRuleError(
                explain(
                    f"bo flags {flags.name} are rejected by the NPU driver",
                    "bo.host_only for data buffers, bo.cacheable for the instruction buffer",
                    "The NPU has no device memory: allocate host_only (data) or cacheable "
                    "(instructions).",
                )
            )
        self._check_size(size, "bo size")
        self._locked = lock_pages(state, size)
        self._storage = Storage(size, state)
        self._offset, self._size, self._flags, self._group = 0, size, flags, group
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
        # A sub-buffer keeps its parent's memory (XRT holds the parent), locks no more.
        self._storage, self._locked = parent._storage, 0
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

    def write(self, data: Any, *seek: int) -> None:
        """``write(data, seek)``: copy ``data`` (a contiguous buffer) into the host bytes
        at byte ``seek``."""
        if len(seek) != 1:
            raise _no_overload("write()", ("write(self: bo, arg0: buffer, arg1: int)",))
        src = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        storage = self._storage
        check_dangling(storage.state)
        start, end = self._range(src.size, int(seek[0]), "write")
        storage.check_host_access(start, end, "write")
        self._copy(storage.host[start:end], src)

    def read(self, *size_skip: int) -> np.ndarray:
        """``read(size, skip)``: a copy of ``size`` host bytes from byte ``skip``, as int8.

        Raises:
            BufferHazardError: a run in flight writes bytes of the range.
        """
        if len(size_skip) != 2:
            raise _no_overload("read()", ("read(self: bo, arg0: int, arg1: int)",))
        storage = self._storage
        check_dangling(storage.state)
        start, end = self._range(*map(int, size_skip), "read")
        storage.check_host_access(start, end, "read", reads=True)
        out = np.empty(end - start, dtype=np.uint8)
        self._copy(out, storage.host[start:end])
        return out.view(np.int8)

    def sync(self, direction: xclBOSyncDirection, *size_offset: int) -> None:
        """``sync(direction)`` (the whole BO) or ``sync(direction, size, offset)``: copy a
        range host -> device (TO_DEVICE) or device -> host (FROM_DEVICE).

        Raises:
            TypeError: an int direction, or a size without an offset (no such overload).
            DriverRuleError: a GMIO direction (not on the NPU) or a bad range.
            BufferHazardError: a run in flight uses the range.
            DeviceError: the device is lost.
        """
        if not isinstance(direction, xclBOSyncDirection) or len(size_offset) not in (0, 2):
            raise _no_overload(
                "sync()", ("sync(dir: xclBOSyncDirection, size, offset)", "sync(dir)")
            )
        storage = self._storage
        storage.state.check_alive("sync")
        check_dangling(storage.state)
        if direction not in (
            xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE,
            xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE,
        ):
            raise DriverRuleError(
                explain(
                    f"sync direction {direction.name}",
                    "xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE or _FROM_DEVICE",
                    "GMIO directions are for AIE graphs, not NPU kernels.",
                )
            )
        size, offset = map(int, size_offset) if size_offset else (self._size, 0)
        start, end = self._range(size, offset, "sync")
        storage.check_host_access(start, end, "sync")
        if direction == xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE:
            self._copy(storage.device[start:end], storage.host[start:end])
            storage.device_version += 1
        else:
            self._copy(storage.host[start:end], storage.device[start:end])

    def map(self) -> memoryview:
        """A writable view of this BO's host bytes. It does not keep the BO alive.

        Writes through it cannot be intercepted; runs started later record and
        compare the bytes of mapped BOs to detect them, and fill a mapped
        output with :data:`POISON` while its run is in flight.
        """
        storage = self._storage
        check_dangling(storage.state)
        start, end = self._offset, self._offset + self._size
        storage.check_host_access(start, end, "map")
        storage.mapped = True
        # Every array made from the view keeps this slice (the view's exporter) alive:
        # watching it tells whether any of them still lives.
        exporter = storage.host[start:end]
        storage.views = [v for v in storage.views if v() is not None]
        storage.views.append(weakref.ref(exporter))
        return memoryview(exporter)

    def _copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        """Copy host <-> device bytes, GIL held when the device plays pyxrt's GIL."""
        if self._storage.state.hold_gil:
            _gil.copy(dst, src)
        else:
            dst[:] = src

    def size(self) -> int:
        """Size in bytes."""
        return self._size

    def address(self) -> int:
        """The (fake) device address of the first byte."""
        return self._storage.address + self._offset

    def __repr__(self) -> str:
        kind = "sub-bo" if self._is_sub else "bo"
        return f"<emulated {kind} {self._size} B, {self._flags.name}, group {self._group}>"
