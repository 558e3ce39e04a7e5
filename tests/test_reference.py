"""The golden model against hand-computed values."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npu_pipeline.errors import ShapeError
from npu_pipeline.reference import (
    MAX_EXACT_K,
    Rounding,
    Saturation,
    matmul_exact,
    matmul_exact_blas,
    round_shift,
    seed_wrapper_matmul,
    srs,
    tile16_kernel,
)

# value / 2: ties -2.5, 2.5, -3.5, 3.5, a non-tie -3 and 3, and the exact 0.
TIES = np.array([-5, 5, -7, 7, -6, 6, 0])
EXPECTED = {
    Rounding.FLOOR: [-3, 2, -4, 3, -3, 3, 0],
    Rounding.CEIL: [-2, 3, -3, 4, -3, 3, 0],
    Rounding.TRUNC: [-2, 2, -3, 3, -3, 3, 0],
    Rounding.HALF_UP: [-2, 3, -3, 4, -3, 3, 0],
    Rounding.HALF_DOWN: [-3, 2, -4, 3, -3, 3, 0],
    Rounding.HALF_AWAY: [-3, 3, -4, 4, -3, 3, 0],
    Rounding.HALF_ZERO: [-2, 2, -3, 3, -3, 3, 0],
    Rounding.HALF_EVEN: [-2, 2, -4, 4, -3, 3, 0],
    Rounding.HALF_ODD: [-3, 3, -3, 3, -3, 3, 0],
}


@pytest.mark.parametrize("rounding", list(Rounding))
def test_rounding_ties_by_hand(rounding):
    assert round_shift(TIES, 1, rounding).tolist() == EXPECTED[rounding]


@pytest.mark.parametrize("rounding", list(Rounding))
def test_rounding_larger_shift_by_hand(rounding):
    # -20/8 = -2.5, 20/8 = 2.5, -28/8 = -3.5 (ties); -21/8 = -2.625, 19/8 = 2.375.
    values = np.array([-20, 20, -28, -21, 19])
    expected = {
        Rounding.FLOOR: [-3, 2, -4, -3, 2],
        Rounding.CEIL: [-2, 3, -3, -2, 3],
        Rounding.TRUNC: [-2, 2, -3, -2, 2],
        Rounding.HALF_UP: [-2, 3, -3, -3, 2],
        Rounding.HALF_DOWN: [-3, 2, -4, -3, 2],
        Rounding.HALF_AWAY: [-3, 3, -4, -3, 2],
        Rounding.HALF_ZERO: [-2, 2, -3, -3, 2],
        Rounding.HALF_EVEN: [-2, 2, -4, -3, 2],
        Rounding.HALF_ODD: [-3, 3, -3, -3, 2],
    }[rounding]
    assert round_shift(values, 3, rounding).tolist() == expected


@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=50), st.integers(1, 20))
def test_nearest_modes_agree_with_exact_fractions(values, shift):
    """Every 'nearest' mode is within half a step of the exact quotient."""
    x = np.array(values, dtype=np.int64)
    exact = x / 2**shift
    for rounding in (Rounding.HALF_UP, Rounding.HALF_AWAY, Rounding.HALF_EVEN, Rounding.HALF_ODD):
        assert np.all(np.abs(round_shift(x, shift, rounding) - exact) <= 0.5)
    assert np.array_equal(round_shift(x, shift, "floor"), np.floor(exact).astype(np.int64))
    assert np.array_equal(round_shift(x, shift, "ceil"), np.ceil(exact).astype(np.int64))
    assert np.array_equal(round_shift(x, shift, "trunc"), np.trunc(exact).astype(np.int64))


def test_saturation_modes_by_hand():
    values = np.array([-300, -128, -127, 0, 127, 128, 300])
    assert srs(values, 0, "floor", "saturate").tolist() == [-128, -128, -127, 0, 127, 127, 127]
    assert srs(values, 0, "floor", "symmetric").tolist() == [-127, -127, -127, 0, 127, 127, 127]
    # wrap: two's complement, as a plain int8 cast: -300 = -256 - 44 -> -44; 300 -> 44.
    assert srs(values, 0, "floor", "none").tolist() == [-44, -128, -127, 0, 127, -128, 44]


def test_srs_combines_shift_and_saturation():
    # 1000 >> 2 = 250 -> 127; -1001 / 4 = -250.25 -> -250 -> -128 / -127.
    assert srs(np.array([1000, -1001]), 2, "half_even", "saturate").tolist() == [127, -128]
    assert srs(np.array([1000, -1001]), 2, "half_even", "symmetric").tolist() == [127, -127]
    assert Saturation("none") is Saturation.NONE


def test_shift_out_of_range():
    with pytest.raises(ValueError, match="shift=32"):
        round_shift(np.array([1]), 32, "floor")


def test_matmul_exact_extremes():
    a = np.full((2, 3), -128, dtype=np.int8)
    b = np.full((3, 2), -128, dtype=np.int8)
    assert matmul_exact(a, b).tolist() == [[49152, 49152], [49152, 49152]]
    assert matmul_exact(a, b).dtype == np.int32


def test_matmul_exact_blas_equals_the_int64_model(rng):
    # Extremes at K = 5000: sums of 8.2e7, past float32's exact range but not float64's.
    a = np.full((2, 5000), -128, dtype=np.int8)
    b = np.full((5000, 3), -128, dtype=np.int8)
    a[1] = rng.integers(-128, 128, 5000, dtype=np.int8)
    assert np.array_equal(matmul_exact_blas(a, b), matmul_exact(a, b))
    assert matmul_exact_blas(a, b)[0, 0] == 5000 * 128 * 128
    a = rng.integers(-128, 128, (37, 301), dtype=np.int8)
    b = rng.integers(-128, 128, (301, 19), dtype=np.int8)
    assert np.array_equal(matmul_exact_blas(a, b), a.astype(np.int64) @ b.astype(np.int64))


def test_matmul_exact_refuses_overflowing_k():
    a = np.zeros((1, MAX_EXACT_K + 1), dtype=np.int8)
    with pytest.raises(ShapeError, match="overflow"):
        matmul_exact(a, a.T)


def test_tile16_kernel_by_hand():
    a = np.zeros((16, 16), dtype=np.int8)
    b = np.zeros((16, 16), dtype=np.int8)
    a[0, :2] = [100, 100]
    b[:2, 0] = [100, -1]
    # row 0 . col 0 = 100*100 - 100 = 9900; 9900 >> 7 = 77 (77.34 floored).
    # row 0 . col 1 = 0. Make a saturating entry: 100*100*2 >> 7 = 156 -> 127.
    b[:2, 1] = [100, 100]
    out = tile16_kernel(a, b)
    assert out[0, 0] == 77 and out[0, 1] == 127 and out[1, 1] == 0
    # A negative result floors: -100*100 >> 7 = -78.125 -> -79.
    b[:2, 2] = [-100, 0]
    assert tile16_kernel(a, b)[0, 2] == -79


def test_seed_wrapper_differs_from_exact_requantisation(rng):
    """Summing clipped per-tile partials is not (A @ B) >> 7: the seed's wrong answer."""
    a = rng.integers(-128, 128, (32, 64), dtype=np.int8)
    b = rng.integers(-128, 128, (64, 32), dtype=np.int8)
    seed = seed_wrapper_matmul(a, b)
    right = srs(matmul_exact(a, b), 7, "floor", "saturate")
    assert seed.shape == right.shape == (32, 32)
    assert np.mean(seed != right) > 0.1


def test_seed_wrapper_single_tile_equals_kernel(rng):
    a = rng.integers(-128, 128, (16, 16), dtype=np.int8)
    b = rng.integers(-128, 128, (16, 16), dtype=np.int8)
    assert np.array_equal(seed_wrapper_matmul(a, b), tile16_kernel(a, b))


def test_seed_wrapper_by_tiles(rng):
    """Ragged shapes: the wrapper equals the explicit per-tile loop over padded tiles."""
    a = rng.integers(-128, 128, (20, 37), dtype=np.int8)
    b = rng.integers(-128, 128, (37, 18), dtype=np.int8)
    ap = np.zeros((32, 48), dtype=np.int8)
    bp = np.zeros((48, 32), dtype=np.int8)
    ap[:20, :37], bp[:37, :18] = a, b
    loop = np.zeros((32, 32), dtype=np.int64)
    for i in range(2):
        for j in range(2):
            for k in range(3):
                tile = tile16_kernel(
                    ap[16 * i : 16 * i + 16, 16 * k : 16 * k + 16],
                    bp[16 * k : 16 * k + 16, 16 * j : 16 * j + 16],
                )
                loop[16 * i : 16 * i + 16, 16 * j : 16 * j + 16] += tile
    expected = np.clip(loop, -128, 127)[:20, :18]
    assert np.array_equal(seed_wrapper_matmul(a, b), expected)
