"""Float <-> int8 helpers for linear layers (for example Whisper's).

The NPU multiplies int8 by int8 into exact int32. To use it on float data,
quantise both operands with symmetric scales, multiply, then dequantise:

.. code-block:: python

    qa = quantize_symmetric(activations)            # one scale for the tensor
    qw = quantize_symmetric(weights, axis=1)        # one scale per output column
    c = await pipe.matmul(qa.values, qw.values)     # exact int32
    y = dequantize_matmul(c, qa.scale, qw.scale)    # float32, ~ activations @ weights

Symmetric quantisation maps ``x`` to ``q = round(x / scale)`` clipped to
[-127, 127], with ``scale = max|x| / 127`` so the largest magnitude lands on
±127 (-128 is never produced, so ``-q`` always fits int8). Rounding is half to
even (:func:`numpy.rint`), which is unbiased on ties. Every element then
satisfies ``|x - q * scale| <= scale / 2``.

Scales are float32, as inference runtimes store them. Two edge cases:

- an all-zero tensor or channel gets scale 1.0 (not a tiny epsilon): its
  values are all 0 whatever the scale, and 1.0 keeps later arithmetic on
  scales (products, divisions when requantising) well away from underflow;
- a scale below float32's smallest normal number (max|x| < ~1.5e-36) is
  raised to it: the values round to 0 or near it and the bound above still
  holds, whereas a subnormal scale would lose the precision the bound needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npu_pipeline.errors import DTypeError, QuantizationError, ShapeError, explain

#: Largest magnitude of a quantised value (symmetric: -128 is not used).
QMAX = 127

_F32_TINY = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, eq=False)  # eq=False: == on ndarray fields is elementwise, not a bool
class QuantizedTensor:
    """An int8 tensor and the float32 scale(s) that map it back to floats.

    ``float value ~= values * scale``, the scale broadcast along ``axis``.

    Attributes:
        values: int8 array, every element in [-127, 127].
        scale: float32 array: 0-d for per-tensor quantisation, or 1-D with
            ``values.shape[axis]`` entries (one per channel), each > 0.
        axis: the channel axis the scales run along (non-negative), or
            ``None`` for one scale for the whole tensor.
    """

    values: np.ndarray
    scale: np.ndarray
    axis: int | None

    @property
    def broadcast_scale(self) -> np.ndarray:
        """``scale`` shaped to broadcast against ``values`` (0-d, or size 1 off ``axis``)."""
        return _broadcast(self.scale, self.axis, self.values.ndim)


def _broadcast(scale: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """Per-channel ``scale`` reshaped to size 1 on every axis but ``axis``."""
    if axis is None:
        return scale
    shape = [1] * ndim
    shape[axis] = scale.size
    return scale.reshape(shape)


def _check_float(name: str, x: object) -> np.ndarray:
    """``x`` as a float ndarray with only finite values, or raise."""
    array = np.asarray(x)
    if array.dtype.kind != "f":
        fix = (
            "Integer data is already quantised: pass int8 straight to matmul."
            if array.dtype.kind in "iu"
            else f"Convert it with np.asarray({name}, dtype=np.float32)."
        )
        raise DTypeError(
            explain(f"{name} has dtype {array.dtype}", "a floating dtype (float16/32/64)", fix)
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise QuantizationError(
            explain(
                f"{name} has {len(bad)} non-finite value(s) (NaN or inf); "
                f"the first is {array[first]} at index {first}",
                "finite values only",
                "Find where they come from (overflow, division by zero) or replace them "
                "with np.nan_to_num before quantising.",
            )
        )
    return array


def quantize_symmetric(x: np.ndarray, axis: int | None = None) -> QuantizedTensor:
    """Quantise float data to int8 with symmetric per-tensor or per-channel scales.

    Args:
        x: float array of any shape (float16, float32 or float64).
        axis: ``None`` for one scale for the whole tensor; otherwise the
            channel axis, which gets one scale per index along it (the
            ONNX / PyTorch ``axis`` convention). For a weight ``B`` of shape
            (K, N) in ``A @ B``, ``axis=1`` gives one scale per output column;
            for activations ``A`` of shape (M, K), ``axis=0`` gives one per row.

    Returns:
        ``values = rint(x / scale)`` clipped to [-127, 127] as int8, with
        ``scale = max|x| / 127`` per tensor or channel as float32 (1.0 for an
        all-zero one; see the module docstring).

    Raises:
        DTypeError: ``x`` is not floating point (integers, bools, complex).
        QuantizationError: ``x`` holds NaN or inf (the message says how many
            and where the first one is), or is so large (> ~4e40) that its
            scale overflows float32.
        ShapeError: ``axis`` is out of range for ``x``.
    """
    x = _check_float("x", x).astype(np.float64)  # one precision for every input dtype
    if axis is not None:
        if not -x.ndim <= axis < x.ndim:
            raise ShapeError(
                explain(
                    f"axis={axis} is out of range for x of shape {x.shape}",
                    f"None or an axis in [{-x.ndim}, {x.ndim - 1}]",
                    "Pass the channel axis; for a (K, N) weight per output column it is 1.",
                )
            )
        axis %= x.ndim
        reduce = tuple(d for d in range(x.ndim) if d != axis)
    else:
        reduce = None
    peak = np.max(np.abs(x), axis=reduce, initial=0.0)  # initial: an empty tensor peaks at 0
    if np.max(peak, initial=0.0) / QMAX > _F32_MAX:
        raise QuantizationError(
            explain(
                f"max |x| = {np.max(peak):.3g} needs a scale beyond float32's range",
                f"max |x| <= {QMAX * _F32_MAX:.3g}",
                "Rescale the data before quantising.",
            )
        )
    scale = np.where(peak == 0, 1.0, np.maximum(peak / QMAX, _F32_TINY)).astype(np.float32)
    # Divide by the float32 scale actually stored, so dequantising inverts exactly this step.
    values = np.clip(np.rint(x / _broadcast(scale, axis, x.ndim)), -QMAX, QMAX)
    return QuantizedTensor(values.astype(np.int8), scale, axis)


def dequantize(q: QuantizedTensor) -> np.ndarray:
    """``q.values * q.scale`` as float32 (scale broadcast along ``q.axis``)."""
    return q.values.astype(np.float32) * q.broadcast_scale


def _check_scale(name: str, scale: object, length: int, role: str) -> np.ndarray:
    """``scale`` as a float64 array broadcastable along one axis of length ``length``."""
    array = np.asarray(scale, dtype=np.float64)
    if array.ndim > 1 or (array.ndim == 1 and array.size != length):
        raise ShapeError(
            explain(
                f"{name} has shape {array.shape}",
                f"a scalar (per tensor) or shape ({length},) (one per {role})",
                "Pass QuantizedTensor.scale from quantize_symmetric of that operand.",
            )
        )
    if not (np.isfinite(array).all() and (array > 0).all()):
        raise QuantizationError(
            explain(
                f"{name} holds a scale that is not finite and > 0",
                "positive finite scales",
                "Use the scales quantize_symmetric returned.",
            )
        )
    return array


def dequantize_matmul(c_int32: np.ndarray, a_scale: object, b_scale: object) -> np.ndarray:
    """Turn the int32 product of quantised operands back into float32.

    For ``A ~= qa * a_scale`` and ``B ~= qb * b_scale``,
    ``A @ B ~= (qa @ qb) * a_scale * b_scale``, because every term of row i and
    column j shares the same pair of scales. Supported layouts:

    - ``a_scale``: a scalar (per-tensor A) or shape (M,) (per row of A,
      ``quantize_symmetric(A, axis=0)``);
    - ``b_scale``: a scalar (per-tensor B) or shape (N,) (per output column,
      ``quantize_symmetric(B, axis=1)``).

    Scales are multiplied in float64 so that two small scales cannot underflow
    before the result is rounded once to float32.

    Args:
        c_int32: the (M, N) integer product ``qa @ qb`` (int32 from the
            pipeline; any integer dtype is accepted).
        a_scale: the scale of A, as above.
        b_scale: the scale of B, as above.

    Raises:
        DTypeError: ``c_int32`` is not an integer array.
        ShapeError: ``c_int32`` is not 2-D, or a scale's length does not match.
        QuantizationError: a scale is not finite and positive.
    """
    c = np.asarray(c_int32)
    if c.dtype.kind not in "iu":
        raise DTypeError(
            explain(
                f"c_int32 has dtype {c.dtype}",
                "the integer product of two quantised operands (int32)",
                "Pass the result of matmul on QuantizedTensor.values, before any conversion.",
            )
        )
    if c.ndim != 2:
        raise ShapeError(
            explain(
                f"c_int32 has shape {c.shape}",
                "a 2-D (M, N) matrix",
                "Dequantise one matrix product at a time.",
            )
        )
    m, n = c.shape
    a = _check_scale("a_scale", a_scale, m, "row of A")
    b = _check_scale("b_scale", b_scale, n, "column of B")
    combined = a.reshape(-1, 1) * b.reshape(1, -1)  # (M or 1, 1) x (1, N or 1)
    return (c.astype(np.float64) * combined).astype(np.float32)
