"""Many callers, one device: small requests issued during a large one do not wait for it.

One task submits a large matmul; meanwhile a stream of small matmuls (64^3 to
256^3) arrives, one every few milliseconds, each from its own task. A small
product costs the device more in dispatch, padding and hand-offs than in
work, so its plan sends it to an exact product on the host
(``plan.path == "host"``, with the reason in ``plan.path_reason``): it never
queues behind the large request. The script prints every request's path and
latency, checks every result exactly, and fails unless every small request
finished while the large one was still running.

Requests that do go to the device (``open_pipeline(host_path=False)``, or
products too large for the host path) are bounded by the pipeline's latency
budget instead: the scheduler takes batches round-robin and keeps at most the
budget (4 ms of device time by default) started at once. That holds for plans
that fit the budget, which the planner cuts where that costs little: the
npu1 and npu2 plans of this product do. On the emulator, cutting a product
this large costs 20-60% of its throughput (every block's operands are
converted and multiplied again on the same CPU), so its plan keeps two large
batches and says so ("does NOT fit"); a device request then waits for at
most one of them. The script prints the large plan's latency line.

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

#: The small requests, in turn.
SHAPES = ((64, 64, 64), (128, 128, 128), (192, 192, 192), (256, 256, 256))


def random_int8(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


async def run(large: tuple[int, int, int], count: int, every_s: float) -> bool:
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
        for i in range(count):
            await anyio.sleep(every_s)
            sm, sk, sn = SHAPES[i % len(SHAPES)]
            tg.start_soon(
                call, f"{sm}x{sk}x{sn} #{i}", random_int8(rng, (sm, sk)), random_int8(rng, (sk, sn))
            )
        plans = {shape: pipe.plan(*shape) for shape in (large, *SHAPES)}

    big = plans[large]
    print(f"large: {m}x{k}x{n} in {len(big.batches)} batches; latency {big.latency_summary()}")
    for shape in SHAPES:
        print(f"{'x'.join(map(str, shape))}: path {plans[shape].path} ({plans[shape].path_reason})")
    print(f"{'request':<20}{'issued ms':>10}{'done ms':>10}{'latency ms':>12}  exact")
    exact = True
    for name, (a, b, c, issued, done) in sorted(requests.items(), key=lambda r: r[1][4]):
        ok = np.array_equal(c, a.astype(np.int64) @ b.astype(np.int64))
        exact &= ok
        latency = done - issued
        print(f"{name:<20}{issued * 1e3:>10.1f}{done * 1e3:>10.1f}{latency * 1e3:>12.1f}  {ok}")

    *_, large_issued, large_done = requests.pop("large")
    early = [done - issued for *_, issued, done in requests.values() if done < large_done]
    print(
        f"{len(early)} of {len(requests)} small requests finished while the large one was "
        f"still running, slowest in {max(early, default=0) * 1e3:.1f} ms (large: "
        f"{(large_done - large_issued) * 1e3:.1f} ms)"
    )
    print("Latencies measured on the emulated NPU (this CPU), not on an NPU.")
    print(f"exact: {exact}")
    return exact and len(early) == len(requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a smaller large request (fast)")
    parser.add_argument("--every-ms", type=float, default=3.0, help="gap between requests")
    args = parser.parse_args()
    large = (1024, 1024, 2048) if args.small else (3000, 2048, 2048)
    # All of them issued while the large request runs (it takes tens of ms here).
    count = 4 if args.small else 16
    return 0 if anyio.run(run, large, count, args.every_ms / 1e3) else 1


if __name__ == "__main__":
    sys.exit(main())
