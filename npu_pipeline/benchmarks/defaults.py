"""What a user gets: every default, as ``open_pipeline()`` gives it.

BLAS with the threads the user's numpy has, mapped-write detection on, the
cpu profile as calibrated (cached on disk) and corrected while running, the
host path and the latency budget as planned. The other sections measure in
controlled settings; this one measures what a caller sees.

1. The pipeline against the bare exact product of the same matrices in the
   same process (int8 -> float32 casts plus BLAS, K chunked where it must be:
   :func:`npu_pipeline.exact.host_matmul` in whole BLAS calls), alternated call by call, as the
   median of the pairs' ratios: 512^3 (goal <= 1.5x) and the Whisper shapes
   (goal <= 1.3x).
2. The 64x64x64 median latency (goal <= 100 us).
3. The prediction from the second call of a shape on: measured over
   predicted wall, for the demo's product and ``npu-pipeline run``'s
   (goal within 0.8 .. 1.25, stated as "off by at most 1.25x").
"""

from __future__ import annotations

import statistics
import time

import anyio
import numpy as np

from npu_pipeline.benchmarks import Goal, Row, Section, random_operands, shape_name
from npu_pipeline.exact import host_matmul
from npu_pipeline.pipeline import Pipeline, open_pipeline
from npu_pipeline.reference import matmul_exact_blas

#: (shape, goal on pipeline / bare): 512^3, then the Whisper-base projections.
RATIO_GOALS = (
    ((512, 512, 512), 1.5),
    ((1500, 512, 1536), 1.3),
    ((1500, 512, 2048), 1.3),
    ((1500, 2048, 512), 1.3),
)
#: The products whose prediction is checked: the demo's, and a square one.
PREDICTED_SHAPES = ((1500, 512, 2048), (1024, 1024, 1024))
#: Off by at most this factor either way: 0.8 <= measured / predicted <= 1.25.
PREDICTION_FACTOR = 1.25


async def _checked(pipe: Pipeline, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> float:
    """Seconds of ``pipe.matmul(a, b, out=out)``, its result checked exactly."""
    start = time.perf_counter()
    await pipe.matmul(a, b, out=out)
    seconds = time.perf_counter() - start
    if not np.array_equal(out, matmul_exact_blas(a, b)):
        raise RuntimeError(f"pipeline result for {a.shape} @ {b.shape} is not exact")
    return seconds


async def _ratios(pipe: Pipeline, quick: bool, rows: list[Row], goals: list[Goal]) -> None:
    rng = np.random.default_rng(11)
    pairs = 3 if quick else 9
    for shape, target in RATIO_GOALS[:2] if quick else RATIO_GOALS:
        a, b = random_operands(rng, *shape)
        out = np.empty((shape[0], shape[2]), dtype=np.int32)
        bare_out = np.empty_like(out)
        host_matmul(a, b, bare_out, single_thread=False)  # warm both: BLAS threads, pages, the plan
        await _checked(pipe, a, b, out)
        ratios, bares, walls = [], [], []
        for _ in range(pairs):
            start = time.perf_counter()
            host_matmul(a, b, bare_out, single_thread=False)
            bare = time.perf_counter() - start
            wall = await _checked(pipe, a, b, out)
            bares.append(bare)
            walls.append(wall)
            ratios.append(wall / bare)
        plan = pipe.plan(*shape)
        name = shape_name(shape)
        rows += [
            Row(f"{name} bare exact product", statistics.median(bares) * 1e3, "ms", "measured"),
            Row(
                f"{name} pipeline, defaults",
                statistics.median(walls) * 1e3,
                "ms",
                f"measured; path {plan.path}, {len(plan.batches)} batch(es)",
            ),
        ]
        goals.append(
            Goal(f"{name} pipeline / bare, defaults", statistics.median(ratios), target, False)
        )


async def _latency(pipe: Pipeline, quick: bool, rows: list[Row], goals: list[Goal]) -> None:
    rng = np.random.default_rng(12)
    a, b = random_operands(rng, 64, 64, 64)
    out = np.empty((64, 64), dtype=np.int32)
    await _checked(pipe, a, b, out)
    samples = []
    for _ in range(100 if quick else 1000):
        start = time.perf_counter()
        await pipe.matmul(a, b, out=out)
        samples.append(time.perf_counter() - start)
    if not np.array_equal(out, matmul_exact_blas(a, b)):
        raise RuntimeError("64x64x64 result is not exact")
    median = statistics.median(samples)
    rows += [
        Row("64x64x64 latency, median", median * 1e6, "us", f"path {pipe.plan(64, 64, 64).path}"),
        Row("64x64x64 latency, p99", float(np.percentile(samples, 99)) * 1e6, "us", "measured"),
    ]
    goals.append(Goal("64x64x64 median latency (us), defaults", median * 1e6, 100.0, False))


async def _predictions(pipe: Pipeline, quick: bool, rows: list[Row], goals: list[Goal]) -> None:
    rng = np.random.default_rng(13)
    calls = 3 if quick else 6
    for shape in PREDICTED_SHAPES:
        a, b = random_operands(rng, *shape)
        out = np.empty((shape[0], shape[2]), dtype=np.int32)
        ratios = []
        for call in range(calls):
            predicted = pipe.plan(*shape).predicted_s  # the plan this call runs
            measured = await _checked(pipe, a, b, out)
            ratios.append(measured / predicted)
            rows.append(
                Row(
                    f"{shape_name(shape)} call {call + 1}: measured / predicted wall",
                    measured / predicted,
                    "x",
                    f"predicted {predicted * 1e3:.2f} ms",
                )
            )
        # From the second call on: the first is what the pipeline learns from.
        worst = max(max(r, 1 / r) for r in ratios[1:])
        goals.append(
            Goal(
                f"{shape_name(shape)} prediction off by (worst factor, calls 2..{calls})",
                worst,
                PREDICTION_FACTOR,
                False,
            )
        )


async def _every_part(quick: bool, rows: list[Row], goals: list[Goal]) -> None:
    async with open_pipeline() as pipe:
        await _ratios(pipe, quick, rows, goals)
        await _latency(pipe, quick, rows, goals)
    # A pipeline of its own, so that the first call of each shape is its first.
    async with open_pipeline() as pipe:
        await _predictions(pipe, quick, rows, goals)


def run(quick: bool = False) -> Section:
    """Run every part with the defaults a user gets; return the section with its goals."""
    rows: list[Row] = []
    goals: list[Goal] = []
    anyio.run(_every_part, quick, rows, goals)
    return Section("as users call it: open_pipeline() with every default", rows, goals)
