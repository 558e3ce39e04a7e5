"""Bad input is refused before any work, with typed errors that say what to do."""

import numpy as np
import pytest

from npu_pipeline.errors import DTypeError, NpuPipelineError, ShapeError
from npu_pipeline.operands import check_operands, check_out, check_out_dtype
from npu_pipeline.reference import MAX_EXACT_K

A = np.zeros((3, 4), dtype=np.int8)
B = np.zeros((4, 5), dtype=np.int8)


@pytest.mark.parametrize(
    ("a", "b", "error", "match"),
    [
        (A.astype(np.float32), B, DTypeError, "A has dtype float32.*Quantise"),
        (A, B.astype(np.int16), DTypeError, "B has dtype int16.*astype"),
        (A, B.astype(np.uint8), DTypeError, "B has dtype uint8"),
        ([[1, 2]], B, DTypeError, "A is a list"),
        (A.ravel(), B, ShapeError, "A has 1 dimension"),
        (A, B[None], ShapeError, "B has 3 dimension"),
        (A, B[:3], ShapeError, "inner dimensions differ"),
        (A[:0], B, ShapeError, "empty dimension"),
        (A[:, :0], B[:0], ShapeError, "empty dimension"),
    ],
)
def test_refused(a, b, error, match):
    with pytest.raises(error, match=match) as info:
        check_operands(a, b)
    assert isinstance(info.value, NpuPipelineError)
    assert "expected" in str(info.value)


def test_errors_are_also_builtin_kinds():
    with pytest.raises(TypeError):
        check_operands(A.astype(np.float64), B)
    with pytest.raises(ValueError):
        check_operands(A, B[:3])


def test_views_are_accepted_without_copy():
    big = np.zeros((10, 12), dtype=np.int8)
    a, b, shape = check_operands(big[::2, ::3], np.asfortranarray(big[:4, :5]))
    assert shape == (5, 4, 5)
    assert np.shares_memory(a, big)
    assert b.flags.f_contiguous and not b.flags.c_contiguous


def test_k_limit():
    a = np.zeros((1, MAX_EXACT_K + 1), dtype=np.int8)
    with pytest.raises(ShapeError, match="overflow"):
        check_operands(a, a.T)


def test_out_checks():
    out = np.zeros((3, 5), dtype=np.int32)
    check_out(out, (3, 5), np.dtype(np.int32), A, B)
    with pytest.raises(DTypeError, match="int32"):
        check_out(out.astype(np.int64), (3, 5), np.dtype(np.int32))
    with pytest.raises(ShapeError, match=r"shape \(3, 5\)"):
        check_out(out[:2], (3, 5), np.dtype(np.int32))
    readonly = out.copy()
    readonly.flags.writeable = False
    with pytest.raises(ShapeError, match="read-only"):
        check_out(readonly, (3, 5), np.dtype(np.int32))
    buffer = np.zeros((3, 9), dtype=np.int8)
    with pytest.raises(ShapeError, match="shares memory"):
        check_out(buffer[:, :5], (3, 5), np.dtype(np.int8), buffer[:, 3:], B)


def test_out_dtype():
    assert check_out_dtype(np.int8) == np.int8
    assert check_out_dtype("int32") == np.int32
    for bad in (np.float32, np.int16, "nonsense", None):
        with pytest.raises(DTypeError, match="out_dtype"):
            check_out_dtype(bad)
