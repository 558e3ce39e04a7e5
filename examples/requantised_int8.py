"""int8 output: the exact int32 sum shifted, rounded and saturated once.

``pipe.matmul(A, B, out_dtype=np.int8, shift=s, rounding=..., saturation=...)``
returns ``srs(A @ B, s)`` computed from the *full* int32 sum. The script runs
it for every rounding mode and every saturation mode and compares each result
with the golden model, ``npu_pipeline.reference.srs`` of the exact product.

Then it sets the seed's answer beside it. The seed's wrapper applied SRS to
every 16x16 tile's partial product and summed the clipped int8 partials
(``reference.seed_wrapper_matmul``); that is not ``srs(A @ B, 7)``, and the
script counts how many elements differ.

    python examples/requantised_int8.py
    python examples/requantised_int8.py --small
"""

from __future__ import annotations

import argparse
import sys

import anyio
import numpy as np

import npu_pipeline as npp
from npu_pipeline import reference
from npu_pipeline.reference import Rounding, Saturation


async def run(m: int, k: int, n: int, shift: int) -> bool:
    rng = np.random.default_rng(4)
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    # Activation-like operands: small values, so an int8 result at shift 7 is
    # mostly in range and the seed's error is not hidden by saturation.
    sa = rng.integers(-16, 17, size=(m, k), dtype=np.int8)
    sb = rng.integers(-16, 17, size=(k, n), dtype=np.int8)
    modes = [(r, Saturation.SATURATE) for r in Rounding]
    modes += [(Rounding.HALF_EVEN, s) for s in Saturation if s is not Saturation.SATURATE]

    async with npp.open_pipeline() as pipe:
        results = [
            await pipe.matmul(a, b, out_dtype=np.int8, shift=shift, rounding=r, saturation=s)
            for r, s in modes
        ]
        pipelined = await pipe.matmul(sa, sb, out_dtype=np.int8, shift=7, rounding="floor")

    exact = reference.matmul_exact(a, b)
    print(f"C = srs(A @ B, shift={shift}) for A {m}x{k}, B {k}x{n}, full int8 range")
    print(f"{'rounding':<11}{'saturation':<11}{'outside int8':>13}  equals reference.srs")
    ok = True
    for (r, s), c in zip(modes, results, strict=True):
        same = np.array_equal(c, reference.srs(exact, shift, r, s))
        rounded = reference.round_shift(exact, shift, r)
        outside = np.mean((rounded < -128) | (rounded > 127))
        ok &= same
        print(f"{r.value:<11}{s.value:<11}{outside:>13.1%}  {same}")

    seed = reference.seed_wrapper_matmul(sa, sb)
    truth = reference.srs(reference.matmul_exact(sa, sb), 7, "floor", "saturate")
    ok &= np.array_equal(pipelined, truth)
    differ = int(np.count_nonzero(seed != truth))
    print(f"\nshift 7, floor, saturate (the seed's kernel) on operands in [-16, 16], K={k}:")
    print(f"  pipeline, srs(A @ B, 7): {pipelined[0, :8].tolist()} ...")
    print(f"  seed, per 16x16 tile:    {seed[0, :8].tolist()} ...")
    worst = int(np.max(np.abs(seed.astype(np.int16) - truth)))
    print(f"  {differ} of {seed.size} elements differ ({differ / seed.size:.1%}), by up to {worst}")
    print(f"exact: {ok}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 96x256x80 matmul (fast)")
    parser.add_argument("--shift", type=int, default=10, help="right shift for the mode table")
    args = parser.parse_args()
    shape = (96, 256, 80) if args.small else (1500, 512, 512)
    return 0 if anyio.run(run, *shape, args.shift) else 1


if __name__ == "__main__":
    sys.exit(main())
