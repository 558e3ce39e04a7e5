"""Whisper's encoder with every GEMM an int8 matmul on the pipeline.

``encoder = await Int8Encoder.load(pipe, weights)`` quantises the weights once;
``await encoder(mel)`` returns float32 [n_frames, d_model], what
:func:`~npu_pipeline.whisper.float_encoder.encode` returns for the same mel.

What runs where:

- On the device, through :meth:`Pipeline.matmul <npu_pipeline.Pipeline.matmul>`
  (int8 x int8 -> exact int32): conv1 and conv2 as im2col GEMMs, the fused
  QKV projection, the out projection, FC1 and FC2, and per head Q Kᵀ and P V.
- On the host, as numba kernels in worker threads (never on the event loop),
  each one pass over its data: layer norm + quantise; dequantise + bias and the
  split into per-head Q, Kᵀ and V, quantised; dequantise + softmax + quantise
  (int32 scores in, int8 probabilities out); dequantise + GELU + quantise;
  dequantise + bias + residual add.

Quantisation, all symmetric int8 in [-127, 127]:

- weights once at load, one scale per output channel;
- activations per row (per frame), computed as each one is produced;
- Q and K per frame and per head, V per channel of each head;
- softmax probabilities per query row, unsigned: exp(score - row max) in
  [0, 1] times 255, stored minus 128 so that all 256 int8 codes are used (the
  P V product adds 128 times V's column sums back, in integers); the row's
  scale is 1 / (its sum of levels), so each row sums to exactly 1. Measured on
  tiny.en, 127 signed levels were the largest error of the encoder.

The heads of a layer run concurrently in one task group, so the host work of
one head (its softmax) overlaps the device work of another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from numba import float32, int8, int32, int64, njit, void

from npu_pipeline.quant import QMAX, quantize_symmetric
from npu_pipeline.whisper.ct2_model import Conv1d, EncoderWeights, LayerNorm, WhisperDims
from npu_pipeline.whisper.float_encoder import LAYER_NORM_EPS, check_mel, layer_norm

_F32 = np.float32

P_LEVELS = 255
"""Softmax probabilities are quantised to levels 0..255 of the row's maximum (unsigned 8 bits)."""

P_OFFSET = 128
"""Level - P_OFFSET is the stored int8 (-128..127); the P V matmul adds it back exactly."""
_SQRT_HALF = 0.7071067811865476

# -- host kernels: numba, one pass each, compiled ahead (eager signatures, cached) ----------


@njit(float32(float32[::1], int8[::1]), cache=True, nogil=True)
def _quantize_row(row: np.ndarray, out: np.ndarray) -> float:
    """Quantise one float row to int8 with one symmetric scale; return the scale."""
    peak = 0.0
    for value in row:
        peak = max(peak, abs(value))
    scale = np.float32(peak / QMAX) if peak > 0.0 else np.float32(1.0)
    inverse = 1.0 / scale
    for j in range(row.size):
        out[j] = np.int8(min(QMAX, max(-QMAX, np.rint(row[j] * inverse))))
    return scale


@njit(
    void(int32[:, ::1], int64, float32[::1], float32[::1], float32[::1], float32[::1]),
    cache=True,
    nogil=True,
)
def _dequantize_row(
    c: np.ndarray,
    i: int,
    a_scale: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray,
    row: np.ndarray,
) -> None:
    """Row ``i`` of an int32 product back to float, plus the bias, into ``row``."""
    s = a_scale[i]
    for j in range(row.size):
        row[j] = c[i, j] * s * w_scale[j] + bias[j]


# (int32 product, row scales of A, column scales of B, bias, float32 output).
_DEQUANTIZE_INTO = void(int32[:, ::1], float32[::1], float32[::1], float32[::1], float32[:, ::1])


@njit(void(float32[::1]), cache=True, nogil=True)
def _gelu_row(row: np.ndarray) -> None:
    """GELU with the exact erf (Whisper's ``nn.GELU``), in place."""
    for j in range(row.size):
        v = row[j]
        row[j] = 0.5 * v * (1.0 + math.erf(v * _SQRT_HALF))


@njit(
    void(float32[:, ::1], float32[::1], float32[::1], int8[:, ::1], float32[::1]),
    cache=True,
    nogil=True,
)
def layer_norm_quantize(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, q: np.ndarray, scale: np.ndarray
) -> None:
    """Layer norm of each row of ``x`` [rows, d], then per-row int8 into ``q`` and ``scale``."""
    rows, d = x.shape
    row = np.empty(d, np.float32)
    for i in range(rows):
        mean = 0.0
        for j in range(d):
            mean += x[i, j]
        mean /= d
        variance = 0.0
        for j in range(d):
            centred = x[i, j] - mean
            variance += centred * centred
        inverse = 1.0 / math.sqrt(variance / d + LAYER_NORM_EPS)
        for j in range(d):
            row[j] = (x[i, j] - mean) * inverse * gamma[j] + beta[j]
        scale[i] = _quantize_row(row, q[i])


@njit(void(float32[:, ::1], int64, int8[:, ::1], float32[::1]), cache=True, nogil=True)
def im2col_quantize(x: np.ndarray, stride: int, q: np.ndarray, scale: np.ndarray) -> None:
    """A kernel-3, padding-1 convolution's im2col rows of ``x`` [time, c], per-row int8.

    Row t of ``q`` [time / stride, 3 c] is input frames t*stride - 1, t*stride and
    t*stride + 1 side by side (zeros past either end).
    """
    time, channels = x.shape
    row = np.empty(3 * channels, np.float32)
    for t in range(q.shape[0]):
        for tap in range(3):
            source = t * stride + tap - 1
            for j in range(channels):
                row[tap * channels + j] = x[source, j] if 0 <= source < time else 0.0
        scale[t] = _quantize_row(row, q[t])


@njit(_DEQUANTIZE_INTO, cache=True, nogil=True)
def dequantize_gelu(
    c: np.ndarray, a_scale: np.ndarray, w_scale: np.ndarray, bias: np.ndarray, out: np.ndarray
) -> None:
    """``out = gelu(c * a_scale * w_scale + bias)``, the exact erf GELU (Whisper's)."""
    for i in range(c.shape[0]):
        _dequantize_row(c, i, a_scale, w_scale, bias, out[i])
        _gelu_row(out[i])


@njit(
    void(int32[:, ::1], float32[::1], float32[::1], float32[::1], int8[:, ::1], float32[::1]),
    cache=True,
    nogil=True,
)
def dequantize_gelu_quantize(
    c: np.ndarray,
    a_scale: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray,
    q: np.ndarray,
    scale: np.ndarray,
) -> None:
    """FC1's int32 product to FC2's int8 input: dequantise, bias, GELU, per-row int8."""
    row = np.empty(c.shape[1], np.float32)
    for i in range(c.shape[0]):
        _dequantize_row(c, i, a_scale, w_scale, bias, row)
        _gelu_row(row)
        scale[i] = _quantize_row(row, q[i])


@njit(_DEQUANTIZE_INTO, cache=True, nogil=True)
def dequantize_add(
    c: np.ndarray, a_scale: np.ndarray, w_scale: np.ndarray, bias: np.ndarray, x: np.ndarray
) -> None:
    """The residual update ``x += c * a_scale * w_scale + bias``, in place."""
    row = np.empty(c.shape[1], np.float32)
    for i in range(c.shape[0]):
        _dequantize_row(c, i, a_scale, w_scale, bias, row)
        for j in range(row.size):
            x[i, j] += row[j]


@njit(
    void(
        int32[:, ::1],
        float32[::1],
        float32[::1],
        float32[::1],
        int8[:, :, ::1],
        float32[:, ::1],
        int8[:, :, ::1],
        float32[:, ::1],
        int8[:, :, ::1],
        float32[:, ::1],
    ),
    cache=True,
    nogil=True,
)
def split_qkv_quantize(
    c: np.ndarray,
    a_scale: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray,
    q: np.ndarray,
    q_scale: np.ndarray,
    kt: np.ndarray,
    k_scale: np.ndarray,
    v: np.ndarray,
    v_scale: np.ndarray,
) -> None:
    """The fused QKV product to each head's int8 operands.

    Writes, per head h: ``q[h]`` [frames, dh] and ``kt[h]`` [dh, frames] (K
    transposed, the B of Q Kᵀ) with one scale per frame; ``v[h]`` [frames, dh]
    with one scale per channel (a column of the B of P V).
    """
    n_heads, frames, dh = q.shape
    d = n_heads * dh
    row = np.empty(3 * d, np.float32)
    values = np.empty((frames, d), np.float32)
    head_q = np.empty(dh, np.int8)
    for i in range(frames):
        _dequantize_row(c, i, a_scale, w_scale, bias, row)
        for h in range(n_heads):
            q_scale[h, i] = _quantize_row(row[h * dh : (h + 1) * dh], q[h, i])
            k_scale[h, i] = _quantize_row(row[d + h * dh : d + (h + 1) * dh], head_q)
            for j in range(dh):
                kt[h, j, i] = head_q[j]
        values[i] = row[2 * d :]
    for h in range(n_heads):
        for j in range(dh):
            peak = 0.0
            for i in range(frames):
                peak = max(peak, abs(values[i, h * dh + j]))
            s = np.float32(peak / QMAX) if peak > 0.0 else np.float32(1.0)
            v_scale[h, j] = s
            inverse = 1.0 / s
            for i in range(frames):
                v[h, i, j] = np.int8(
                    min(QMAX, max(-QMAX, np.rint(values[i, h * dh + j] * inverse)))
                )


@njit(
    void(int32[:, ::1], float32[::1], float32[::1], int8[:, ::1], float32[::1]),
    cache=True,
    nogil=True,
)
def softmax_quantize(
    scores: np.ndarray,
    q_scale: np.ndarray,
    k_scale: np.ndarray,
    p: np.ndarray,
    p_scale: np.ndarray,
) -> None:
    """Int32 Q Kᵀ scores to int8 softmax probabilities, one pass per row.

    Score (i, j) is ``scores[i, j] * q_scale[i] * k_scale[j]`` (1/sqrt(dh) is in
    Q's weights). Probabilities are never negative, so they use all 256 int8
    codes: level ``L = rint(255 * exp(score - row max))`` in [0, 255], stored
    as ``L - 128`` (see :data:`P_OFFSET`). ``p_scale[i]`` is 1 / (the row's sum
    of levels), so each row of levels times its scale sums to exactly 1.
    """
    frames = scores.shape[1]
    for i in range(scores.shape[0]):
        peak = -np.inf
        for j in range(frames):
            peak = max(peak, scores[i, j] * k_scale[j])
        s = q_scale[i]
        total = 0
        for j in range(frames):
            level = np.int64(np.rint(P_LEVELS * math.exp((scores[i, j] * k_scale[j] - peak) * s)))
            p[i, j] = np.int8(level - P_OFFSET)
            total += level
        p_scale[i] = np.float32(1.0 / total)


@njit(
    void(int32[:, ::1], float32[::1], int8[:, ::1], float32[::1], float32[:, ::1], int64),
    cache=True,
    nogil=True,
)
def dequantize_head(
    c: np.ndarray,
    p_scale: np.ndarray,
    v: np.ndarray,
    v_scale: np.ndarray,
    out: np.ndarray,
    column: int,
) -> None:
    """One head's int32 (P - 128) V product, dequantised into columns ``column``.. of ``out``.

    The offset comes back exactly in integers: P V = (P - 128) V + 128 * (V's column sums).
    """
    offset = np.zeros(v.shape[1], np.int64)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            offset[j] += v[i, j]
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            exact = np.int64(c[i, j]) + P_OFFSET * offset[j]
            out[i, column + j] = exact * p_scale[i] * v_scale[j]


@njit(void(float32[:, ::1], int8[:, ::1], float32[::1]), cache=True, nogil=True)
def quantize_rows(x: np.ndarray, q: np.ndarray, scale: np.ndarray) -> None:
    """``x`` to int8, one scale per row."""
    for i in range(x.shape[0]):
        scale[i] = _quantize_row(x[i], q[i])


# -- weights, quantised once ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Int8Linear:
    """A linear layer ready for ``x @ weight.T + bias`` as one int8 matmul.

    Attributes:
        values: int8 [in_features, out_features], the B operand (weight transposed).
        scale: float32 [out_features], one scale per output channel.
        bias: float32 [out_features].
    """

    values: np.ndarray
    scale: np.ndarray
    bias: np.ndarray

    @classmethod
    def quantize(cls, weight: np.ndarray, bias: np.ndarray) -> Int8Linear:
        """From a float weight [out, in] and bias [out], one scale per output channel."""
        q = quantize_symmetric(np.ascontiguousarray(weight.T, dtype=_F32), axis=1)
        return cls(q.values, q.scale, _writable(bias))


def _writable(array: np.ndarray) -> np.ndarray:
    """A float32 C-order copy: the kernels' signatures take writable arrays, the model's are not."""
    return np.array(array, dtype=_F32, order="C")


def _norm(norm: LayerNorm) -> LayerNorm:
    return LayerNorm(_writable(norm.gamma), _writable(norm.beta))


def _conv_linear(conv: Conv1d) -> Int8Linear:
    """A kernel-3 convolution as the linear layer its im2col rows multiply."""
    # weight [out, in, tap] -> [out, tap, in]: the order im2col_quantize lays taps out in.
    return Int8Linear.quantize(
        conv.weight.transpose(0, 2, 1).reshape(conv.weight.shape[0], -1), conv.bias
    )


@dataclass(frozen=True, eq=False)
class Int8Layer:
    """One encoder block's quantised weights.

    Attributes:
        attn_norm, ffn_norm: the two layer norms (float32, on the host).
        qkv: the fused projection, Q's rows and bias pre-scaled by 1/sqrt(head_dim).
        out, fc1, fc2: the other projections.
    """

    attn_norm: LayerNorm
    qkv: Int8Linear
    out: Int8Linear
    ffn_norm: LayerNorm
    fc1: Int8Linear
    fc2: Int8Linear


def _layer(layer: Any, dims: WhisperDims) -> Int8Layer:
    d = dims.d_model
    # 1/sqrt(64) = 1/8 is a power of two: folding it into Q's weights loses nothing.
    fold = np.ones(3 * d, dtype=_F32)
    fold[:d] = 1.0 / math.sqrt(dims.head_dim)
    return Int8Layer(
        attn_norm=_norm(layer.attn_norm),
        qkv=Int8Linear.quantize(layer.qkv.weight * fold[:, None], layer.qkv.bias * fold),
        out=Int8Linear.quantize(layer.out.weight, layer.out.bias),
        ffn_norm=_norm(layer.ffn_norm),
        fc1=Int8Linear.quantize(layer.fc1.weight, layer.fc1.bias),
        fc2=Int8Linear.quantize(layer.fc2.weight, layer.fc2.bias),
    )


def _rows(n: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((n, width), np.int8), np.empty(n, _F32)


def _transposed_mel(mel: np.ndarray, dims: WhisperDims) -> np.ndarray:
    check_mel(mel, dims)
    return np.ascontiguousarray(mel.T, dtype=_F32)


class Int8Encoder:
    """Whisper's encoder on a pipeline: int8 GEMMs on the device, the rest on the host.

    Make it with :meth:`load` inside ``async with open_pipeline() as pipe``; use
    it only while that pipeline is open. Calls may overlap (each has its own buffers).

    Attributes:
        dims: the model's sizes.
        conv1, conv2: the convolutions as im2col linear layers.
        positional: float32 [n_frames, d_model].
        layers: the quantised blocks.
        final_norm: the last layer norm.
    """

    def __init__(self, pipe: Any, weights: EncoderWeights) -> None:
        """Quantise ``weights`` for ``pipe`` (CPU work: prefer :meth:`load` from async code)."""
        self._pipe = pipe
        self.dims = weights.dims
        self.conv1 = _conv_linear(weights.conv1)
        self.conv2 = _conv_linear(weights.conv2)
        self.positional = _writable(weights.positional)
        self.layers = tuple(_layer(layer, self.dims) for layer in weights.layers)
        self.final_norm = weights.final_norm

    @classmethod
    async def load(cls, pipe: Any, weights: EncoderWeights) -> Int8Encoder:
        """Quantise ``weights`` in a worker thread and return the encoder for ``pipe``."""
        return await anyio.to_thread.run_sync(cls, pipe, weights)

    async def __call__(self, mel: np.ndarray) -> np.ndarray:
        """The encoder output for one log-mel window [n_mels, 3000]: float32 [n_frames, d_model]."""
        states = await self.encoder_states(mel)
        return await anyio.to_thread.run_sync(layer_norm, states[-1], self.final_norm)

    async def encoder_states(self, mel: np.ndarray) -> tuple[np.ndarray, ...]:
        """The residual stream after the stem and after each block: n_layers + 1 arrays [frames, d].

        The counterpart of :func:`~npu_pipeline.whisper.float_encoder.encoder_states`.
        """
        frames = await anyio.to_thread.run_sync(_transposed_mel, mel, self.dims)
        x = await self._stem(frames)
        states = [x.copy()]
        for layer in self.layers:
            await self._block(x, layer)
            states.append(x.copy())
        return tuple(states)

    async def _gemm(self, q: np.ndarray, layer: Int8Linear) -> np.ndarray:
        return await self._pipe.matmul(q, layer.values)

    async def _conv(self, x: np.ndarray, layer: Int8Linear, stride: int) -> np.ndarray:
        """GELU(conv(x)) for x [time, c]: im2col + quantise on the host, the GEMM on the device."""
        q, s = _rows((len(x) - 1) // stride + 1, layer.values.shape[0])
        await anyio.to_thread.run_sync(im2col_quantize, x, stride, q, s)
        c = await self._gemm(q, layer)
        out = np.empty(c.shape, _F32)
        await anyio.to_thread.run_sync(dequantize_gelu, c, s, layer.scale, layer.bias, out)
        return out

    async def _stem(self, frames: np.ndarray) -> np.ndarray:
        x = await self._conv(frames, self.conv1, 1)
        x = await self._conv(x, self.conv2, 2)
        x += self.positional
        return x

    async def _block(self, x: np.ndarray, layer: Int8Layer) -> None:
        """One pre-norm block, updating the residual stream ``x`` in place."""
        run = anyio.to_thread.run_sync
        n, d = x.shape
        q, s = _rows(n, d)
        await run(layer_norm_quantize, x, layer.attn_norm.gamma, layer.attn_norm.beta, q, s)
        attention = await self._attention(await self._gemm(q, layer.qkv), s, layer.qkv)
        await run(quantize_rows, attention, q, s)
        await run(
            dequantize_add, await self._gemm(q, layer.out), s, layer.out.scale, layer.out.bias, x
        )
        await run(layer_norm_quantize, x, layer.ffn_norm.gamma, layer.ffn_norm.beta, q, s)
        c = await self._gemm(q, layer.fc1)
        hidden, hidden_scale = _rows(n, self.dims.n_ffn)
        await run(
            dequantize_gelu_quantize,
            c,
            s,
            layer.fc1.scale,
            layer.fc1.bias,
            hidden,
            hidden_scale,
        )
        c = await self._gemm(hidden, layer.fc2)
        await run(dequantize_add, c, hidden_scale, layer.fc2.scale, layer.fc2.bias, x)

    async def _attention(
        self, qkv: np.ndarray, a_scale: np.ndarray, layer: Int8Linear
    ) -> np.ndarray:
        """Every head's softmax(Q Kᵀ) V from the fused int32 QKV product: float32 [frames, d]."""
        heads, dh = self.dims.n_heads, self.dims.head_dim
        n = qkv.shape[0]
        q, kt, v = (
            np.empty(shape, np.int8) for shape in ((heads, n, dh), (heads, dh, n), (heads, n, dh))
        )
        q_scale, k_scale, v_scale = (
            np.empty((heads, n), _F32),
            np.empty((heads, n), _F32),
            np.empty((heads, dh), _F32),
        )
        await anyio.to_thread.run_sync(
            split_qkv_quantize,
            qkv,
            a_scale,
            layer.scale,
            layer.bias,
            q,
            q_scale,
            kt,
            k_scale,
            v,
            v_scale,
        )
        out = np.empty((n, heads * dh), _F32)

        async def head(h: int) -> None:
            scores = await self._pipe.matmul(q[h], kt[h])
            p, p_scale = _rows(n, n)
            await anyio.to_thread.run_sync(
                softmax_quantize, scores, q_scale[h], k_scale[h], p, p_scale
            )
            c = await self._pipe.matmul(p, v[h])
            await anyio.to_thread.run_sync(
                dequantize_head, c, p_scale, v[h], v_scale[h], out, h * dh
            )

        async with anyio.create_task_group() as group:
            for h in range(heads):
                group.start_soon(head, h)
        return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays taken as flat vectors (float64)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def layer_cosines(ours: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> tuple[float, ...]:
    """Cosine of each of our encoder states against the reference's, stem first."""
    return tuple(cosine(a, b) for a, b in zip(ours, reference, strict=True))


def encoder_gemms(dims: WhisperDims) -> tuple[tuple[str, int, int, int], ...]:
    """(name, M, K, N) of every int8 matmul :class:`Int8Encoder` sends per window, in order.

    The heads' two matmuls repeat once per head and layer; for tiny.en that is
    2 + 4 * (4 + 2 * 6) = 66 matmuls.
    """
    frames, d, dh = dims.n_frames, dims.d_model, dims.head_dim
    gemms = [("conv1", 2 * frames, 3 * dims.n_mels, d), ("conv2", frames, 3 * d, d)]
    for index in range(dims.n_layers):
        gemms.append((f"layer {index} qkv", frames, d, 3 * d))
        for head in range(dims.n_heads):
            gemms.append((f"layer {index} head {head} q k^T", frames, dh, frames))
            gemms.append((f"layer {index} head {head} p v", frames, frames, dh))
        gemms += [
            (f"layer {index} out", frames, d, d),
            (f"layer {index} fc1", frames, d, dims.n_ffn),
            (f"layer {index} fc2", frames, dims.n_ffn, d),
        ]
    return tuple(gemms)
