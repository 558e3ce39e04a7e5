"""Bit-exact execution of one run of a kernel contract on the CPU.

The product is computed with float32 BLAS in K chunks, which is exact for
int8 operands (:mod:`npu_pipeline.exact` says why, and holds the work arrays,
one :class:`~npu_pipeline.exact.Scratch` per device thread). numpy releases
the GIL inside BLAS and the casts, so the device thread computes while the
host's Python threads keep running.

Each byte moves as few times as possible: each int8 operand is converted to
float32 in one pass; with K <= 1024 the float32 product is converted straight
into the output buffer's device copy (one pass), with larger K the chunk
products are added straight into it (no int32 work array); an int8 output
with floor rounding is shifted, clamped and narrowed in float32 (exact:
dividing an integer below ``2**24`` by a power of two and flooring it is
exact in float32), other rounding modes go through the golden model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from npu_pipeline.contract import KernelContract, OutputSpec
from npu_pipeline.emulator._instructions import InstructionStream
from npu_pipeline.errors import ContractError, explain
from npu_pipeline.exact import K_CHUNK, PANEL_OPS, Scratch, exact_product
from npu_pipeline.reference import Rounding, Saturation, saturate, srs


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
    matrix in logical order; a tile of the whole matrix is plain row-major
    (returned as a 2-D view then).
    """
    tr, tc = tile
    if tr == rows and tc == cols:
        return flat[: rows * cols].reshape(rows, cols)
    return flat[: rows * cols].reshape(rows // tr, cols // tc, tr, tc).transpose(0, 2, 1, 3)


def _as_float32(operand: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copy a logical (2-D or 4-D) int8 operand into the float32 matrix ``out``."""
    np.copyto(out.reshape(operand.shape) if operand.ndim != 2 else out, operand)
    return out


def narrow(product: np.ndarray, out: OutputSpec) -> np.ndarray:
    """SRS of exact integer values to int8 as ``out`` names it.

    Floor rounding (the mode of the shipped int8 contract) is an arithmetic
    shift; every other mode goes through the golden model.
    """
    acc = product.astype(np.int64)
    if out.rounding is Rounding.FLOOR:
        return saturate(acc >> out.shift, out.saturation)
    return srs(acc, out.shift, out.rounding, out.saturation)


#: Clamp bounds of the saturating modes.
_CLAMP = {Saturation.SATURATE: (-128.0, 127.0), Saturation.SYMMETRIC: (-127.0, 127.0)}


def _narrow_into(product: np.ndarray, spec: OutputSpec, c: np.ndarray) -> None:
    """Write SRS(``product``) into the int8 view ``c`` (the product may be overwritten).

    Floor rounding of a float32 product (exact integers below ``2**24`` in
    magnitude) is done in place in float32: a multiplication by ``2**-shift``
    and a floor are exact there. Wrap-around narrows through int32. An int32
    product (K above one chunk) shifts arithmetically. Other modes use the
    golden model.
    """
    shape = c.shape
    if spec.rounding is Rounding.FLOOR and product.dtype == np.float32:
        if spec.shift:
            np.multiply(product, 2.0**-spec.shift, out=product)
            np.floor(product, out=product)
        bounds = _CLAMP.get(spec.saturation)
        if bounds is None:  # wrap-around: exact integers -> int32 -> low byte
            np.copyto(c, product.astype(np.int32).reshape(shape), casting="unsafe")
            return
        np.maximum(product, bounds[0], out=product)
        np.minimum(product, bounds[1], out=product)
        np.copyto(c, product.reshape(shape), casting="unsafe")
        return
    if spec.rounding is Rounding.FLOOR and product.dtype == np.int32:
        np.right_shift(product, spec.shift, out=product)
        bounds = _CLAMP.get(spec.saturation)
        if bounds is not None:
            np.maximum(product, int(bounds[0]), out=product)
            np.minimum(product, int(bounds[1]), out=product)
        np.copyto(c, product.reshape(shape), casting="unsafe")  # in range, or wraps
        return
    np.copyto(c, narrow(product, spec).reshape(shape), casting="unsafe")


def _operand_bytes(
    contract: KernelContract, block: tuple[int, int, int], inputs: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The int8 bytes of A and of B in the input buffers (uint8, one run per row if 2-D)."""
    m, k, n = block
    operands = {}
    for spec in contract.input_buffers:
        raw = inputs[spec.name].view(np.int8)
        if spec.operand == "AB":  # tile pair: the A tile, then the B tile
            operands["A"], operands["B"] = raw[..., : m * k], raw[..., m * k : m * k + k * n]
        else:
            operands[spec.operand] = raw[..., : (m * k if spec.operand == "A" else k * n)]
    return operands["A"], operands["B"]


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

    A ``zeros`` stream (read with a count that does not match it) computes
    nothing: the output is all zero.
    """
    out_spec = contract.output_buffer
    if stream.zeros:
        buffers[out_spec.name].fill(0)
        return
    m, k, n = stream.block
    if stream.layout == "tile_major":
        r, s, t = contract.target(stream.generation).micro_tile
        tile_a, tile_b, tile_c = (r, s), (s, t), (r, t)
    else:
        tile_a, tile_b, tile_c = (m, k), (k, n), (m, n)
    raw_a, raw_b = _operand_bytes(contract, stream.block, buffers)
    a = _as_float32(_logical(raw_a, m, k, tile_a), scratch.array("a", (m, k)))
    b = _as_float32(_logical(raw_b, k, n, tile_b), scratch.array("b", (k, n)))
    c = _logical(buffers[out_spec.name].view(out_spec.dtype), m, n, tile_c)
    if contract.output.dtype == "int8":
        _narrow_into(exact_product(a, b, scratch, panel_ops=PANEL_OPS), contract.output, c)
    else:
        exact_product(a, b, scratch, out=c, panel_ops=PANEL_OPS)


def can_group(contract: KernelContract, stream: InstructionStream) -> bool:
    """Whether runs of ``stream`` may be computed together by :func:`product_of_runs`."""
    return not stream.zeros and stream.layout == "row_major" and stream.block[1] <= K_CHUNK


def product_of_runs(
    contract: KernelContract,
    stream: InstructionStream,
    inputs: Mapping[str, np.ndarray],
    scratch: Scratch,
) -> np.ndarray:
    """The exact products of several runs at once, as :func:`execute` computes one.

    One conversion per operand and one stacked matmul for all the runs: a
    chain of small runs would otherwise spend more in per-run Python and
    numpy calls than in arithmetic.

    Args:
        inputs: by input buffer name, (runs, bytes) uint8, each row one
            run's bytes of that buffer (row-major blocks). Only read.
        scratch: the calling thread's work arrays.

    Returns:
        (runs, m, n) float32 holding exact integers (every partial sum is
        below ``2**24``: K <= :data:`K_CHUNK`, see :func:`can_group`), in
        ``scratch``, valid until its next use. :func:`write_runs` stores them.
    """
    m, k, n = stream.block
    raw_a, raw_b = _operand_bytes(contract, stream.block, inputs)
    runs = raw_a.shape[0]
    a = scratch.array("runs_a", (runs * m, k)).reshape(runs, m, k)
    b = scratch.array("runs_b", (runs * k, n)).reshape(runs, k, n)
    np.copyto(a, raw_a.reshape(runs, m, k))
    np.copyto(b, raw_b.reshape(runs, k, n))
    product = scratch.array("runs_product", (runs * m, n)).reshape(runs, m, n)
    np.matmul(a, b, out=product)
    return product


def write_runs(contract: KernelContract, product: np.ndarray, outputs: np.ndarray) -> None:
    """Store products from :func:`product_of_runs` as the runs' output buffers.

    Args:
        product: (runs, m, n) float32 exact products; overwritten for an int8 output.
        outputs: (runs, bytes) uint8, each row one run's output buffer (device copy).
    """
    runs, m, n = product.shape
    dtype = np.dtype(contract.output_buffer.dtype)
    c = outputs[:, : m * n * dtype.itemsize].view(dtype).reshape(runs, m, n)
    if contract.output.dtype == "int8":
        _narrow_into(product, contract.output, c)
    else:
        np.copyto(c, product, casting="unsafe")
