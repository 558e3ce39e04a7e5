"""Benchmark of the whole pipeline on the emulated NPU, against peers in the same run.

Parts (each row says whether it is measured or MODELLED):

1. Untimed emulator (``cpu`` profile, calibrated on this host): pipeline wall
   time on the Whisper shapes beside the bare exact compute of the same
   product in the same process, and the planner's prediction beside both.
2. Timed emulator: runs last the ``npu1`` model's time slowed by a stated
   factor (so the device, not the CPU, sets the pace, as on an NPU); overlap
   efficiency with 2 slots beside 1 slot, and prediction beside measurement.
3. The planner's prediction for a real ``npu1`` with this host's measured
   pack and accumulate rates: MODELLED.
4. Small-request latency, end to end.
5. The seed's sequential per-tile loop over ``tile16_legacy``, beside the
   pipeline over the same contract and over ``gemm_i8_i32``.
6. Concurrency: 32 concurrent requests against one request of the same total
   work, and the latency of small requests issued during a large one.

All of it runs with BLAS limited to :data:`DEVICE_BLAS_THREADS`, on the
device path (``host_path=False``: this section measures the pipeline, not
the planner's choice to skip it); parts 1 and 6 are then run again with BLAS
on every core and their ratios reported beside. ``npu_pipeline.benchmarks.defaults``
measures what a user gets with every default instead.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import numpy as np
from threadpoolctl import threadpool_limits

from npu_pipeline import emulator
from npu_pipeline.benchmarks import Goal, Row, Section, median_seconds, random_operands, shape_name
from npu_pipeline.calibration import Calibration, apply, load_or_measure, with_host_rates
from npu_pipeline.contract import load_contract
from npu_pipeline.device import NpuDevice
from npu_pipeline.exact import Scratch, exact_product
from npu_pipeline.pipeline import Pipeline, open_pipeline
from npu_pipeline.planner import plan_batches
from npu_pipeline.profiles import NPU1, DeviceProfile
from npu_pipeline.reference import matmul_exact_blas, seed_wrapper_matmul
from npu_pipeline.timeline import format_overlap

WHISPER_SHAPES = ((1500, 512, 1536), (1500, 512, 2048), (1500, 2048, 512))
#: The timed profile: npu1's modelled device times multiplied by this, so that
#: each modelled run lasts several times longer than the CPU's real compute of it.
SLOWDOWN = 20
#: Pinned memory per slot in the timed comparison. 1 slot and 2 slots get the
#: same memory per slot, so the planner cuts the same blocks and only the
#: overlap differs. It is small (1 MiB) so that every shape has 18 or more
#: batches: the first batch's packing and the last one's accumulation can never
#: be hidden, which caps overlap efficiency near 1 - 1/batches whatever the
#: scheduler does.
TIMED_SLOT_BUDGET = 2**20
#: The pipeline never writes a slot in flight (the slot pool guarantees it,
#: and the test suite runs with detection on); two crc32 passes per run would
#: otherwise be counted as pipeline overhead.
FAST_EMULATOR = {"detect_mapped_writes": False}
#: BLAS threads while the goals are measured. The emulated NPU computes with
#: BLAS on this host, and BLAS's default is a thread per core, whose helpers
#: spin between calls: beside them, the host stages (packing, accumulating,
#: the event loop) have no core of their own, which no NPU (separate silicon)
#: would take from them. One thread leaves the device one core and the host
#: the others. The bare compute the pipeline is compared with runs on the
#: same thread count, and the calibration is measured with it too.
DEVICE_BLAS_THREADS = 1


def _bare_exact(a: np.ndarray, b: np.ndarray, scratch: Scratch) -> np.ndarray:
    """The emulator's exact compute on the whole product: int8 -> float32, chunked BLAS."""
    return exact_product(a.astype(np.float32), b.astype(np.float32), scratch)


async def _median_wall(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    await fn()  # warm-up: first-touch page faults of fresh slots and outputs
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def _untimed(host: DeviceProfile, quick: bool, rows: list[Row], goals: list[Goal]) -> None:
    rng = np.random.default_rng(1)
    repeat = 3 if quick else 7
    scratch = Scratch()
    async with open_pipeline(
        device="emulator", profile=host, host_path=False, device_options=FAST_EMULATOR
    ) as pipe:
        for shape in WHISPER_SHAPES:
            a, b = random_operands(rng, *shape)
            c = await pipe.matmul(a, b)
            if not np.array_equal(c, matmul_exact_blas(a, b)):
                raise RuntimeError(f"pipeline result for {shape} is not exact")
            bare = await _median_wall(
                lambda a=a, b=b: anyio.to_thread.run_sync(_bare_exact, a, b, scratch), repeat
            )
            wall = await _median_wall(lambda a=a, b=b: pipe.matmul(a, b), repeat)
            predicted = pipe.plan(*shape).estimate.wall_s
            name = shape_name(shape)
            rows += [
                Row(f"{name} bare exact compute", bare * 1e3, "ms", "measured, int8->f32 + BLAS"),
                Row(f"{name} pipeline", wall * 1e3, "ms", f"measured, {pipe.slots} slots"),
                Row(f"{name} planner prediction", predicted * 1e3, "ms", "cpu profile, calibrated"),
            ]
            goals += [
                Goal(f"{name} pipeline / bare compute", wall / bare, 1.3, False),
                Goal(f"{name} |predicted/measured - 1|", abs(predicted / wall - 1), 0.2, False),
            ]


async def _timed(calibration: Calibration, quick: bool, rows: list[Row], goals: list[Goal]) -> None:
    rng = np.random.default_rng(2)
    profile = with_host_rates(NPU1, calibration).slowed(SLOWDOWN)
    shapes = WHISPER_SHAPES[1:2] if quick else WHISPER_SHAPES
    for shape in shapes:
        a, b = random_operands(rng, *shape)
        eta = {}
        for slots in (1, 2):
            async with open_pipeline(
                device="emulator",
                profile=profile,
                slots=slots,
                memory_budget=slots * TIMED_SLOT_BUDGET,
                host_path=False,
                # Throughput, not latency: behind runs longer than a latency
                # budget the feed starts one at a time (docs/pipeline.md).
                latency_budget_s=math.inf,
                timed=True,
                device_options=FAST_EMULATOR,
            ) as pipe:
                await pipe.matmul(a, b)  # warm-up
                pipe.timeline.clear()
                start = time.perf_counter()
                c = await pipe.matmul(a, b)
                wall = time.perf_counter() - start
                if not np.array_equal(c, matmul_exact_blas(a, b)):
                    raise RuntimeError(f"timed pipeline result for {shape} is not exact")
                plan = pipe.plan(*shape)
                measured_eta = pipe.timeline.overlap_efficiency()  # None: nothing could overlap
                eta[slots] = float("nan") if measured_eta is None else measured_eta
                name = f"{shape_name(shape)} {profile.name}, {slots} slot(s)"
                note = "MODELLED device time (emulator timed by the slowed npu1 model)"
                rows += [
                    Row(f"{name}: wall", wall * 1e3, "ms", note),
                    Row(f"{name}: predicted wall", plan.estimate.wall_s * 1e3, "ms", "modelled"),
                    Row(f"{name}: eta", eta[slots], "", f"{len(plan.batches)} batches"),
                ]
                goals.append(
                    Goal(
                        f"{shape_name(shape)} timed, {slots} slot(s): |predicted/measured - 1|",
                        abs(plan.estimate.wall_s / wall - 1),
                        0.15,
                        False,
                    )
                )
        goals.append(Goal(f"{shape_name(shape)} timed, 2 slots: overlap efficiency", eta[2], 0.9))


def _npu1_prediction(calibration: Calibration, rows: list[Row]) -> None:
    profile = with_host_rates(NPU1, calibration)
    for shape in WHISPER_SHAPES:
        estimate = plan_batches(*shape, profile=profile).estimate
        rows.append(
            Row(
                f"{shape_name(shape)} on a real npu1",
                estimate.wall_s * 1e3,
                "ms",
                f"MODELLED (this host's pack/accumulate rates), bound by {estimate.bound}, "
                f"eta {format_overlap(estimate.overlap_efficiency, estimate.overlap_na_reason, 2)}",
            )
        )


async def _latency(quick: bool, rows: list[Row], goals: list[Goal]) -> None:
    rng = np.random.default_rng(3)
    a, b = random_operands(rng, 64, 64, 64)
    count = 50 if quick else 300
    async with open_pipeline(
        device="emulator", host_path=False, device_options=FAST_EMULATOR
    ) as pipe:
        await pipe.matmul(a, b)
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            await pipe.matmul(a, b)
            samples.append(time.perf_counter() - start)
    median = statistics.median(samples)
    p99 = float(np.percentile(samples, 99))
    rows += [
        Row("64x64x64 end-to-end latency, median", median * 1e6, "us", f"measured, {count} calls"),
        Row("64x64x64 end-to-end latency, p99", p99 * 1e6, "us", "measured"),
        Row("64x64 on the NPU, seed per-tile wrapper", 34.3e3, "us", "seed's measurement"),
    ]
    goals.append(Goal("64x64x64 median latency (ms)", median * 1e3, 1.0, False))


def _seed_loop(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The seed's wrapper, verbatim in spirit: one kernel call per 16x16 tile pair.

    Written only against pyxrt's API, on the emulator: write, sync, run, wait,
    sync, read, accumulate in int32, clip; 32,768 calls for 512^3.
    """
    contract = load_contract("tile16_legacy")
    xrt = emulator
    dev = xrt.device(0)
    context = xrt.hw_context(dev, xrt.xclbin(contract.source))
    kernel = xrt.kernel(context, contract.kernel_name)
    insts = xrt.instructions(contract, (16, 16, 16), "npu1")
    instr_bo = xrt.bo(dev, insts.nbytes, xrt.bo.flags.cacheable, kernel.group_id(1))
    instr_bo.write(insts.tobytes(), 0)
    instr_bo.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, insts.nbytes, 0)
    in_bo = xrt.bo(dev, 512, xrt.bo.flags.host_only, kernel.group_id(3))
    out_bo = xrt.bo(dev, 256, xrt.bo.flags.host_only, kernel.group_id(4))
    m, k = a.shape
    n = b.shape[1]
    tiles = [-(-d // 16) for d in (m, k, n)]
    ap = np.zeros((tiles[0] * 16, tiles[1] * 16), np.int8)
    bp = np.zeros((tiles[1] * 16, tiles[2] * 16), np.int8)
    ap[:m, :k], bp[:k, :n] = a, b
    c = np.zeros((tiles[0] * 16, tiles[2] * 16), np.int32)
    try:
        for i in range(tiles[0]):
            for j in range(tiles[2]):
                acc = np.zeros((16, 16), np.int32)
                for kt in range(tiles[1]):
                    pair = np.concatenate(
                        [
                            ap[16 * i : 16 * i + 16, 16 * kt : 16 * kt + 16].ravel(),
                            bp[16 * kt : 16 * kt + 16, 16 * j : 16 * j + 16].ravel(),
                        ]
                    )
                    in_bo.write(pair.tobytes(), 0)
                    in_bo.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, 512, 0)
                    run = kernel(contract.opcode, instr_bo, len(insts), in_bo, out_bo)
                    state = run.wait(1000)
                    if state != xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
                        raise RuntimeError(f"tile run ended in {state!r}")
                    out_bo.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE, 256, 0)
                    tile = np.frombuffer(out_bo.read(256, 0), np.int8).reshape(16, 16)
                    acc += tile
                c[16 * i : 16 * i + 16, 16 * j : 16 * j + 16] = acc
    finally:
        context.close()
        dev.close()
    return np.clip(c, -128, 127).astype(np.int8)[:m, :n]


async def _seed_baseline(quick: bool, rows: list[Row], goals: list[Goal]) -> None:
    size = 128 if quick else 512
    rng = np.random.default_rng(4)
    a, b = random_operands(rng, size, size, size)
    start = time.perf_counter()
    seed = await anyio.to_thread.run_sync(_seed_loop, a, b)
    t_seed = time.perf_counter() - start
    if not np.array_equal(seed, seed_wrapper_matmul(a, b)):
        raise RuntimeError("the seed loop on the emulator differs from the golden seed model")

    async def pipelined(kernel: str, out_dtype: type) -> tuple[float, np.ndarray]:
        async with open_pipeline(
            device="emulator", kernel=kernel, host_path=False, device_options=FAST_EMULATOR
        ) as pipe:
            start = time.perf_counter()
            c = await pipe.matmul(a, b, out_dtype=out_dtype)
            return time.perf_counter() - start, c

    t_legacy, legacy = await pipelined("tile16_legacy", np.int8)
    t_gemm, exact = await pipelined("gemm_i8_i32", np.int32)
    if not (np.array_equal(legacy, seed) and np.array_equal(exact, matmul_exact_blas(a, b))):
        raise RuntimeError("a pipelined result differs from its reference")
    calls = (size // 16) ** 3
    name = f"{size}^3"
    rows += [
        Row(f"{name} seed per-tile loop, tile16_legacy", t_seed * 1e3, "ms", f"{calls} calls"),
        Row(f"{name} pipeline, tile16_legacy", t_legacy * 1e3, "ms", f"{calls} runs, same output"),
        Row(f"{name} pipeline, gemm_i8_i32", t_gemm * 1e3, "ms", "exact int32"),
        Row(f"{name} seed loop / pipeline tile16", t_seed / t_legacy, "x", "speed-up, same kernel"),
        Row(f"{name} seed loop / pipeline gemm", t_seed / t_gemm, "x", "speed-up"),
        Row(
            f"{size}^3 on the NPU, seed's measurement",
            15110.0 if size == 512 else float("nan"),
            "ms",
            "the seed's authors, on an NPU (docs/why.md#the-seeds-measurements)",
        ),
    ]


async def _concurrency(quick: bool, rows: list[Row], goals: list[Goal]) -> None:
    rng = np.random.default_rng(5)
    count = 32
    inputs = [random_operands(rng, 256, 256, 256) for _ in range(count)]
    big_a = np.concatenate([a for a, _ in inputs])  # same total work: 8192x256 @ 256x256
    big_b = inputs[0][1]
    async with open_pipeline(
        device="emulator", host_path=False, device_options=FAST_EMULATOR
    ) as pipe:
        repeat = 5 if quick else 15
        # Alternate the two, so that both see the same moments of a shared machine,
        # and compare each pair: the ratio is the median of the pairs' ratios.
        single = await pipe.matmul(big_a, big_b)  # warm-up of both, checked
        _, results = await _concurrent_wall(pipe, inputs)
        if any(
            not np.array_equal(c, matmul_exact_blas(a, b))
            for c, (a, b) in zip(results, inputs, strict=True)
        ):
            raise RuntimeError("concurrent results are not exact")
        if not np.array_equal(single, matmul_exact_blas(big_a, big_b)):
            raise RuntimeError("single request result is not exact")
        singles, concurrents, spawning = [], [], []
        for _ in range(repeat):
            start = time.perf_counter()
            await pipe.matmul(big_a, big_b)
            singles.append(time.perf_counter() - start)
            start = time.perf_counter()
            async with anyio.create_task_group() as group:  # a task per request, on the clock
                for a, b in inputs:
                    group.start_soon(pipe.matmul, a, b)
            spawning.append(time.perf_counter() - start)
            pipe.timeline.clear()
            concurrents.append((await _concurrent_wall(pipe, inputs))[0])
        submissions = len({(s.start, s.end) for s in pipe.timeline.spans if s.stage == "execute"})
        p99 = await _small_during_large(pipe, rng, 20 if quick else 60)
        single_blocks = [batch.block for batch in pipe.plan(*big_a.shape, 256).batches]
    ratio = statistics.median(s / c for s, c in zip(singles, concurrents, strict=True))
    spawning_ratio = statistics.median(s / c for s, c in zip(singles, spawning, strict=True))
    t_single, t_concurrent = statistics.median(singles), statistics.median(concurrents)
    ceiling = await anyio.to_thread.run_sync(
        _device_ceiling, [(256, 256, 256)] * count, single_blocks, repeat
    )
    work = count * 256**3 * 2
    rows += [
        Row("one 8192x256x256 request", work / t_single / 1e9, "GOPS", "measured"),
        Row("32 concurrent 256x256x256 requests", work / t_concurrent / 1e9, "GOPS", "measured"),
        Row(
            "submissions for the 32 requests",
            submissions,
            "",
            "small batches share a slot (docs/pipeline.md)",
        ),
        Row(
            "device alone: 32 runs of 256^3 / the single request's runs",
            ceiling,
            "x",
            "throughput ratio with no pipeline at all: the ceiling of the goal below",
        ),
        Row(
            "32 concurrent / one request, each request a new task on the clock",
            spawning_ratio,
            "x",
            "not a goal: also counts starting 32 anyio tasks, the caller's cost",
        ),
        Row("64x64x64 latency during a 1500x2048x512 request, p99", p99 * 1e3, "ms", "measured"),
    ]
    goals.append(Goal("32 concurrent / one request throughput, median of pairs", ratio, 0.8))


async def _concurrent_wall(
    pipe: Pipeline, inputs: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[float, list[np.ndarray]]:
    """Seconds from releasing one waiting caller task per input to the last result,
    and the results, in input order.

    The callers are started before the clock, as a server's handler tasks
    would be: starting 32 anyio tasks costs about 1 ms on this machine, the
    caller's cost, not the pipeline's (the single request has no task to start).
    """
    go = anyio.Event()
    results: list[np.ndarray] = [np.empty(0)] * len(inputs)
    ends: list[float] = []

    async def caller(index: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await go.wait()
        results[index] = await pipe.matmul(*inputs[index])
        ends.append(time.perf_counter())

    async with anyio.create_task_group() as group:
        for index in range(len(inputs)):
            await group.start(caller, index)
        start = time.perf_counter()
        go.set()
    return max(ends) - start, results


def _device_ceiling(
    many: list[tuple[int, int, int]], few: list[tuple[int, int, int]], repeat: int
) -> float:
    """Throughput of the bare device on ``many`` runs relative to ``few`` runs of the same work.

    Start and wait one run at a time on an NpuDevice, no pipeline: how much
    the emulated device itself loses to smaller runs.
    """
    contract = load_contract("gemm_i8_i32")
    with NpuDevice.open(contract, device="emulator", **FAST_EMULATOR) as device:
        slots = {block: device.allocate_slot(block) for block in set(many + few)}

        def sweep(blocks: list[tuple[int, int, int]]) -> None:
            for block in blocks:
                device.wait(device.start(slots[block], block))

        t_many = median_seconds(lambda: sweep(many), repeat=repeat)
        t_few = median_seconds(lambda: sweep(few), repeat=repeat)
    return t_few / t_many


async def _small_during_large(pipe: Pipeline, rng: np.random.Generator, count: int) -> float:
    """p99 latency of 64x64x64 requests issued one after another during a large one."""
    big_a, big_b = random_operands(rng, 1500, 2048, 512)
    small_a, small_b = random_operands(rng, 64, 64, 64)
    latencies: list[float] = []
    async with anyio.create_task_group() as group:

        async def large() -> None:
            for _ in range(3):
                await pipe.matmul(big_a, big_b)

        group.start_soon(large)
        for _ in range(count):
            start = time.perf_counter()
            await pipe.matmul(small_a, small_b)
            latencies.append(time.perf_counter() - start)
            await anyio.sleep(0.001)
    return float(np.percentile(latencies, 99))


def run(quick: bool = False) -> Section:
    """Run every part; return the section with its goals (a few seconds with ``quick``).

    Everything is measured with BLAS limited to :data:`DEVICE_BLAS_THREADS`
    (see there), then the two comparisons that depend on it most are run
    again with BLAS's own thread count and reported beside, not as goals.
    """
    rows: list[Row] = []
    goals: list[Goal] = []
    with threadpool_limits(limits=DEVICE_BLAS_THREADS, user_api="blas"):
        anyio.run(_every_part, quick, rows, goals)
    shared: list[Goal] = []
    anyio.run(_shared_cores, quick, shared)
    rows += [
        Row(
            f"{goal.name}, BLAS on every core",
            goal.measured,
            "x",
            "not a goal: the emulated device's BLAS threads and the host stages share the cores",
        )
        for goal in shared
    ]
    return Section(
        f"pipeline on the emulated NPU (cpu profile calibrated in this run; "
        f"the device computes on {DEVICE_BLAS_THREADS} BLAS thread)",
        rows,
        goals,
    )


async def _every_part(quick: bool, rows: list[Row], goals: list[Goal]) -> None:
    # Calibrate now, in the same run as the figures it predicts: a cached
    # calibration from a busier moment would make predictions look wrong.
    calibration = await anyio.to_thread.run_sync(lambda: load_or_measure(refresh=True))
    host = apply(calibration)
    rows += [
        Row(
            "calibration: emulator exact compute",
            calibration.exact_ops_per_s / 1e9,
            "GOPS",
            "measured now, feeds the cpu profile",
        ),
        Row(
            "calibration: emulator per-run cost",
            calibration.dispatch_s * 1e6,
            "us",
            "measured now (round trip less compute)",
        ),
    ]
    await _untimed(host, quick, rows, goals)
    await _timed(calibration, quick, rows, goals)
    _npu1_prediction(calibration, rows)
    await _latency(quick, rows, goals)
    await _seed_baseline(quick, rows, goals)
    await _concurrency(quick, rows, goals)


async def _shared_cores(quick: bool, ratios: list[Goal]) -> None:
    """The untimed and concurrency ratios with BLAS's own threads (as goals, to report)."""
    untimed: list[Goal] = []
    host = apply(await anyio.to_thread.run_sync(lambda: load_or_measure(refresh=True)))
    await _untimed(host, quick, [], untimed)
    ratios += [goal for goal in untimed if goal.name.endswith("pipeline / bare compute")]
    await _concurrency(quick, [], ratios)
