"""Slots: the BOs one batch uses, and the run objects bound to them."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from npu_pipeline.device import memlock
from npu_pipeline.errors import ShapeError, explain

if TYPE_CHECKING:
    from npu_pipeline.device.submission import Submission
    from npu_pipeline.device.xrt import XrtSession


@dataclass(frozen=True, eq=False)
class Slot:
    """The buffers one batch uses: one BO per contract buffer.

    Attributes:
        index: the slot's number in its device.
        capacity: bytes of each buffer, by buffer name.
        dtypes: each buffer's element type, by buffer name.
        views: a uint8 numpy view over each BO's mapped host bytes. Valid
            until the slot is freed or the device closed, which empties this
            mapping before the BOs go: pyxrt's ``map()`` views do not keep a BO
            alive, so no array made from one may be kept past that.
    """

    index: int
    capacity: Mapping[str, int]
    dtypes: Mapping[str, str]
    views: Mapping[str, np.ndarray]

    def view(self, name: str, dtype: Any = None) -> np.ndarray:
        """The whole of buffer ``name`` as a flat array of ``dtype`` (default its own)."""
        return self.views[name].view(dtype or self.dtypes[name])


class SlotBuffers:
    """Every slot's BOs, and the runs and runlists made over them, made once and reused.

    Not locked: the device calls it with its lock held.
    """

    def __init__(self, session: XrtSession) -> None:
        self._session = session
        self._contract = session.contract
        self._numbers = itertools.count()
        self._roots: dict[int, dict[str, Any]] = {}  # slot index -> root BO per buffer
        self._slots: dict[int, Slot] = {}  # slot index -> the slot handed out (its views)
        self._subs: dict[tuple[int, str, int], list[Any]] = {}  # (slot, buffer, stride) -> BOs
        self._instr: dict[tuple[int, int, int], tuple[Any, int]] = {}  # block -> (BO, n_insts)
        # (slot, block, run) -> run object with its arguments set: started again.
        self._runs: dict[tuple[int, tuple[int, int, int], int], Any] = {}
        # (slot, block, first run, runs) -> (runlist, its runs): re-executed, as XRT allows.
        self._chains: dict[tuple[int, tuple[int, int, int], int, int], tuple[Any, tuple]] = {}

    def allocate(self, capacity: Mapping[str, int]) -> Slot:
        """A new slot: one ``host_only`` BO of ``capacity[name]`` bytes per contract buffer.

        Raises:
            DeviceError: the BOs would pass the locked-memory limit (checked
                first), or XRT refused them; it says how to raise the limit.
        """
        contract, session = self._contract, self._session
        sizes = [capacity[b.name] for b in contract.buffers]
        roots = self._pin(
            sizes,
            f"a slot of {sum(sizes)} bytes",
            lambda: {b.name: session.allocate(capacity[b.name], b.name) for b in contract.buffers},
        )
        index = next(self._numbers)
        self._roots[index] = roots
        views = {name: session.view(bo) for name, bo in roots.items()}
        dtypes = {b.name: b.dtype for b in contract.buffers}
        slot = Slot(index=index, capacity=dict(capacity), dtypes=dtypes, views=views)
        self._slots[index] = slot
        return slot

    def _pin(self, sizes: list[int], what: str, allocate: Callable[[], Any]) -> Any:
        """``allocate()`` BOs of ``sizes`` bytes once the locked-memory limit allows them."""
        limit, locked = self._session.memlock()
        asked = memlock.pinned(sizes)
        memlock.check(asked, what, limit, locked)
        try:
            return allocate()
        except RuntimeError as error:
            raise memlock.refused(error, asked, what, limit, locked) from error

    def free(self, index: int) -> None:
        """Drop slot ``index``'s views, then its BOs and everything made over them
        (idempotent)."""
        slot = self._slots.pop(index, None)
        if slot is not None:
            slot.views.clear()  # type: ignore[attr-defined]  # the dict allocate made
        self._roots.pop(index, None)
        for cache in (self._subs, self._chains, self._runs):
            for key in [key for key in cache if key[0] == index]:
                del cache[key]

    def clear(self) -> None:
        """Drop every slot's views, then every BO (the instruction BOs too)."""
        for slot in self._slots.values():
            slot.views.clear()  # type: ignore[attr-defined]
        for cache in (self._slots, self._chains, self._runs, self._subs, self._roots, self._instr):
            cache.clear()

    def drop_runs(self) -> None:
        """Forget every run and runlist: they are bound to a hardware context that was
        replaced (the BOs are the device's and stay)."""
        self._runs.clear()
        self._chains.clear()

    def roots_of(self, slot: Slot) -> dict[str, Any]:
        """The root BO of each buffer of ``slot``.

        Raises:
            ShapeError: the slot has been freed.
        """
        roots = self._roots.get(slot.index)
        if roots is None:
            raise ShapeError(
                explain(
                    f"slot {slot.index} has been freed",
                    "an allocated slot, freed only after wait() returned",
                    "Allocate a new slot.",
                )
            )
        return roots

    def run(self, sub: Submission, index: int) -> Any:
        """The run object of run ``index`` of ``sub``'s slot, its arguments set.

        Made once per slot, block and index and started again for later
        batches (``run.start()`` of a run that ended), which spares creating a
        run (and its command buffer) and setting its arguments per start.
        """
        key = (sub.slot.index, sub.block, index)
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = self._session.make_run(self._arguments(sub, index))
        return run

    def chain(self, sub: Submission, first: int, count: int) -> tuple[Any, tuple]:
        """The runlist of runs ``first .. first + count - 1`` of ``sub``'s slot, and its runs.

        Made once per slot, block and range, and executed again for later
        batches (XRT allows it once the list was waited for).
        """
        key = (sub.slot.index, sub.block, first, count)
        cached = self._chains.get(key)
        if cached is None:
            session = self._session
            runs = [session.make_run(self._arguments(sub, i)) for i in range(first, first + count)]
            cached = self._chains[key] = (session.make_chain(runs), tuple(runs))
        return cached

    def _arguments(self, sub: Submission, run: int) -> tuple[Any, ...]:
        instr, n_insts = self._instructions(sub.block)
        return (self._contract.opcode, instr, n_insts, *self._run_bos(sub, run))

    def _run_bos(self, sub: Submission, run: int) -> list[Any]:
        """The BO of each buffer for run ``run``: the root for a lone run 0, else a
        cached sub-buffer."""
        roots = self.roots_of(sub.slot)
        if sub.n_runs == 1 and run == 0:
            return [roots[b.name] for b in self._contract.buffers]
        bos = []
        for name, stride in sub.shape.stride.items():
            subs = self._subs.setdefault((sub.slot.index, name, stride), [])
            while len(subs) <= run:
                subs.append(self._session.sub_buffer(roots[name], stride, len(subs) * stride))
            bos.append(subs[run])
        return bos

    def _instructions(self, block: tuple[int, int, int]) -> tuple[Any, int]:
        """The cached instruction BO of ``block`` and its ``n_insts``."""
        cached = self._instr.get(block)
        if cached is None:
            session = self._session
            build = session.build
            words = build.instruction_words(block)
            bo = self._pin(
                [words.nbytes],
                f"the instructions of block {block}",
                lambda: session.load_instructions(words),
            )
            cached = self._instr[block] = (bo, build.instruction_count(words))
        return cached
