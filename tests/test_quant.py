"""quant: symmetric int8 quantisation, dequantisation, and the dequantised matmul.

Hand-built cases use scales that are exact in float32 (max |x| = 127 gives
scale 1.0) so rounding ties can be checked value by value. Property tests
check the two bounds the module promises:

- round trip: ``|x - dequantize(q)| <= scale/2``, plus the one float32
  rounding of ``q * scale`` (at most 2**-24 * 127 * scale, so the test
  allows ``scale * (1/2 + 2**-16)``);
- matmul: writing ``A = qa*sa + ea`` with ``|ea| <= sa/2`` (same for B),
  ``A@B - (qa@qb)*sa*sb = A@eb + ea@B - ea@eb``, so elementwise
  ``|error| <= sb/2 * sum|A| + sa/2 * sum|B| + K*sa*sb/4`` (rows of A,
  columns of B), plus float32 rounding of the result.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npu_pipeline.errors import DTypeError, QuantizationError, ShapeError
from npu_pipeline.quant import QuantizedTensor, dequantize, dequantize_matmul, quantize_symmetric

# --- hand-built expectations ---------------------------------------------------------


def test_per_tensor_rounds_half_to_even_and_reaches_127():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -126.5, 127.0, 3.2])
    q = quantize_symmetric(x)
    assert q.scale.dtype == np.float32 and q.scale.shape == () and q.scale == 1.0
    assert q.axis is None
    assert q.values.dtype == np.int8
    np.testing.assert_array_equal(q.values, [0, 2, 2, 0, -2, -126, 127, 3])


def test_per_tensor_scale_is_max_abs_over_127():
    x = np.array([[2.0, -4.0], [1.0, 0.0]], dtype=np.float32)
    q = quantize_symmetric(x)
    assert q.scale == np.float32(4.0 / 127)
    # x / scale = x * 31.75: 63.5 -> 64 (tie to even), -127, 31.75 -> 32, 0.
    np.testing.assert_array_equal(q.values, [[64, -127], [32, 0]])


def test_per_channel_along_output_columns():
    w = np.array([[127.0, 2.54, 0.0], [-63.5, -1.27, 0.0]])
    q = quantize_symmetric(w, axis=1)
    assert q.axis == 1
    np.testing.assert_array_equal(q.scale, np.array([1.0, 0.02, 1.0], dtype=np.float32))
    assert q.scale.dtype == np.float32
    # column 0: scale 1, -63.5 ties to -64; column 1: 2.54/0.02 = 127, -1.27/0.02 = -63.5
    # (ties to even -64, up to float32 rounding of 0.02); column 2 is all zero: scale 1.0.
    np.testing.assert_array_equal(q.values, [[127, 127, 0], [-64, -64, 0]])
    np.testing.assert_allclose(dequantize(q), [[127, 2.54, 0], [-64, -1.28, 0]], rtol=1e-6)


def test_per_row_and_negative_axis():
    a = np.array([[1.0, -0.5], [0.0, 0.0], [254.0, 127.0]])
    q = quantize_symmetric(a, axis=-2)
    assert q.axis == 0
    np.testing.assert_array_equal(q.scale, np.array([1 / 127, 1.0, 2.0], dtype=np.float32))
    np.testing.assert_array_equal(q.values, [[127, -64], [0, 0], [127, 64]])  # -63.5 -> -64
    assert q.broadcast_scale.shape == (3, 1)


def test_all_zero_tensor_and_empty_tensor_get_scale_one():
    q = quantize_symmetric(np.zeros((2, 3), dtype=np.float16))
    assert q.scale == 1.0
    np.testing.assert_array_equal(q.values, np.zeros((2, 3), dtype=np.int8))
    assert quantize_symmetric(np.zeros((0, 4))).scale == 1.0
    assert quantize_symmetric(np.zeros((0, 4)), axis=1).scale.tolist() == [1.0] * 4


def test_tiny_values_get_the_smallest_normal_float32_scale():
    tiny = float(np.finfo(np.float32).tiny)
    q = quantize_symmetric(np.array([1e-40, -3e-40, 0.0]))
    assert q.scale == np.float32(tiny)
    assert np.all(np.abs(np.array([1e-40, -3e-40, 0.0]) - dequantize(q)) <= tiny / 2)


def test_dequantize_per_tensor_and_per_channel():
    q = QuantizedTensor(np.array([[1, -2], [127, 0]], np.int8), np.float32(0.5), None)
    np.testing.assert_array_equal(dequantize(q), [[0.5, -1.0], [63.5, 0.0]])
    assert dequantize(q).dtype == np.float32
    q = QuantizedTensor(np.array([[1, -2], [127, 0]], np.int8), np.array([0.5, 4.0], np.float32), 1)
    np.testing.assert_array_equal(dequantize(q), [[0.5, -8.0], [63.5, 0.0]])


def test_dequantize_matmul_broadcasts_row_and_column_scales():
    c = np.array([[10, -20, 30], [1, 2, 3]], dtype=np.int32)
    b_scale = np.array([1.0, 0.5, 0.25], dtype=np.float32)
    got = dequantize_matmul(c, np.float32(2.0), b_scale)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[20, -20, 15], [2, 2, 1.5]])
    got = dequantize_matmul(c, np.array([2.0, 4.0], np.float32), b_scale)
    np.testing.assert_array_equal(got, [[20, -20, 15], [4, 4, 3]])
    got = dequantize_matmul(c, 0.5, 2.0)
    np.testing.assert_array_equal(got, c.astype(np.float32))
    # Square C: a_scale is per row, b_scale per column, never confused.
    sq = np.array([[1, 1], [1, 1]], dtype=np.int32)
    np.testing.assert_array_equal(
        dequantize_matmul(sq, [1.0, 2.0], [10.0, 100.0]), [[10, 100], [20, 200]]
    )


def test_dequantize_matmul_does_not_underflow_small_scales():
    # 1e-23 * 1e-23 = 1e-46 is 0 in float32, yet 2e9 * 1e-46 = 2e-37 is a normal float32:
    # the scales must be multiplied in float64.
    scale = np.float32(1e-23)
    got = dequantize_matmul(np.array([[2 * 10**9]], dtype=np.int32), scale, scale)
    np.testing.assert_allclose(got, [[2e9 * float(scale) ** 2]], rtol=1e-6)
    assert got[0, 0] > 0


def test_quantised_linear_layer_end_to_end(rng):
    a = rng.standard_normal((6, 16)).astype(np.float32)
    w = (rng.standard_normal((16, 5)) * np.array([0.01, 0.1, 1, 10, 100])).astype(np.float32)
    qa, qw = quantize_symmetric(a), quantize_symmetric(w, axis=1)
    c = qa.values.astype(np.int32) @ qw.values.astype(np.int32)
    y = dequantize_matmul(c, qa.scale, qw.scale)
    # Per-column scales keep every column's relative error small despite the 1e4 spread.
    rel = np.abs(y - a @ w).max(axis=0) / np.abs(a @ w).max(axis=0)
    assert np.all(rel < 0.05)


# --- errors --------------------------------------------------------------------------


def test_non_finite_input_names_count_and_first_position():
    x = np.ones((3, 4))
    x[1, 2] = np.nan
    x[2, 0] = -np.inf
    x[2, 3] = np.inf
    with pytest.raises(QuantizationError, match=r"3 non-finite value\(s\).*nan at index \(1, 2\)"):
        quantize_symmetric(x)
    with pytest.raises(QuantizationError, match=r"1 non-finite.*inf at index \(\)"):
        quantize_symmetric(np.float32(np.inf))


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.array([1, 2], dtype=np.int8), "int8.*already quantised"),
        (np.array([1, 2], dtype=np.int64), "int64.*already quantised"),
        (np.array([True]), "bool.*np.asarray"),
        (np.array([1 + 2j]), "complex128.*np.asarray"),
    ],
)
def test_non_float_input_is_a_dtype_error(x, match):
    with pytest.raises(DTypeError, match=match):
        quantize_symmetric(x)


def test_bad_axis_and_overflowing_scale():
    with pytest.raises(ShapeError, match=r"axis=2 is out of range.*\[-2, 1\]"):
        quantize_symmetric(np.ones((2, 2)), axis=2)
    with pytest.raises(ShapeError, match="axis=0 is out of range"):
        quantize_symmetric(np.float64(1.0), axis=0)
    with pytest.raises(QuantizationError, match="beyond float32's range"):
        quantize_symmetric(np.array([1e300]))


@pytest.mark.parametrize(
    ("c", "a_scale", "b_scale", "error", "match"),
    [
        (np.ones((2, 3), np.float32), 1.0, 1.0, DTypeError, "float32"),
        (np.ones(3, np.int32), 1.0, 1.0, ShapeError, r"shape \(3,\)"),
        (np.ones((2, 3), np.int32), np.ones(3), 1.0, ShapeError, r"a_scale.*\(2,\)"),
        (np.ones((2, 3), np.int32), 1.0, np.ones(2), ShapeError, r"b_scale.*\(3,\)"),
        (np.ones((2, 3), np.int32), 1.0, np.ones((1, 3)), ShapeError, "b_scale"),
        (np.ones((2, 3), np.int32), 0.0, 1.0, QuantizationError, "a_scale"),
        (np.ones((2, 3), np.int32), 1.0, [1.0, np.nan, 1.0], QuantizationError, "b_scale"),
    ],
)
def test_dequantize_matmul_refuses_bad_input(c, a_scale, b_scale, error, match):
    with pytest.raises(error, match=match):
        dequantize_matmul(c, a_scale, b_scale)


# --- properties ----------------------------------------------------------------------

float_dtypes = st.sampled_from([np.float16, np.float32, np.float64])


@st.composite
def float_arrays(draw, max_dims=3):
    """Finite float arrays of varied shape, magnitude 10**-30..10**30 (fits float16 too)."""
    dtype = draw(float_dtypes)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=6))
    unit = hnp.arrays(np.float64, shape, elements=st.floats(-1, 1, allow_subnormal=False))
    exponent = draw(st.integers(-4, 4) if dtype == np.float16 else st.integers(-30, 30))
    x = draw(unit) * 10.0**exponent
    return x.astype(dtype)


@given(x=float_arrays(), data=st.data())
def test_round_trip_error_is_at_most_half_a_scale(x, data):
    axis = data.draw(st.none() | st.integers(-x.ndim, x.ndim - 1))
    q = quantize_symmetric(x, axis=axis)
    assert q.values.dtype == np.int8
    assert np.abs(q.values.astype(int)).max() <= 127
    scale = q.broadcast_scale.astype(np.float64)
    error = np.abs(x.astype(np.float64) - dequantize(q).astype(np.float64))
    assert np.all(error <= scale * (0.5 + 2.0**-16))
    # The largest magnitude of each channel maps to +-127, unless the channel is all zero
    # (scale 1.0) or so small that its scale was raised to float32's smallest normal.
    peak = np.abs(q.values.astype(int)).max(
        axis=None if axis is None else tuple(d for d in range(x.ndim) if d != q.axis)
    )
    assert np.all((peak == 127) | (q.scale == 1.0) | (q.scale == np.finfo(np.float32).tiny))


@given(
    m=st.integers(1, 8),
    k=st.integers(1, 16),
    n=st.integers(1, 8),
    a_exp=st.integers(-6, 6),
    b_exp=st.integers(-6, 6),
    per_row=st.booleans(),
    per_column=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_dequantized_matmul_is_within_the_derived_bound(
    m, k, n, a_exp, b_exp, per_row, per_column, seed
):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)) * 10.0**a_exp
    b = rng.standard_normal((k, n)) * 10.0**b_exp
    qa = quantize_symmetric(a, axis=0 if per_row else None)
    qb = quantize_symmetric(b, axis=1 if per_column else None)
    c = qa.values.astype(np.int32) @ qb.values.astype(np.int32)
    got = dequantize_matmul(c, qa.scale, qb.scale).astype(np.float64)

    sa = np.broadcast_to(qa.scale.astype(np.float64).reshape(-1, 1), (m, 1))
    sb = np.broadcast_to(qb.scale.astype(np.float64).reshape(1, -1), (1, n))
    row_abs = np.abs(a).sum(axis=1, keepdims=True)  # sum_k |A_ik|, shape (m, 1)
    col_abs = np.abs(b).sum(axis=0, keepdims=True)  # sum_k |B_kj|, shape (1, n)
    bound = sb / 2 * row_abs + sa / 2 * col_abs + k * sa * sb / 4
    exact = a @ b
    float32_rounding = 2.0**-23 * np.abs(exact) + 2.0**-23 * bound
    assert np.all(np.abs(got - exact) <= bound + float32_rounding)
