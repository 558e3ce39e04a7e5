"""The three-stage async pipeline: ``await pipe.matmul(A, B)`` for many concurrent callers.

How a matmul flows (see docs/pipeline.md for the picture):

1. ``matmul()`` checks its operands, takes the planner's plan for the shape
   (cached), and queues a *request* with the scheduler. It then waits.
2. The **feed** task asks the scheduler for the next batch (round-robin over
   live requests, one batch at a time, so a small request is never stuck
   behind a large one), takes a free *slot* (its BOs), and in a worker thread
   **packs** the batch's A and B blocks into the slot (numba) and **starts**
   the run on the device. Short batches of one block shape share a slot and
   one submission (see ``Pipeline._gather``): their hand-offs cost more than
   their work.
3. The **drain** task, in a worker thread, **waits** for the oldest run and
   **accumulates** its int32 output into the caller's C (or an int32
   accumulator, requantised once when its output block is final), then puts
   the slot back in the pool.

While the device executes batch n, feed packs batch n+1 into another slot and
drain accumulates batch n-1: the three stages overlap. The slot pool is the
only backpressure: host memory stays bounded by the plan however large the
matrices are, and no buffer is ever written while a run that uses it is in
flight, because a slot returns to the pool only after its output was read.

Failures are per request: a device fault, a bad batch, or a cancelled caller
retires that request's batches (waiting for any run still in flight before
its slot is reused) and leaves every other request running.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import numpy as np

from npu_pipeline import packing
from npu_pipeline.contract import KernelContract, load_contract
from npu_pipeline.device import CHAIN_BUDGET_S, NpuDevice, Slot, check_device_options
from npu_pipeline.errors import (
    DeviceError,
    DTypeError,
    NpuPipelineError,
    PipelineClosedError,
    ShapeError,
    explain,
)
from npu_pipeline.exact import host_matmul
from npu_pipeline.learning import CostLearner
from npu_pipeline.operands import check_operands, check_out, check_out_dtype
from npu_pipeline.planner import (
    BATCHES_PER_BUDGET,
    Batch,
    Plan,
    check_latency_budget,
    check_slots,
    host_path_cap_s,
    plan_batches,
    stage_model,
)
from npu_pipeline.profile_lookup import get_profile
from npu_pipeline.profiles import DeviceProfile
from npu_pipeline.reference import Rounding, Saturation
from npu_pipeline.timeline import DEFAULT_MAX_SPANS, Span, Timeline

#: How long a cancelled or closing request may wait for its in-flight runs
#: before giving up, seconds. Runs are planned to take far less than the
#: watchdog; past twice the watchdog the device has been reset anyway.
_RETIRE_GRACE_S = 5.0

#: A host-path product modelled to take at most this long runs on the event
#: loop itself, seconds: a worker-thread hand-off costs more (100-150 us
#: here), and it stays well inside the ~100 us of CPU work a loop may spend
#: without delaying other tasks noticeably.
INLINE_HOST_S = 50e-6

#: The slot number host-path spans carry: they use no slot.
HOST_SLOT = -1

#: The state of a run ended because another one failed before it (XRT aborts
#: what is queued behind a fault or a watchdog reset): it is not to blame.
_ABORT = "ERT_CMD_STATE_ABORT"


@dataclass(frozen=True)
class Requantisation:
    """How an int8 result is made from the exact int32 sum (applied once, to the full sum)."""

    shift: int
    rounding: Rounding
    saturation: Saturation


@dataclass(eq=False)
class _Request:
    """One ``matmul()`` call in flight. Mutated only on the event-loop thread, except
    ``started_at`` and ``ended_at``, which the stage threads write and the loop
    reads only once the request is done."""

    id: int
    a: np.ndarray
    b: np.ndarray
    out: np.ndarray
    plan: Plan
    requant: Requantisation | None
    done: anyio.Event = field(default_factory=anyio.Event)
    next_batch: int = 0  # index of the next batch to schedule
    outstanding: int = 0  # batches taken by the feed and not yet retired
    retired: int = 0  # batches finished successfully
    error: BaseException | None = None
    cancelled: bool = False
    # int32 sums of output blocks still collecting k-blocks (int8 output only).
    accumulators: dict[tuple[tuple[int, int], tuple[int, int]], np.ndarray] = field(
        default_factory=dict
    )
    # Measured wall time, for the cost model: written by the stage threads
    # (first pack start, last accumulate end), read once the request is done.
    started_at: float = math.inf
    ended_at: float = -math.inf
    shared: bool = False  # other requests were queued with it: its wall is not its own

    @property
    def stopped(self) -> bool:
        """True once no further batch of this request should run (failed or cancelled)."""
        return self.error is not None or self.cancelled

    def maybe_finish(self) -> None:
        """Wake the caller once no stage holds anything of this request any more."""
        complete = self.retired == len(self.plan.batches)
        if (complete or self.stopped) and self.outstanding == 0:
            self.accumulators.clear()
            self.done.set()


@dataclass(eq=False)
class _Work:
    """Batches on their way through the stages in one slot, run as one submission.

    Usually one batch. Batches whose runs are short share a slot (side by
    side, one run region after another) so that the hand-offs and the
    device's dispatch are paid once for all of them; they all have the same
    block shape, and ``regions[i]`` is where batch ``i``'s runs lie in the slot.
    """

    batches: list[tuple[_Request, Batch]]
    slot: int
    buffers: Slot | None = None
    regions: list[_Region] = field(default_factory=list)  # set when packed
    submission: Any = None
    submitted_at: float = 0.0
    device_s: float = 0.0  # modelled device seconds of all its runs
    cold: bool = False  # the slot's BOs were allocated for this work (first touches fault)

    @property
    def block(self) -> tuple[int, int, int]:
        return self.batches[0][1].block

    @property
    def n_runs(self) -> int:
        return sum(batch.n_runs for _, batch in self.batches)


class _Scheduler:
    """Round-robin over live requests at batch granularity.

    A new request joins the queue after the requests that have not had a
    batch picked yet and before those that have: a request that arrives
    while a large one runs is picked next, not after the large one's next turn.
    """

    def __init__(self) -> None:
        self._queue: deque[_Request] = deque()
        self._work_ready = anyio.Event()

    def add(self, request: _Request) -> None:
        if self._queue:
            request.shared = True
            for other in self._queue:
                other.shared = True
        waiting = 0  # requests never picked yet, at the front of the queue
        while waiting < len(self._queue) and self._queue[waiting].next_batch == 0:
            waiting += 1
        self._queue.insert(waiting, request)
        self._work_ready.set()

    def discard(self, request: _Request) -> None:
        if request in self._queue:
            self._queue.remove(request)

    async def wait_for_work(self) -> None:
        while not self._queue:
            self._work_ready = anyio.Event()
            await self._work_ready.wait()

    def waiting(self) -> int:
        """Batches of live requests not yet picked."""
        return sum(len(r.plan.batches) - r.next_batch for r in self._queue if not r.stopped)

    def pick(self, accept: Callable[[Batch], bool] | None = None) -> tuple[_Request, Batch] | None:
        """The next batch of the request at the front; that request moves to the back.

        With ``accept``, None instead when that batch is not accepted: a
        group of batches is always a run of consecutive round-robin picks.
        """
        while self._queue:
            request = self._queue[0]
            if request.stopped or request.next_batch >= len(request.plan.batches):
                self._queue.popleft()
                continue
            batch = request.plan.batches[request.next_batch]
            if accept is not None and not accept(batch):
                return None
            self._queue.popleft()
            request.next_batch += 1
            request.outstanding += 1
            if request.next_batch < len(request.plan.batches):
                self._queue.append(request)
            return request, batch
        return None


class _SlotPool:
    """``count`` slots, each a set of BOs; a slot is held by at most one batch at a time.

    Slots are numbered 0..count-1. Their BOs are allocated on first use and
    re-allocated only while the slot is held but idle (before packing), when a
    batch needs more bytes than the slot has; so the pool always stays within
    the memory budget and never touches a buffer that a run is using.
    """

    def __init__(self, device: NpuDevice, count: int, slot_budget: int) -> None:
        self._device = device
        self.slot_budget = slot_budget
        self._buffers: list[Slot | None] = [None] * count
        self._free: deque[int] = deque(range(count))
        self._held: set[int] = set()
        self._released = anyio.Event()

    @property
    def held(self) -> int:
        """Slots currently held by a batch."""
        return len(self._held)

    async def acquire(self) -> int:
        while not self._free:
            self._released = anyio.Event()
            await self._released.wait()
        # Most recently released first: its BOs are allocated, paged in and
        # cache-warm, and a stream of small requests keeps reusing one slot.
        slot = self._free.pop()
        self._held.add(slot)
        return slot

    def release(self, slot: int) -> None:
        """Return ``slot`` to the pool; a second release is harmless (teardown may race)."""
        if slot in self._held:
            self._held.discard(slot)
            self._free.append(slot)
            self._released.set()

    def allocated(self, slot: int) -> Slot | None:
        """The BOs ``slot`` has now (None before its first use)."""
        return self._buffers[slot]

    def buffers(self, slot: int, needs: dict[str, int]) -> Slot:
        """The BOs of held ``slot``, big enough for ``needs`` (bytes per buffer). Worker thread."""
        current = self._buffers[slot]
        if current is not None and all(current.capacity[n] >= size for n, size in needs.items()):
            return current
        grown = dict(needs)
        if current is not None:
            grown = {n: max(size, current.capacity[n]) for n, size in needs.items()}
            # Keeping the larger of old and new per buffer could pass the
            # per-slot budget when plans differ in shape: then fit exactly.
            if sum(grown.values()) > self.slot_budget:
                grown = dict(needs)
            self._buffers[slot] = None
            self._device.free_slot(current)
        self._buffers[slot] = self._device.allocate_slot(grown)
        return self._buffers[slot]

    def free_all(self) -> None:
        for index, buffers in enumerate(self._buffers):
            if buffers is not None:
                self._device.free_slot(buffers)
                self._buffers[index] = None


class Pipeline:
    """A device, its slots, and the tasks that stream batches through it.

    Create it with :func:`open_pipeline`; it is usable only inside that
    ``async with`` block. Call its methods from the event loop.

    Attributes:
        contract: the kernel contract every batch runs.
        profile: the device profile plans are made for.
        slots: number of BO slots (2 = double buffering).
        memory_budget: pinned host memory all slots together may use, bytes.
        latency_budget_s: device seconds of started work the scheduler lets
            queue on the device at once (``None`` in :func:`open_pipeline`
            gives the planner's default); a new batch waits behind at most that.
        host_path: plans may send a request to an exact product on the host.
        timeline: every stage of every batch, as spans, the newest ``max_spans`` kept
            (see :mod:`npu_pipeline.timeline`).
        cost_model: what the stage spans taught about the profile's model, and
            each recent request's predicted vs measured wall time
            (:class:`~npu_pipeline.learning.CostLearner`; ``print(pipe.cost_model.format())``).
            Plans are made with its corrections; a request whose measured wall
            leaves ``learning.DRIFT_BAND`` of its prediction drops the cached
            plan of its shape, so the next call of that shape plans again.
    """

    def __init__(
        self,
        device: NpuDevice,
        contract: KernelContract,
        profile: DeviceProfile,
        slots: int,
        memory_budget: int,
        latency_budget_s: float,
        host_path: bool = True,
        max_spans: int | None = DEFAULT_MAX_SPANS,
    ) -> None:
        self.contract = contract
        self.profile = profile
        self.slots = slots
        self.memory_budget = memory_budget
        self.latency_budget_s = latency_budget_s
        self.host_path = host_path
        self.timeline = Timeline(max_spans=max_spans)
        self.cost_model = CostLearner(profile=profile.name)
        # The uncorrected stage model per out dtype, that spans are compared with.
        self._models: dict[str, Callable[[Batch], tuple[float, float, float]]] = {}
        # The tile shape of the contract's layout on this NPU generation (r, s, t).
        self._micro_tile = contract.target(profile.generation).micro_tile
        self._device = device
        self._pool = _SlotPool(device, slots, memory_budget // slots)
        self._scheduler = _Scheduler()
        # One worker thread for the feed stage, one for the drain stage.
        self._limiter = anyio.CapacityLimiter(2)
        # Host-path products get a thread of their own: they never hold up a stage.
        self._host_limiter = anyio.CapacityLimiter(1)
        # The feed starts more work only while the device time started and not
        # yet retired leaves room for one more batch of the budget's share.
        self._queue_limit_s = latency_budget_s - latency_budget_s / BATCHES_PER_BUDGET
        self._device_freed = anyio.Event()
        self._ids = itertools.count(1)
        self._plans: dict[tuple[int, int, int, str], Plan] = {}
        self._group_limits: dict[tuple[int, int, int], int] = {}  # runs per slot, by block
        self._requests: set[_Request] = set()
        self._started: deque[_Work] = deque()  # runs started and not yet waited for
        self._device_free_at = 0.0  # when the last waited-for run ended (drain thread only)
        self._closed = False
        self._stopped = anyio.Event()
        self._stage_scope: anyio.CancelScope | None = None

    # -- public API ---------------------------------------------------------

    @property
    def device_info(self) -> Any:
        """Which device runs the batches (real XRT or the emulator), and its details."""
        return self._device.info

    @property
    def slots_in_use(self) -> int:
        """Slots currently held by a batch (0 when the pipeline is idle)."""
        return self._pool.held

    @property
    def active_requests(self) -> int:
        """``matmul()`` calls not yet finished."""
        return len(self._requests)

    def plan(self, m: int, k: int, n: int, out_dtype: Any = None) -> Plan:
        """The plan ``matmul`` executes for an (m x k) @ (k x n) product.

        ``out_dtype`` as in :meth:`matmul` (``None``: the contract's output).
        Cached per shape; made with :attr:`cost_model`'s corrections, and made
        again after a request of the shape drifted from its prediction.
        """
        dtype = check_out_dtype(out_dtype, self.contract)
        key = (m, k, n, dtype.name)
        if key not in self._plans:
            self._plans[key] = plan_batches(
                m,
                k,
                n,
                kernel=self.contract,
                profile=self.profile,
                slots=self.slots,
                memory_budget=self.memory_budget,
                out_dtype=dtype,
                latency_budget_s=self.latency_budget_s,
                host_path=self.host_path,
                corrections=self.cost_model.corrections(),
            )
            if dtype.name not in self._models:
                self._models[dtype.name] = stage_model(self.contract, self.profile, dtype)
        return self._plans[key]

    async def matmul(
        self,
        a: np.ndarray,
        b: np.ndarray,
        *,
        out_dtype: Any = None,
        shift: int = 0,
        rounding: Rounding | str | None = None,
        saturation: Saturation | str = Saturation.SATURATE,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """``a @ b`` for int8 matrices of any shape, computed on the device.

        Args:
            a: int8 matrix (M, K); views are read in place, never copied.
            b: int8 matrix (K, N).
            out_dtype: ``np.int32`` for the exact product, or ``np.int8`` for
                the product requantised once, with shift-round-saturate;
                ``None`` (the default) means the contract's output: int32 for
                ``block_gemm`` kernels, int8 for ``tile_pair`` ones (which
                cannot produce int32).
            shift: right shift in bits (0..31) before rounding; int8 output only.
            rounding: rounding mode for int8 output; default the contract's
                (``floor``, the AIE power-on default, which is what ``>>`` does).
            saturation: saturation mode for int8 output (only the default with int32).
            out: optional preallocated (M, N) array of ``out_dtype``.

        Returns:
            ``out`` (or a new array) holding the result.

        Raises:
            DTypeError, ShapeError: bad input, refused before any work.
            DeviceError: a run of this request failed (names its batch and state).
            PipelineClosedError: the pipeline closed before the request finished.
        """
        self._check_open()
        a, b, (m, k, n) = check_operands(a, b)
        dtype = check_out_dtype(out_dtype, self.contract)
        requant = self._requantisation(dtype, shift, rounding, saturation)
        if out is None:
            out = np.empty((m, n), dtype=dtype)
        else:
            check_out(out, (m, n), dtype, a, b)
        plan = self.plan(m, k, n, dtype)
        if plan.path == "host" or self._host_beats_busy_device(plan):
            return await self._on_host(a, b, out, requant, plan)
        request = _Request(next(self._ids), a, b, out, plan, requant)
        self._requests.add(request)
        self._scheduler.add(request)
        try:
            await request.done.wait()
        finally:
            if not request.done.is_set():
                # Cancelled: schedule nothing more, then wait (shielded, and
                # briefly: runs are far shorter than the watchdog) until no
                # stage touches this request's arrays any more.
                request.cancelled = True
                self._scheduler.discard(request)
                request.maybe_finish()
                with anyio.CancelScope(shield=True), anyio.move_on_after(_RETIRE_GRACE_S):
                    await request.done.wait()
            self._requests.discard(request)
        if request.error is not None:
            raise request.error
        return out

    def _host_beats_busy_device(self, plan: Plan) -> bool:
        """Whether the device's backlog makes the host path faster for this call.

        The plan compares the host with an idle device. A request arriving
        while the device has work started would wait for it too: when the
        modelled backlog plus the device path is longer than the host
        product, and the product is one the host path takes on
        (:func:`~npu_pipeline.planner.host_path_cap_s`), the call goes to the host.
        """
        if not self.host_path or plan.host_s is None or not self._started:
            return False
        if plan.host_s > host_path_cap_s(self.latency_budget_s):
            return False
        return plan.host_s < plan.estimate.wall_s + self._backlog_s()

    async def _on_host(
        self, a: np.ndarray, b: np.ndarray, out: np.ndarray, requant: Any, plan: Plan
    ) -> np.ndarray:
        """The exact product on the host: on the event loop when modelled shorter
        than a thread hand-off, else in the host-path thread."""
        request = next(self._ids)
        started = time.perf_counter()
        # Beside an emulated device's (or anyone's) BLAS call, a multi-threaded
        # one stalls both: with work on the device, single-threaded panels.
        beside_device = bool(self._started)
        if plan.host_s <= INLINE_HOST_S:
            await anyio.lowlevel.checkpoint_if_cancelled()
            self._compute_on_host(request, a, b, out, requant, beside_device)
        else:
            await anyio.to_thread.run_sync(
                self._compute_on_host,
                request,
                a,
                b,
                out,
                requant,
                beside_device,
                limiter=self._host_limiter,
            )
        # Kept beside the device requests' records, so that reports show its error too.
        self.cost_model.record_request(
            request, plan.shape, plan.host_s, time.perf_counter() - started
        )
        return out

    def _compute_on_host(
        self,
        request: int,
        a: np.ndarray,
        b: np.ndarray,
        out: np.ndarray,
        requant: Any,
        single_thread: bool,
    ) -> None:
        with self.timeline.span(request, 0, "host", HOST_SLOT):
            if requant is None:
                host_matmul(a, b, out, single_thread)
            else:
                exact = host_matmul(a, b, np.empty(out.shape, dtype=np.int32), single_thread)
                packing.requantize(exact, out, requant.shift, requant.rounding, requant.saturation)

    async def aclose(self) -> None:
        """Stop serving: fail unfinished requests, wait for runs in flight, free everything."""
        self._closed = True
        if self._stage_scope is not None:
            self._stage_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()

    # -- checks ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise PipelineClosedError(
                explain(
                    "matmul() was called on a closed pipeline",
                    "calls inside the `async with open_pipeline(...)` block",
                    "Open a new pipeline.",
                )
            )

    def _requantisation(
        self, dtype: np.dtype, shift: Any, rounding: Any, saturation: Any
    ) -> Requantisation | None:
        if self.contract.semantic == "tile_pair":
            # The seed's semantic: clipped per-tile int8 outputs summed, the sum clipped.
            return Requantisation(0, Rounding.FLOOR, Saturation.SATURATE)
        if dtype == np.int32:
            if shift != 0:
                raise ShapeError(
                    explain(
                        f"shift={shift} with out_dtype int32",
                        "shift=0: the int32 result is the exact product",
                        "Pass out_dtype=np.int8 to requantise.",
                    )
                )
            if rounding is not None or saturation != Saturation.SATURATE:
                raise ShapeError(
                    explain(
                        f"rounding={rounding!r}, saturation={saturation!r} with out_dtype int32",
                        "no rounding and the default saturation: the int32 result is the "
                        "exact product, never rounded or clipped",
                        "Pass out_dtype=np.int8 to requantise, or leave both out.",
                    )
                )
            return None
        if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)):
            raise ShapeError(explain(f"shift={shift!r}", "an integer 0..31", "Fix the shift."))
        if not 0 <= shift <= 31:
            raise ShapeError(explain(f"shift={shift}", "an integer 0..31", "Fix the shift."))
        try:
            return Requantisation(
                int(shift),
                Rounding(rounding or self.contract.output.rounding),
                Saturation(saturation),
            )
        except ValueError:
            raise DTypeError(
                explain(
                    f"rounding={rounding!r}, saturation={saturation!r}",
                    f"rounding in {[r.value for r in Rounding]}, "
                    f"saturation in {[s.value for s in Saturation]}",
                    "Use a Rounding / Saturation member or its name.",
                )
            ) from None

    # -- serving -----------------------------------------------------------------

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Run the feed and drain stages until closed, then tear everything down."""
        try:
            with anyio.CancelScope() as scope:
                self._stage_scope = scope
                send, receive = anyio.create_memory_object_stream[_Work](self.slots)
                async with anyio.create_task_group() as group:
                    group.start_soon(self._feed, send)
                    group.start_soon(self._drain, receive)
                    task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await self._teardown()

    async def _teardown(self) -> None:
        """After the stages stopped: finish started runs, fail what is left, free the device."""
        self._closed = True
        while self._started:
            work = self._started.popleft()
            # A failed run (or a refused call) fails its request below either
            # way; what matters here is that no run is left using a BO we free.
            with contextlib.suppress(NpuPipelineError):
                await anyio.to_thread.run_sync(
                    self._device.wait, work.submission, limiter=self._limiter
                )
        for request in self._requests:
            if not request.done.is_set():
                # One error object per request: each caller raises its own.
                request.error = request.error or PipelineClosedError(
                    explain(
                        "the pipeline closed while this request was queued or running",
                        "every matmul() to finish inside the `async with open_pipeline(...)` block",
                        "Await your requests before leaving the block.",
                    )
                )
                request.accumulators.clear()
                request.done.set()
        await anyio.to_thread.run_sync(self._release_device, limiter=self._limiter)
        self._stopped.set()

    def _release_device(self) -> None:
        try:
            self._pool.free_all()
        finally:
            self._device.close()

    async def _feed(self, send: Any) -> None:
        """Pick a batch (and others to share its slot), take a slot, pack and start; repeat."""
        async with send:
            while True:
                await self._scheduler.wait_for_work()
                # The latency budget: pick (round-robin) only once the device has
                # room, so that a request arriving meanwhile is picked next.
                while self._device_full():
                    self._device_freed = anyio.Event()
                    await self._device_freed.wait()
                # Taken only now, so that no slot is held without a batch: only
                # the feed starts work, so the device cannot fill up meanwhile.
                slot = await self._pool.acquire()
                picked = self._scheduler.pick()
                if picked is None:
                    self._pool.release(slot)
                    continue
                work = _Work([picked], slot)
                self._gather(work)
                work.device_s = sum(_planned_execute_s(r, b) for r, b in work.batches)
                try:
                    await anyio.to_thread.run_sync(
                        self._pack_and_start, work, limiter=self._limiter
                    )
                except NpuPipelineError as error:
                    self._retire(work, [error] * len(work.batches))
                    continue
                self._started.append(work)
                await send.send(work)

    def _backlog_s(self) -> float:
        """Modelled device seconds of the work started and not yet retired."""
        return sum(work.device_s for work in self._started)

    def _device_full(self) -> bool:
        """Whether the work started and not yet retired leaves no room for another pick.

        Room is half the latency budget (one more batch of a plan that fits
        it). Past that, a second submission is still started behind one that
        takes at most the whole budget, so that the stages keep overlapping;
        behind a longer one (a plan that does not fit) nothing more is
        started until it ends, so that a request arriving meanwhile waits for
        one such batch, not two.
        """
        queued = self._backlog_s()
        if queued <= self._queue_limit_s:
            return False
        return len(self._started) >= BATCHES_PER_BUDGET or queued > self.latency_budget_s

    def _gather(self, work: _Work) -> None:
        """Add to ``work`` the next round-robin batches of its block shape, while they fit.

        Small batches cost more in hand-offs (two worker-thread hops, the
        device's dispatch) than in work, so consecutive picks of one block
        shape share a slot up to :meth:`_group_runs` runs. The backlog is
        spread over the slots, so that every slot has work and the stages
        still overlap; a batch of another shape ends the group, so the
        round-robin order is kept exactly.
        """
        block = work.block
        limit = self._group_runs(block)
        share = -(-(self._scheduler.waiting() + 1) // self.slots)

        def fits(batch: Batch) -> bool:
            return batch.block == block and work.n_runs + batch.n_runs <= limit

        while len(work.batches) < share and (picked := self._scheduler.pick(fits)) is not None:
            work.batches.append(picked)

    def _group_runs(self, block: tuple[int, int, int]) -> int:
        """Most runs of ``block`` one slot carries: its share of memory, and one chain's
        worth of device time (:data:`~npu_pipeline.device.CHAIN_BUDGET_S`, as the
        profile models it) within the latency budget's share of a batch."""
        limit = self._group_limits.get(block)
        if limit is None:
            per_run = sum(self.contract.run_buffer_bytes(block).values())
            by_memory = self._pool.slot_budget // per_run
            seconds = min(CHAIN_BUDGET_S, self.latency_budget_s / BATCHES_PER_BUDGET)
            by_time = int(seconds / self.profile.run_seconds(self.contract, block, queued=True))
            limit = self._group_limits[block] = max(1, min(by_memory, by_time))
        return limit

    async def _drain(self, receive: Any) -> None:
        """Wait for the oldest submission, fold its outputs into C, free its slot; repeat."""
        async with receive:
            async for work in receive:
                try:
                    errors = await anyio.to_thread.run_sync(
                        self._wait_and_accumulate, work, limiter=self._limiter
                    )
                except NpuPipelineError as error:
                    errors = [error] * len(work.batches)
                self._retire(work, errors)

    def _retire(self, work: _Work, errors: list[BaseException | None]) -> None:
        """Give the slot back and account each batch to its request (event-loop thread)."""
        if work in self._started:
            self._started.remove(work)
            self._device_freed.set()
        self._pool.release(work.slot)
        for (request, _), error in zip(work.batches, errors, strict=True):
            request.outstanding -= 1
            if error is not None and request.error is None:
                request.error = _detached(error)
            elif error is None and not request.stopped:
                request.retired += 1
            finished = request.done.is_set()
            request.maybe_finish()
            if not finished and request.done.is_set() and not request.stopped:
                self._check_prediction(request)

    def _check_prediction(self, request: _Request) -> None:
        """Keep a finished request's predicted vs measured wall time; drop its shape's
        cached plan when the two drifted apart, so the next call plans again."""
        plan = request.plan
        if request.ended_at < request.started_at:
            return  # no stage span: nothing measured
        record = self.cost_model.record_request(
            request.id,
            plan.shape,
            plan.estimate.wall_s,
            request.ended_at - request.started_at,
            shared=request.shared,
        )
        key = (*plan.shape, plan.out_dtype)
        if record.replanned and self._plans.get(key) is plan:
            del self._plans[key]

    # -- work done in worker threads ------------------------------------------------

    def _pack_and_start(self, work: _Work) -> None:
        """Worker thread: size the slot, pack each batch into its runs' region, start them."""
        stride = self.contract.run_buffer_bytes(work.block)
        needs = {name: size * work.n_runs for name, size in stride.items()}
        held = self._pool.allocated(work.slot)
        work.buffers = self._pool.buffers(work.slot, needs)
        work.cold = work.buffers is not held
        first_runs = itertools.accumulate((batch.n_runs for _, batch in work.batches), initial=0)
        work.regions = [_Region(work.buffers, stride, run) for run in first_runs][:-1]
        for (request, batch), region in zip(work.batches, work.regions, strict=True):
            with self._measured(work, request, batch, "pack"):
                self._pack(request, batch, region)
        request, batch = work.batches[0]
        work.submitted_at = time.perf_counter()
        work.submission = self._device.start(
            work.buffers, work.block, n_runs=work.n_runs, batch=batch.index, request=request.id
        )

    def _pack(self, request: _Request, batch: Batch, region: _Region) -> None:
        """Pack one batch's operands into its runs' region of the slot."""
        if self.contract.semantic == "tile_pair":
            packing.pack_tile_pairs(
                request.a,
                request.b,
                batch.m_range,
                batch.k_range,
                batch.n_range,
                region.view("in", np.int8),
            )
            return
        bm, bk, bn = batch.block
        r, s, t = self._micro_tile
        layout = self.contract.layout
        packing.pack_block(
            request.a,
            batch.m_range,
            batch.k_range,
            region.view("a", np.int8),
            (bm, bk),
            layout,
            (r, s),
        )
        packing.pack_block(
            request.b,
            batch.k_range,
            batch.n_range,
            region.view("b", np.int8),
            (bk, bn),
            layout,
            (s, t),
        )

    def _wait_and_accumulate(self, work: _Work) -> list[BaseException | None]:
        """Worker thread: wait for the work's runs, fold each batch's output into its C.

        Returns each batch's error, or None for a batch that went well.
        """
        errors = self._wait(work)
        for (request, batch), region, error in zip(work.batches, work.regions, errors, strict=True):
            if error is None and not request.stopped:  # else leave C alone
                with self._measured(work, request, batch, "accumulate"):
                    self._accumulate(request, batch, region)
        return errors

    @contextlib.contextmanager
    def _measured(self, work: _Work, request: _Request, batch: Batch, stage: str) -> Iterator[None]:
        """Worker thread: time the block as ``stage`` of ``batch``; record the span, and
        when the block did not raise, teach the cost model and the request's wall time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            self.timeline.record(Span(request.id, batch.index, stage, work.slot, start, end))
        if stage == "pack":
            request.started_at = min(request.started_at, start)
            modelled = self._models[request.plan.out_dtype](batch)[0]
        else:
            request.ended_at = end
            modelled = self._models[request.plan.out_dtype](batch)[2]
        self.cost_model.observe(stage, batch.block, end - start, modelled, cold=work.cold)

    def _wait(self, work: _Work) -> list[BaseException | None]:
        """Worker thread: wait for the submission; on a fault, run again what only lost
        its output to it. Each batch's error, or None."""
        failure = None
        try:
            # Cancellation reaches a submission between its runs: once every
            # request in it has stopped, its runs not yet started are skipped.
            self._device.wait(
                work.submission, should_stop=lambda: all(r.stopped for r, _ in work.batches)
            )
        except DeviceError as error:
            failure = error
        finally:
            # The device runs one command at a time, in submission order: this
            # run can only have started once it was submitted and the previous
            # one had ended. Spans measured from submission would count the
            # time spent queued behind other runs as execution.
            ended = time.perf_counter()
            began = max(work.submitted_at, self._device_free_at)
            self._device_free_at = ended
        for request, batch in work.batches:
            self.timeline.record(Span(request.id, batch.index, "execute", work.slot, began, ended))
        if failure is None:
            # One span covers the whole submission: compared with the sum of its
            # batches' modelled times, which apportions it by the model.
            modelled = sum(self._models[r.plan.out_dtype](b)[1] for r, b in work.batches)
            self.cost_model.observe("execute", work.block, ended - began, modelled, cold=work.cold)
            return [None] * len(work.batches)
        if len(work.batches) == 1 and _blamed_run(failure) is not None:
            return [failure]  # the device's own error already names this batch
        return self._rerun(work, failure)

    def _rerun(self, work: _Work, failure: DeviceError) -> list[BaseException | None]:
        """Worker thread: the batches of a failed submission, each run again on its own
        unless it was the one that failed.

        The device named the failed run (see :func:`_blamed_run`): its batch
        fails, with its own batch and request named. Every other batch only
        lost its output and runs once more, alone (after the device recreated
        its hardware context); a batch that fails alone fails.
        """
        blamed = _blamed_run(failure)
        errors: list[BaseException | None] = []
        for (request, batch), region in zip(work.batches, work.regions, strict=True):
            run = region.run
            if blamed is not None and run <= blamed < run + batch.n_runs:
                errors.append(_blame(failure, request, batch, len(work.batches)))
                continue
            if request.stopped:
                errors.append(None)  # nothing to redo for a failed or cancelled request
                continue
            try:
                with self.timeline.span(request.id, batch.index, "execute", work.slot):
                    self._device.wait(
                        self._device.start(
                            work.buffers,
                            work.block,
                            n_runs=batch.n_runs,
                            batch=batch.index,
                            request=request.id,
                            first_run=run,
                        )
                    )
            except NpuPipelineError as error:
                errors.append(error)
            else:
                errors.append(None)
        return errors

    def _accumulate(self, request: _Request, batch: Batch, region: _Region) -> None:
        """Fold one batch's run output into C, or into its int32 sum (requantised when final)."""
        (m0, m1), (n0, n1) = batch.m_range, batch.n_range
        key = (batch.m_range, batch.n_range)
        target = request.out[m0:m1, n0:n1]
        if request.requant is not None:
            if batch.first:
                request.accumulators[key] = np.empty((m1 - m0, n1 - n0), dtype=np.int32)
            target = request.accumulators[key]
        if self.contract.semantic == "tile_pair":
            if batch.first:
                target[...] = 0
            packing.accumulate_tile_pairs(
                region.view("out", np.int8), batch.m_range, batch.k_range, batch.n_range, target
            )
        else:
            r, _, t = self._micro_tile
            bm, _, bn = batch.block
            packing.accumulate_block(
                region.view("c", np.int32),
                (bm, bn),
                self.contract.layout,
                (r, t),
                target,
                batch.first,
            )
        if batch.final and request.requant is not None:
            q = request.requant
            packing.requantize(target, request.out[m0:m1, n0:n1], q.shift, q.rounding, q.saturation)
            del request.accumulators[key]


@dataclass(frozen=True)
class _Region:
    """The bytes of one batch's runs in a slot: they begin at run ``run``."""

    buffers: Slot
    stride: dict[str, int]  # bytes one run uses, by buffer name
    run: int

    def view(self, name: str, dtype: Any) -> np.ndarray:
        """Buffer ``name`` from this batch's first byte on, as a flat ``dtype`` array."""
        return self.buffers.views[name][self.run * self.stride[name] :].view(dtype)


def _planned_execute_s(request: _Request, batch: Batch) -> float:
    """The execute seconds the plan predicts for ``batch`` (corrected as planned)."""
    start, end = request.plan.schedule.execute[batch.index]
    return end - start


def _blamed_run(failure: DeviceError) -> int | None:
    """The run the device blames for ``failure``, or None when it blames none.

    None when the device did not name a run (a chain whose failed run XRT did
    not mark, or a run that only met a context an earlier failure left out of
    step) or the run was aborted (what a run gets for being in flight when
    another failed or the watchdog reset the device).
    """
    return failure.run if failure.state != _ABORT else None


def _blame(failure: DeviceError, request: _Request, batch: Batch, shared: int) -> DeviceError:
    """``failure`` told of the batch whose run failed in a submission of ``shared`` batches."""
    return DeviceError(
        explain(
            f"run {failure.run} of a submission of {shared} batches, which was batch "
            f"{batch.index} of request {request.id}, ended in {failure.state} (the device "
            f"reported: {failure})",
            "ERT_CMD_STATE_COMPLETED",
            "This batch's output is lost and its request failed; the submission's "
            "other batches were run again.",
        ),
        state=failure.state,
        batch=batch.index,
        request=request.id,
        run=failure.run,
    )


def _detached(error: BaseException) -> BaseException:
    """``error`` without tracebacks along its cause chain.

    A traceback pins the frames of the worker thread that raised, and with
    them the batch's slot and BOs: a caller keeping the error (as tests and
    retry loops do) would keep device memory alive after the pipeline freed it.
    The message already names the batch, the request and the run state.
    """
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return error


def default_slots(profile: DeviceProfile) -> int:
    """Slots when none are asked for: 3, so pack, execute and accumulate each hold one."""
    return max(1, min(3, profile.runs_in_flight))


@asynccontextmanager
async def open_pipeline(
    device: str = "auto",
    kernel: str | KernelContract = "gemm_i8_i32",
    profile: str | os.PathLike[str] | DeviceProfile | None = None,
    slots: int | None = None,
    *,
    memory_budget: int | None = None,
    latency_budget_s: float | None = None,
    host_path: bool = True,
    timed: bool = False,
    device_options: dict[str, Any] | None = None,
    max_spans: int | None = DEFAULT_MAX_SPANS,
) -> AsyncIterator[Pipeline]:
    """Open a device and serve ``matmul()`` calls through it until the block exits.

    Args:
        device: ``"auto"`` (real XRT when pyxrt imports and an NPU is present,
            else the emulator), ``"emulator"``, or ``"xrt"``.
        kernel: contract name or path, or a :class:`KernelContract`.
        profile: device profile name, path of a profile JSON file, or object
            (:func:`npu_pipeline.get_profile`); default ``"cpu"`` on the
            emulator and the detected generation on real hardware.
        slots: BO slots, 1..runs in flight; default :func:`default_slots`.
        memory_budget: pinned host memory for all slots, bytes; default the profile's,
            capped at what the locked-memory limit (``ulimit -l``) leaves.
        latency_budget_s: device seconds of started work allowed on the device at
            once, so that no request waits behind more of another's; default
            :data:`~npu_pipeline.planner.DEFAULT_LATENCY_BUDGET_S` (4 ms),
            ``math.inf`` for none. Plans cut batches to fit it where that costs
            little (``Plan.fits_latency_budget``, ``Plan.latency_cost``).
        host_path: let plans compute a request exactly on the host when the
            cost model says the device path is slower (``Plan.path``).
        timed: emulator only: runs complete no earlier than the profile's
            modelled time, so NPU-like proportions can be studied (modelled).
        device_options: extra keyword arguments for :meth:`NpuDevice.open`
            (for example emulator fault injection); unknown names are refused
            before the device opens (``device.check_device_options``).
        max_spans: spans the pipeline's timeline keeps (older ones are
            dropped and counted), or ``None`` for all; see :class:`Timeline`.

    Yields:
        The open :class:`Pipeline`.

    Raises:
        OptionError: a ``device_options`` name the device does not accept.
        PlanError: ``slots`` outside 1..the profile's runs in flight, or an
            unknown profile name.
        ProfileError: the profile file cannot be read or is not a valid profile.
        DeviceError: ``memory_budget`` does not fit under the locked-memory limit.
    """
    contract = kernel if isinstance(kernel, KernelContract) else load_contract(kernel)
    check_device_options(device_options or {}, device)
    # Off the event loop: looking a profile up may read a file or calibrate "cpu".
    given = None if profile is None else await anyio.to_thread.run_sync(get_profile, profile)
    npu = await anyio.to_thread.run_sync(
        lambda: NpuDevice.open(
            contract,
            device=device,
            profile=given,
            timed=timed,
            **(device_options or {}),
        )
    )
    try:
        chosen = given or await anyio.to_thread.run_sync(get_profile, npu.info.default_profile)
        count = default_slots(chosen) if slots is None else check_slots(slots, chosen)
        budget = npu.memory_budget(memory_budget, chosen.memory_budget_bytes)
        latency = check_latency_budget(latency_budget_s)
        pipe = Pipeline(npu, contract, chosen, count, budget, latency, bool(host_path), max_spans)
    except BaseException:
        await anyio.to_thread.run_sync(npu.close)
        raise
    failure: Exception | None = None
    async with anyio.create_task_group() as group:
        await group.start(pipe._serve)
        try:
            yield pipe
        except Exception as error:
            # Raised in the caller's block: re-raised as itself once the pipeline
            # is closed, not wrapped in an ExceptionGroup by the task group, so
            # that `except ShapeError:` around the block works. Cancellation
            # (a BaseException) goes through the task group untouched.
            failure = error
        finally:
            await pipe.aclose()
    if failure is not None:
        raise failure
