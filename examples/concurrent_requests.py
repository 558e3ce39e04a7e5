"""Many callers, one device: small requests are not stuck behind a large one.

One task submits a large matmul; meanwhile a stream of small matmuls arrives,
one every few milliseconds, each from its own task. The pipeline schedules
batches round-robin between requests, so a small request waits only for the
few batches of the large one already in the pipeline, not for all of it. The
script prints every request's latency, checks every result exactly, and fails
unless small requests finished while the large one was still running (with
first-come-first-served scheduling, none would).

Latencies are measured on the emulated NPU (this machine's CPU), not on an NPU.

    python examples/concurrent_requests.py
    python examples/concurrent_requests.py --small
"""

from __future__ import annotations

import argparse
import sys
import time

import anyio
import numpy as np

import npu_pipeline as npp


def random_int8(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


async def run(large: tuple[int, int, int], small: int, every_s: float) -> bool:
    rng = np.random.default_rng(1)
    m, k, n = large
    # name -> (A, B, C, issued, done); times in seconds from the start.
    requests: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float, float]] = {}

    async with npp.open_pipeline() as pipe, anyio.create_task_group() as tg:
        t0 = time.perf_counter()

        async def call(name: str, a: np.ndarray, b: np.ndarray) -> None:
            issued = time.perf_counter() - t0
            c = await pipe.matmul(a, b)
            # Verify later: a check here would block the event loop and delay the others.
            requests[name] = (a, b, c, issued, time.perf_counter() - t0)

        tg.start_soon(call, "large", random_int8(rng, (m, k)), random_int8(rng, (k, n)))
        i = 0
        while "large" not in requests:
            await anyio.sleep(every_s)
            a, b = random_int8(rng, (small, small)), random_int8(rng, (small, small))
            tg.start_soon(call, f"small {i}", a, b)
            i += 1
        batches = len(pipe.plan(m, k, n).batches)

    print(f"large: {m}x{k}x{n} in {batches} batches; small: {small}^3 every {every_s * 1e3:g} ms")
    print(f"{'request':<10}{'issued ms':>10}{'done ms':>10}{'latency ms':>12}  exact")
    exact = True
    for name, (a, b, c, issued, done) in sorted(requests.items(), key=lambda r: r[1][4]):
        # float64 BLAS is exact for int8 products (partial sums stay far below 2**53).
        ok = np.array_equal(c, a.astype(np.float64) @ b.astype(np.float64))
        exact &= ok
        latency = done - issued
        print(f"{name:<10}{issued * 1e3:>10.1f}{done * 1e3:>10.1f}{latency * 1e3:>12.1f}  {ok}")

    *_, large_issued, large_done = requests.pop("large")
    early = [done - issued for *_, issued, done in requests.values() if done < large_done]
    print(
        f"{len(early)} small requests finished while the large one was still running, "
        f"slowest in {max(early, default=0) * 1e3:.1f} ms (large: "
        f"{(large_done - large_issued) * 1e3:.1f} ms)"
    )
    print("Latencies measured on the emulated NPU (this CPU), not on an NPU.")
    print(f"exact: {exact}")
    return exact and len(early) >= 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a smaller large request (fast)")
    # Small runs wait on the device behind the large one's runs already queued
    # there, so a much shorter gap piles up more small requests than it serves.
    parser.add_argument("--every-ms", type=float, default=10.0, help="gap between small requests")
    args = parser.parse_args()
    large = (1024, 1024, 2048) if args.small else (3000, 2048, 2048)
    return 0 if anyio.run(run, large, 64, args.every_ms / 1e3) else 1


if __name__ == "__main__":
    sys.exit(main())
