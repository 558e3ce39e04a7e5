"""Check matmul operands before any work starts.

Every entry point that takes user matrices (``Pipeline.matmul``, the packing
kernels' public wrappers, the CLI) refuses bad input here, with a typed error
that says what was wrong and what is accepted.

Views are accepted as they are: the packing kernels read strided,
Fortran-ordered and negatively strided int8 arrays directly, so nothing is
copied up front. ``out=`` may also be a view, but must not share memory with
the inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from npu_pipeline.errors import DTypeError, ShapeError, explain
from npu_pipeline.reference import MAX_EXACT_K

if TYPE_CHECKING:
    from npu_pipeline.contract import KernelContract

OUT_DTYPES = (np.dtype(np.int32), np.dtype(np.int8))


def check_int8_matrix(name: str, value: object) -> np.ndarray:
    """Return ``value`` as a 2-D int8 ndarray with both dimensions >= 1, or raise.

    Raises:
        DTypeError: not an ndarray of dtype int8.
        ShapeError: not 2-D, or a dimension is 0.
    """
    if not isinstance(value, np.ndarray):
        raise DTypeError(
            explain(
                f"{name} is a {type(value).__name__}",
                "a numpy.ndarray of dtype int8",
                f"Convert it with np.asarray({name}, dtype=np.int8) after checking its range.",
            )
        )
    if value.dtype != np.int8:
        fix = (
            "Quantise float data first (npu_pipeline.quant)."
            if value.dtype.kind == "f"
            else f"Convert with {name}.astype(np.int8) if every value lies in [-128, 127]."
        )
        raise DTypeError(explain(f"{name} has dtype {value.dtype}", "dtype int8", fix))
    if value.ndim != 2:
        raise ShapeError(
            explain(
                f"{name} has {value.ndim} dimension(s), shape {value.shape}",
                "a 2-D matrix",
                "Reshape it; for a batch of matrices, call matmul once per matrix.",
            )
        )
    if 0 in value.shape:
        raise ShapeError(
            explain(
                f"{name} has shape {value.shape} with an empty dimension",
                "every dimension >= 1",
                "Skip the call: the product of an empty matrix is empty.",
            )
        )
    return value


def check_operands(a: object, b: object) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Validate ``a @ b`` operands; return them with the problem shape (M, K, N).

    Raises:
        DTypeError, ShapeError: as :func:`check_int8_matrix`, or K differs, or
            K is too large for an exact int32 result.
    """
    a = check_int8_matrix("A", a)
    b = check_int8_matrix("B", b)
    m, k = a.shape
    k_b, n = b.shape
    if k != k_b:
        raise ShapeError(
            explain(
                f"A is {m}x{k} but B is {k_b}x{n}: inner dimensions differ",
                "A of shape (M, K) and B of shape (K, N)",
                "Transpose or slice one operand so the inner dimensions agree.",
            )
        )
    if k > MAX_EXACT_K:
        raise ShapeError(
            explain(
                f"K={k} can overflow the int32 accumulator",
                f"K <= {MAX_EXACT_K}",
                "Split K into parts and add the partial products in int64.",
            )
        )
    return a, b, (m, k, n)


def check_out(out: object, shape: tuple[int, int], dtype: np.dtype, *inputs: np.ndarray) -> None:
    """Validate a caller-supplied output array.

    Raises:
        DTypeError: ``out`` is not an ndarray of ``dtype``.
        ShapeError: wrong shape, read-only, or overlapping an input.
    """
    if not isinstance(out, np.ndarray) or out.dtype != dtype:
        got = out.dtype if isinstance(out, np.ndarray) else type(out).__name__
        raise DTypeError(
            explain(
                f"out has dtype {got}",
                f"a numpy.ndarray of dtype {dtype} (the requested out_dtype)",
                f"Allocate it with np.empty({shape}, dtype=np.{dtype}).",
            )
        )
    if out.shape != shape:
        raise ShapeError(
            explain(f"out has shape {out.shape}", f"shape {shape}", "Allocate it with that shape.")
        )
    if not out.flags.writeable:
        raise ShapeError(explain("out is read-only", "a writeable array", "Pass a writeable copy."))
    if any(np.shares_memory(out, x) for x in inputs):
        raise ShapeError(
            explain(
                "out shares memory with an input",
                "an output separate from A and B",
                "Write into a fresh array and copy afterwards.",
            )
        )


def check_out_dtype(out_dtype: object, contract: KernelContract | None = None) -> np.dtype:
    """Return ``out_dtype`` as a numpy dtype if it is int32 or int8, or raise DTypeError.

    With a ``contract``, ``None`` means the contract's own output dtype (int32
    for ``block_gemm`` kernels, int8 for ``tile_pair`` ones), and a dtype the
    contract cannot produce is refused: a ``tile_pair`` kernel returns clipped
    int8 tiles, never an exact int32 product.
    """
    if out_dtype is None and contract is not None:
        return np.dtype(contract.output.dtype)
    try:
        dtype = np.dtype(out_dtype)  # type: ignore[call-overload]
    except TypeError:
        dtype = None
    if dtype not in OUT_DTYPES:
        raise DTypeError(
            explain(
                f"out_dtype is {out_dtype!r}",
                "np.int32 (exact product) or np.int8 (requantised with shift and rounding)",
                "Pass one of those.",
            )
        )
    if contract is not None and contract.semantic == "tile_pair" and dtype != np.int8:
        raise DTypeError(
            explain(
                f"out_dtype {dtype} with the {contract.name!r} contract",
                "np.int8: that kernel returns clipped int8 tiles, never an exact product",
                "Pass out_dtype=np.int8 (or leave it out), or use the gemm_i8_i32 kernel "
                "for exact int32.",
            )
        )
    return dtype
