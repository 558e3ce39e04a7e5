"""Golden model: slow, vectorised numpy that is obviously right.

Everything else in the library (numba packing, the emulator, the pipeline) is
tested against these functions. They favour clarity over speed: int64
arithmetic throughout, no tiling tricks.

- :func:`matmul_exact`: int8 x int8 -> exact int32; :func:`matmul_exact_blas`,
  the same values fast, for checking large results.
- :func:`srs`: AIE shift-round-saturate, int32 -> int8, with every rounding
  and saturation mode named (see ``docs/hardware-facts.md#rounding-and-saturation``).
- :func:`tile16_kernel` and :func:`seed_wrapper_matmul`: what the seed's
  per-tile kernel computed, and what its Python wrapper made of it by summing
  already-clipped int8 partials over K.
"""

from __future__ import annotations

import enum

import numpy as np

from npu_pipeline.errors import ShapeError, explain

#: Largest K for which an int8 x int8 product always fits int32:
#: |sum| <= K * 128 * 128 must stay <= 2**31 - 1.
MAX_EXACT_K = (2**31 - 1) // (128 * 128)


class Rounding(str, enum.Enum):
    """How SRS rounds when it shifts right. AIE mode names in brackets.

    Ties are values exactly halfway between two integers after the shift.
    """

    FLOOR = "floor"  #: toward -inf [floor; the AIE power-on default; what ``>>`` does]
    CEIL = "ceil"  #: toward +inf [ceil]
    TRUNC = "trunc"  #: toward zero [symmetric_floor]
    HALF_UP = "half_up"  #: nearest, ties toward +inf [positive_inf]
    HALF_DOWN = "half_down"  #: nearest, ties toward -inf [negative_inf]
    HALF_AWAY = "half_away"  #: nearest, ties away from zero [symmetric_inf]
    HALF_ZERO = "half_zero"  #: nearest, ties toward zero [symmetric_zero]
    HALF_EVEN = "half_even"  #: nearest, ties to even [conv_even]
    HALF_ODD = "half_odd"  #: nearest, ties to odd [conv_odd]

    @property
    def code(self) -> int:
        """Small integer id, used where an enum cannot go (numba kernels, instruction words)."""
        return list(Rounding).index(self)


class Saturation(str, enum.Enum):
    """What SRS does with results outside int8."""

    SATURATE = "saturate"  #: clamp to [-128, 127]
    SYMMETRIC = "symmetric"  #: clamp to [-127, 127]
    NONE = "none"  #: wrap around (two's complement), as a plain int8 cast would

    @property
    def code(self) -> int:
        """Small integer id, used where an enum cannot go (numba kernels, instruction words)."""
        return list(Saturation).index(self)


def matmul_exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact ``a @ b`` for int8 matrices, as int32 of shape (M, N).

    Raises:
        ShapeError: K exceeds :data:`MAX_EXACT_K`, past which int32 can overflow.
    """
    k = a.shape[1]
    if k > MAX_EXACT_K:
        raise ShapeError(
            explain(
                f"K={k} can overflow an int32 accumulator",
                f"K <= {MAX_EXACT_K} (128*128*K must fit in int32)",
                "Split K and add the int64 partial products yourself.",
            )
        )
    return (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)


def matmul_exact_blas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact ``a @ b`` for int8 matrices as int64, through float64 BLAS.

    Fast enough to check large results. Exact because every partial sum is an
    integer of magnitude at most ``K * 2**14 <= 2**31`` (K <= MAX_EXACT_K),
    far inside float64's 53-bit mantissa, whatever order BLAS adds in.
    """
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


def round_shift(acc: np.ndarray, shift: int, rounding: Rounding | str) -> np.ndarray:
    """``acc / 2**shift`` rounded to an integer by ``rounding``, as int64 (no saturation)."""
    rounding = Rounding(rounding)
    if shift < 0 or shift > 31:
        raise ValueError(f"shift={shift} is out of range; expected 0..31.")
    x = np.asarray(acc, dtype=np.int64)
    if shift == 0:
        return x.copy()
    q = x >> shift  # floor division by 2**shift
    r = x - (q << shift)  # remainder, always in [0, 2**shift)
    half = 1 << (shift - 1)
    above, tie, inexact = r > half, r == half, r != 0
    negative = x < 0
    up = {
        Rounding.FLOOR: np.zeros_like(inexact),
        Rounding.CEIL: inexact,
        Rounding.TRUNC: inexact & negative,
        Rounding.HALF_UP: above | tie,
        Rounding.HALF_DOWN: above,
        Rounding.HALF_AWAY: above | (tie & ~negative),
        Rounding.HALF_ZERO: above | (tie & negative),
        Rounding.HALF_EVEN: above | (tie & ((q & 1) == 1)),
        Rounding.HALF_ODD: above | (tie & ((q & 1) == 0)),
    }[rounding]
    return q + up.astype(np.int64)


def saturate(x: np.ndarray, saturation: Saturation | str) -> np.ndarray:
    """Narrow int64 values to int8 by ``saturation``."""
    saturation = Saturation(saturation)
    x = np.asarray(x, dtype=np.int64)
    if saturation is Saturation.SATURATE:
        return np.clip(x, -128, 127).astype(np.int8)
    if saturation is Saturation.SYMMETRIC:
        return np.clip(x, -127, 127).astype(np.int8)
    return (((x + 128) & 0xFF) - 128).astype(np.int8)


def srs(
    acc: np.ndarray,
    shift: int,
    rounding: Rounding | str = Rounding.HALF_EVEN,
    saturation: Saturation | str = Saturation.SATURATE,
) -> np.ndarray:
    """Shift-round-saturate int32 accumulators to int8: ``sat(round(acc / 2**shift))``."""
    return saturate(round_shift(acc, shift, rounding), saturation)


def tile16_kernel(a_tile: np.ndarray, b_tile: np.ndarray) -> np.ndarray:
    """What the seed's per-tile kernel computes: ``clamp((a @ b) >> 7, -128, 127)`` as int8."""
    return srs(a_tile.astype(np.int64) @ b_tile.astype(np.int64), 7, "floor", "saturate")


def seed_wrapper_matmul(a: np.ndarray, b: np.ndarray, tile: int = 16) -> np.ndarray:
    """What the seed's wrapper returned for ``a @ b``: int8 of shape (M, N).

    It padded to 16, ran :func:`tile16_kernel` on every (i, k, j) tile pair,
    summed the already-clipped int8 partials over k in int32, and clipped the
    sum to int8. That is not ``srs(a @ b, 7)``: truncation and saturation
    compound once K is more than one tile.

    Every 16x16 tile of ``a[:, ks] @ b[ks, :]`` (``ks`` one k-tile) is exactly
    one tile pair's product, so the per-tile kernel is applied to whole k-slices.
    """
    m, k = a.shape
    n = b.shape[1]
    k_tiles = -(-k // tile)
    total = np.zeros((m, n), dtype=np.int64)
    for kt in range(k_tiles):
        ks = slice(kt * tile, (kt + 1) * tile)
        partial = a[:, ks].astype(np.int64) @ b[ks, :].astype(np.int64)
        total += srs(partial, 7, "floor", "saturate")
    return np.clip(total, -128, 127).astype(np.int8)
