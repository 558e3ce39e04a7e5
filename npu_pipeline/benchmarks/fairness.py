"""Fairness: small requests issued during a large one, with the defaults a user gets.

One 3000x2048x2048 request, and 20 small requests (64^3 to 256^3) issued one
by one while it runs. Goals (issue figures): every small request finishes
before the large one; the small requests' p99 latency is at most 20 ms on
this 2-core machine; the large request's wall grows by at most 10% against
running alone (median of alternated pairs). Measured three ways:

- ``cpu``: ``open_pipeline()`` as it is (the cpu profile calibrated, the
  host path on: tiny products go to the host);
- ``cpu, device path``: the same with ``host_path=False``, so that every
  small request waits its turn on the device: reported, not a goal, because
  this CPU's plan of the large product does not fit the latency budget
  (cutting it would cost 20-60% of its throughput here), so a small request
  can wait for one of its two batches;
- ``npu1 slowed``: timed emulation of npu1, slowed just enough for this CPU
  to keep up (:func:`npu_pipeline.calibration.keep_up_factor`): MODELLED.

Also measured: what cutting the large request to fit the latency budget
costs (its wall against a plan with no budget, ``latency_budget_s=inf``,
beside the planner's own figure), and how long cancelling it takes.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import anyio
import numpy as np

from npu_pipeline.benchmarks import Goal, Row, Section, random_operands
from npu_pipeline.calibration import keep_up_factor
from npu_pipeline.pipeline import Pipeline, open_pipeline
from npu_pipeline.planner import plan_batches
from npu_pipeline.profile_lookup import get_profile
from npu_pipeline.reference import matmul_exact_blas

LARGE = (3000, 2048, 2048)
#: Edges of the small requests, cycled: 64^3 to 256^3.
SMALL_EDGES = (64, 128, 192, 256)
SMALL_COUNT = 20
#: Goals: p99 of the small requests, seconds; growth of the large one's wall.
SMALL_P99_S = 0.020
LARGE_GROWTH = 1.10


def _check(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    if not np.array_equal(c, matmul_exact_blas(a, b)):
        raise RuntimeError(f"result of {a.shape} @ {b.shape} is not exact")


async def _alone(pipe: Pipeline, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> float:
    start = time.perf_counter()
    await pipe.matmul(a, b, out=out)
    return time.perf_counter() - start


async def _with_smalls(
    pipe: Pipeline,
    large: tuple[np.ndarray, np.ndarray, np.ndarray],
    smalls: list[tuple[np.ndarray, np.ndarray]],
    every_s: float,
) -> tuple[float, list[float], bool]:
    """The large request's wall, each small one's latency, and whether all of them
    finished before the large one. Small requests are issued every ``every_s``."""
    a, b, out = large
    latencies: list[float] = []
    ends: list[float] = []
    results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    large_end = math.inf

    async def small(sa: np.ndarray, sb: np.ndarray) -> None:
        issued = time.perf_counter()
        c = await pipe.matmul(sa, sb)
        ends.append(time.perf_counter())
        latencies.append(ends[-1] - issued)
        results.append((c, sa, sb))

    async with anyio.create_task_group() as group:
        start = time.perf_counter()

        async def run_large() -> None:
            nonlocal large_end
            await pipe.matmul(a, b, out=out)
            large_end = time.perf_counter()

        group.start_soon(run_large)
        for sa, sb in smalls:
            await anyio.sleep(every_s)
            group.start_soon(small, sa, sb)
    for c, sa, sb in results:  # checked after the clock: a check would delay the others
        _check(c, sa, sb)
    _check(out, a, b)
    return large_end - start, latencies, all(end < large_end for end in ends)


async def _scenario(
    name: str, options: dict[str, Any], pairs: int, rows: list[Row], goals: list[Goal] | None
) -> None:
    """One scenario's rows, and its goals unless ``goals`` is None (then reported as rows)."""
    rng = np.random.default_rng(21)
    a, b = random_operands(rng, *LARGE)
    out = np.empty((LARGE[0], LARGE[2]), dtype=np.int32)
    smalls = [
        random_operands(rng, e, e, e) for e in SMALL_EDGES * (SMALL_COUNT // len(SMALL_EDGES))
    ]
    async with open_pipeline(**options) as pipe:
        plan = pipe.plan(*LARGE)
        for sa, sb in smalls[: len(SMALL_EDGES)]:  # warm: every small shape planned once
            _check(await pipe.matmul(sa, sb), sa, sb)
        alone = await _alone(pipe, a, b, out)  # warm-up of the large request
        growths, latencies, before = [], [], True
        for _ in range(pairs):
            alone = await _alone(pipe, a, b, out)
            every = alone / (2 * len(smalls))  # all issued in the first half of the large one
            wall, lat, first = await _with_smalls(pipe, (a, b, out), smalls, every)
            growths.append(wall / alone)
            latencies += lat
            before &= first
        paths = sorted({pipe.plan(e, e, e).path for e in SMALL_EDGES})
    p99 = float(np.percentile(latencies, 99))
    modelled = "MODELLED device times" if options.get("timed") else "measured"
    rows += [
        Row(f"{name}: large alone", alone * 1e3, "ms", f"{modelled}; {len(plan.batches)} batches"),
        Row(f"{name}: small requests, p99", p99 * 1e3, "ms", f"{modelled}; paths {paths}"),
        Row(f"{name}: small requests, max", max(latencies) * 1e3, "ms", modelled),
        Row(
            f"{name}: large plan fits the latency budget",
            float(plan.fits_latency_budget),
            "",
            f"longest batch {plan.batch_device_s * 1e3:.2f} ms on the device",
        ),
    ]
    verdicts = [
        Goal(f"{name}: every small request before the large one", float(before), 1.0),
        Goal(f"{name}: small p99 (ms)", p99 * 1e3, SMALL_P99_S * 1e3, False),
        Goal(f"{name}: large wall with / alone", statistics.median(growths), LARGE_GROWTH, False),
    ]
    if goals is not None:
        goals += verdicts
        return
    rows += [Row(g.name, g.measured, "", "not a goal: see the section's notes") for g in verdicts]


async def _cut_cost(pairs: int, rows: list[Row]) -> None:
    """The large request's wall with the default latency budget against no budget."""
    rng = np.random.default_rng(22)
    a, b = random_operands(rng, *LARGE)
    out = np.empty((LARGE[0], LARGE[2]), dtype=np.int32)
    async with open_pipeline() as cut, open_pipeline(latency_budget_s=math.inf) as whole:
        for pipe in (cut, whole):
            await _alone(pipe, a, b, out)
            _check(out, a, b)
        ratios = [
            await _alone(cut, a, b, out) / await _alone(whole, a, b, out) for _ in range(pairs)
        ]
        planned = cut.plan(*LARGE)
    rows += [
        Row(
            "latency cut: large wall, default budget / no budget",
            statistics.median(ratios),
            "x",
            f"measured, median of {pairs} pairs",
        ),
        Row(
            "latency cut: the planner's figure",
            1 + planned.latency_cost,
            "x",
            "fits" if planned.fits_latency_budget else "did not fit: not cut",
        ),
    ]


async def _cancel_after(pipe: Pipeline, a: np.ndarray, b: np.ndarray, after_s: float) -> float:
    """Seconds from cancelling ``pipe.matmul(a, b)``, ``after_s`` into it, until it returned."""
    cancelled_at = math.inf
    with anyio.CancelScope() as scope:

        async def cancel_later() -> None:
            nonlocal cancelled_at
            await anyio.sleep(after_s)
            cancelled_at = time.perf_counter()
            scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(cancel_later)
            await pipe.matmul(a, b)
    return time.perf_counter() - cancelled_at  # negative infinity: it finished first


async def _cancellation(rows: list[Row]) -> None:
    """How long a cancelled large request takes to return (its runs in flight end first)."""
    rng = np.random.default_rng(23)
    a, b = random_operands(rng, *LARGE)
    async with open_pipeline() as pipe:
        delays = [await _cancel_after(pipe, a, b, after) for after in (0.01, 0.03, 0.06)]
        if pipe.slots_in_use or pipe.active_requests:
            raise RuntimeError("a cancelled request left a slot or a request behind")
    rows.append(
        Row(
            "cancelling a 3000x2048x2048 request: until matmul returns, worst",
            max(delays) * 1e3,
            "ms",
            f"measured over {len(delays)} cancellations, 10-60 ms into the request",
        )
    )


async def _every_part(quick: bool, rows: list[Row], goals: list[Goal]) -> None:
    pairs = 1 if quick else 3
    npu1 = plan_batches(*LARGE, profile="npu1")
    factor, _ = keep_up_factor(npu1, get_profile("npu1"))
    slowed = get_profile("npu1").slowed(factor)
    await _scenario("cpu", {}, pairs, rows, goals)
    # Not a goal: this CPU's plan of the large product does not fit the budget
    # (cutting it costs 20-60% here), so a device request waits for one batch.
    await _scenario("cpu, device path", {"host_path": False}, pairs, rows, None)
    await _scenario(
        f"npu1 slowed x{factor}",
        {"device": "emulator", "profile": slowed, "timed": True},
        pairs,
        rows,
        goals,
    )
    await _cut_cost(pairs + 2, rows)
    await _cancellation(rows)


def run(quick: bool = False) -> Section:
    """Run every part; return the section with its goals."""
    rows: list[Row] = []
    goals: list[Goal] = []
    anyio.run(_every_part, quick, rows, goals)
    return Section("fairness: small requests during a large one, with the defaults", rows, goals)
