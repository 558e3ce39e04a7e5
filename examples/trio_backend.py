"""The same pipeline under trio: ``anyio.run(main, backend="trio")``.

npu_pipeline is written against anyio, so it runs unchanged on asyncio or on
trio; only the ``anyio.run`` call differs. This script runs one matmul and a
few concurrent ones in a trio nursery (an anyio task group here), reports
which event loop ran them, and checks every result exactly.

    python examples/trio_backend.py
    python examples/trio_backend.py --small
    python examples/trio_backend.py --backend asyncio     # the same, on asyncio
"""

from __future__ import annotations

import argparse
import sys

import anyio
import numpy as np
import sniffio  # installed with trio: names the event loop that is running

import npu_pipeline as npp


async def main(m: int, k: int, n: int) -> bool:
    rng = np.random.default_rng(5)
    pairs = [
        (
            rng.integers(-128, 128, size=(m, k), dtype=np.int8),
            rng.integers(-128, 128, size=(k, n), dtype=np.int8),
        )
        for _ in range(3)
    ]
    results: dict[int, np.ndarray] = {}

    async with npp.open_pipeline() as pipe:
        print(f"event loop: {sniffio.current_async_library()}; device: {pipe.device_info.name}")
        results[0] = await pipe.matmul(*pairs[0])

        async def call(i: int) -> None:
            results[i] = await pipe.matmul(*pairs[i])

        async with anyio.create_task_group() as tg:
            for i in range(1, len(pairs)):
                tg.start_soon(call, i)

    # float64 BLAS is exact for int8 products (partial sums stay far below 2**53).
    exact = all(
        np.array_equal(results[i], a.astype(np.float64) @ b.astype(np.float64))
        for i, (a, b) in enumerate(pairs)
    )
    print(f"{len(pairs)} matmuls of {m}x{k} @ {k}x{n}, one alone and two concurrently")
    print(f"exact: {exact}")
    return exact


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 200x300x100 matmul (fast)")
    parser.add_argument("--backend", default="trio", choices=("trio", "asyncio"))
    args = parser.parse_args()
    shape = (200, 300, 100) if args.small else (1500, 512, 2048)
    sys.exit(0 if anyio.run(main, *shape, backend=args.backend) else 1)
