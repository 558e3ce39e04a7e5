"""Bit-exact execution of one run of a kernel contract on the CPU.

The product is computed with float32 BLAS, which is exact for int8 operands
when K is cut into chunks of at most :data:`K_CHUNK`: every partial sum of a
chunk is bounded by ``1024 * 128 * 128 = 2**24``, and float32 represents every
integer up to ``2**24`` exactly, whatever order BLAS adds in. Chunks are added
in int32. numpy releases the GIL inside BLAS and the casts, so the device
thread computes while the host's Python threads keep running.

Work arrays are reused (:class:`Scratch`, one per device thread): a fresh
megabyte costs more in page faults than converting it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from npu_pipeline.contract import KernelContract, OutputSpec
from npu_pipeline.emulator._instructions import InstructionStream
from npu_pipeline.errors import ContractError, explain
from npu_pipeline.reference import Rounding, saturate, srs

#: Largest K chunk whose float32 partial sums are exact for int8 operands.
K_CHUNK = 1024


def check_supported(contract: KernelContract) -> None:
    """Raise ContractError unless the emulator can execute ``contract`` bit-exactly."""
    out = contract.output
    int8_inputs = all(b.dtype == "int8" for b in contract.input_buffers)
    exact_or_srs = (out.dtype == "int32" and out.shift == 0) or out.dtype == "int8"
    if not (int8_inputs and exact_or_srs and contract.output_buffer.dtype == out.dtype):
        raise ContractError(
            explain(
                f"the emulator cannot execute contract {contract.name!r} bit-exactly "
                f"(inputs {[b.dtype for b in contract.input_buffers]}, output {out})",
                "int8 inputs, and an exact int32 output (shift 0) or an SRS int8 output "
                "matching the output buffer's dtype",
                "Run this contract on real XRT, or change its kernel.json.",
            )
        )


def _logical(flat: np.ndarray, rows: int, cols: int, tile: tuple[int, int]) -> np.ndarray:
    """A (rows x cols) matrix stored as row-major ``tile``-sized tiles, tiles row-major.

    Returned as a 4-D view of shape (rows/tr, tr, cols/tc, tc), which is the
    matrix in logical order; a tile of the whole matrix is plain row-major.
    """
    tr, tc = tile
    return flat[: rows * cols].reshape(rows // tr, cols // tc, tr, tc).transpose(0, 2, 1, 3)


class Scratch:
    """Work arrays of one device thread, each grown to the largest size asked for."""

    def __init__(self) -> None:
        self._flat: dict[str, np.ndarray] = {}

    def array(self, role: str, shape: tuple[int, int], dtype: type = np.float32) -> np.ndarray:
        """An uninitialised ``shape`` array of ``dtype`` for ``role``; valid until the next call."""
        size = shape[0] * shape[1]
        flat = self._flat.get(role)
        if flat is None or flat.size < size or flat.dtype != dtype:
            flat = self._flat[role] = np.empty(size, dtype=dtype)
        return flat[:size].reshape(shape)


def _as_float32(operand: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy a logical 4-D int8 operand into the float32 matrix ``out``."""
    np.copyto(out.reshape(operand.shape), operand)
    return out


def exact_product(a: np.ndarray, b: np.ndarray, scratch: Scratch) -> np.ndarray:
    """``a @ b`` for float32 matrices holding int8 values, exactly.

    Returns float32 when K fits one chunk (its values are exact integers),
    else int32 (chunk sums added in int32). The result lives in ``scratch``.
    """
    (m, k), n = a.shape, b.shape[1]
    part = scratch.array("product", (m, n))
    if k <= K_CHUNK:
        return np.matmul(a, b, out=part)
    acc = scratch.array("sum", (m, n), np.int32)
    for k0 in range(0, k, K_CHUNK):
        np.matmul(a[:, k0 : k0 + K_CHUNK], b[k0 : k0 + K_CHUNK], out=part)
        if k0 == 0:
            np.copyto(acc, part, casting="unsafe")
        else:
            np.add(acc, part, out=acc, casting="unsafe")  # exact: added in float64
    return acc


def narrow(product: np.ndarray, out: OutputSpec) -> np.ndarray:
    """SRS of exact integer values to int8 as ``out`` names it.

    Floor rounding (the mode of the shipped int8 contract) is an arithmetic
    shift; every other mode goes through the golden model.
    """
    acc = product.astype(np.int64)
    if out.rounding is Rounding.FLOOR:
        return saturate(acc >> out.shift, out.saturation)
    return srs(acc, out.shift, out.rounding, out.saturation)


def execute(
    contract: KernelContract,
    stream: InstructionStream,
    buffers: Mapping[str, np.ndarray],
    scratch: Scratch,
) -> None:
    """Run one block of ``contract`` as ``stream`` describes, in place.

    Args:
        buffers: uint8 views of each buffer's *device copy*, by buffer name,
            each at least as long as the block needs. The output buffer's view
            is overwritten with the result.
        scratch: the calling thread's work arrays.
    """
    m, k, n = stream.block
    if stream.layout == "tile_major":
        r, s, t = contract.target(stream.generation).micro_tile
        tiles = {"A": (r, s), "B": (s, t), "C": (r, t)}
    else:
        tiles = {"A": (m, k), "B": (k, n), "C": (m, n)}
    operands: dict[str, np.ndarray] = {}
    for spec in contract.input_buffers:
        raw = buffers[spec.name].view(np.int8)
        if spec.operand == "AB":  # tile pair: the A tile, then the B tile
            operands["A"], operands["B"] = raw[: m * k], raw[m * k : m * k + k * n]
        else:
            operands[spec.operand] = raw
    a = _as_float32(_logical(operands["A"], m, k, tiles["A"]), scratch.array("a", (m, k)))
    b = _as_float32(_logical(operands["B"], k, n, tiles["B"]), scratch.array("b", (k, n)))
    product = exact_product(a, b, scratch)

    out_spec = contract.output_buffer
    c = _logical(buffers[out_spec.name].view(out_spec.dtype), m, n, tiles["C"])
    if contract.output.dtype == "int8":
        product = narrow(product, contract.output)
    np.copyto(c, product.reshape(c.shape), casting="unsafe")
