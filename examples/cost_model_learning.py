"""The cost model corrects itself: predicted against measured wall time, call by call.

The pipeline plans every shape from its device profile (for the emulator, the
``cpu`` profile, whose host rates are calibrated once and cached). While it
runs it compares every stage it measures with what the profile predicted,
learns a correction factor per stage and block shape, and drops the cached
plan of a shape whose measured wall time left 0.8..1.25 of its prediction,
so the next call of that shape is planned with what was learned.

This script runs the same matmul a few times and prints, per call, the
predicted (MODELLED) and measured wall time and their ratio, then the learned
corrections (``pipe.cost_model.format()``). Every result is checked exactly
against an int64 product; the script exits 1 on a wrong result.

Times are measured on the emulated NPU (this machine's CPU), not on an NPU.

    python examples/cost_model_learning.py
    python examples/cost_model_learning.py --small
"""

from __future__ import annotations

import argparse
import sys

import anyio
import numpy as np

import npu_pipeline as npp


async def run(shape: tuple[int, int, int], calls: int) -> bool:
    rng = np.random.default_rng(0)
    m, k, n = shape
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    expected = a.astype(np.int64) @ b.astype(np.int64)
    exact = True
    async with npp.open_pipeline() as pipe:
        print(f"profile {pipe.profile.name}: C[{m}x{n}] = A[{m}x{k}] @ B[{k}x{n}], {calls} calls")
        print(
            f"{'call':>4}  {'block':<16}{'predicted':>12}{'measured':>12}{'measured/predicted':>20}"
        )
        for call in range(1, calls + 1):
            plan = pipe.plan(m, k, n)
            # The check runs between calls, never while a request is in flight.
            c = await pipe.matmul(a, b)
            exact = exact and bool(np.array_equal(c, expected))
            record = pipe.cost_model.history()[-1]
            print(
                f"{call:>4}  {'x'.join(map(str, plan.block)):<16}"
                f"{record.predicted_s * 1e3:>9.2f} ms{record.measured_s * 1e3:>9.2f} ms"
                f"{record.ratio:>20.2f}"
                + ("  (plan dropped: re-planned next)" if record.replanned else "")
            )
        print()
        print(pipe.cost_model.format())
    print(f"\nevery result exact: {exact}")
    return exact


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a smaller matmul, fewer calls")
    args = parser.parse_args()
    shape, calls = ((1024, 512, 768), 5) if args.small else ((1500, 512, 2048), 8)
    return 0 if anyio.run(run, shape, calls) else 1


if __name__ == "__main__":
    sys.exit(main())
