"""The float32 Whisper encoder in numpy: the reference the int8 encoder is checked against.

Whisper's ``AudioEncoder`` (openai/whisper ``whisper/model.py``), over the
weights :func:`~npu_pipeline.whisper.ct2_model.encoder_weights` reads:

- conv1 (kernel 3, padding 1) and GELU, conv2 (kernel 3, stride 2, padding 1)
  and GELU: [n_mels, 3000] -> [1500, d_model];
- plus the positional embedding;
- per block, pre-norm: ``x += out(attention(layer_norm(x)))`` with the fused
  QKV projection, then ``x += fc2(gelu(fc1(layer_norm(x))))``;
- a final layer norm.

Every step is float32 and plain numpy (GELU's erf through numba, which numpy
lacks). It is a few hundred milliseconds for tiny.en on one core: call it from a
worker thread in async code.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from npu_pipeline.errors import ShapeError, explain
from npu_pipeline.whisper.ct2_model import (
    Conv1d,
    EncoderLayerWeights,
    EncoderWeights,
    LayerNorm,
    Linear,
    WhisperDims,
)

LAYER_NORM_EPS = 1e-5
"""Layer norm's variance floor (PyTorch's default, which Whisper and CTranslate2 use)."""


@numba.vectorize(["float32(float32)"], cache=True)
def gelu(x: float) -> float:
    """GELU with the exact erf, x * (1 + erf(x / sqrt 2)) / 2, elementwise (Whisper's nn.GELU)."""
    return 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))


def layer_norm(x: np.ndarray, norm: LayerNorm) -> np.ndarray:
    """Normalise each row of ``x`` [rows, d] to mean 0 and variance 1, then scale and shift."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(variance + np.float32(LAYER_NORM_EPS)) * norm.gamma + norm.beta


def linear(x: np.ndarray, layer: Linear) -> np.ndarray:
    """``x @ weight.T + bias`` for x [rows, in_features]."""
    return x @ layer.weight.T + layer.bias


def conv1d(x: np.ndarray, conv: Conv1d) -> np.ndarray:
    """A kernel-3, padding-1 convolution of x [time, in_channels] -> [time / stride, out].

    As an im2col GEMM: each output frame's three input frames side by side,
    [time / stride, 3 * in], times the weight reshaped to [3 * in, out].
    """
    padded = np.pad(x, ((1, 1), (0, 0)))
    n_out = (len(x) - 1) // conv.stride + 1
    columns = np.concatenate(
        [padded[tap : tap + conv.stride * n_out : conv.stride] for tap in range(3)], axis=1
    )
    # weight [out, in, tap] -> [tap, in, out], matching the columns' order.
    kernel = conv.weight.transpose(2, 1, 0).reshape(-1, conv.weight.shape[0])
    return columns @ kernel + conv.bias


def attention(x: np.ndarray, layer: EncoderLayerWeights, n_heads: int) -> np.ndarray:
    """Multi-head self-attention of x [frames, d] (already layer-normed), before the out projection.

    Head h takes columns h*dh..(h+1)*dh-1 of Q, K and V from the fused
    projection: softmax(Q K^T / sqrt(dh)) V, the softmax per query row. One head
    at a time, so one [frames, frames] score matrix is held; the softmax's
    division is applied to the [frames, dh] product instead of the scores (the
    same value, 1500 / 64 times fewer divisions).
    """
    frames, d_model = x.shape
    head_dim = d_model // n_heads
    qkv = linear(x, layer.qkv)
    q = qkv[:, :d_model] * np.float32(1.0 / math.sqrt(head_dim))
    k, v = qkv[:, d_model : 2 * d_model], qkv[:, 2 * d_model :]
    out = np.empty((frames, d_model), dtype=np.float32)
    for head in range(n_heads):
        cols = slice(head * head_dim, (head + 1) * head_dim)
        scores = q[:, cols] @ k[:, cols].T
        # Shifted by the row maximum so that exp cannot overflow.
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        out[:, cols] = (scores @ v[:, cols]) / scores.sum(axis=1, keepdims=True)
    return out


def encoder_layer(x: np.ndarray, layer: EncoderLayerWeights, n_heads: int) -> np.ndarray:
    """One pre-norm encoder block on the residual stream x [frames, d] float32."""
    x = x + linear(attention(layer_norm(x, layer.attn_norm), layer, n_heads), layer.out)
    return x + linear(gelu(linear(layer_norm(x, layer.ffn_norm), layer.fc1)), layer.fc2)


def check_mel(mel: np.ndarray, dims: WhisperDims) -> None:
    """Refuse a mel spectrogram that is not [n_mels, 2 * n_frames] for these sizes.

    Raises:
        ShapeError: the shape, what the model expects and how to compute it.
    """
    if mel.shape != (dims.n_mels, 2 * dims.n_frames):
        raise ShapeError(
            explain(
                f"the mel spectrogram has shape {mel.shape}",
                f"({dims.n_mels}, {2 * dims.n_frames}): this model's mel bins by a 30 s window",
                "Compute it with npu_pipeline.whisper.mel.log_mel_spectrogram"
                f"(audio, n_mels={dims.n_mels}).",
            )
        )


def stem(mel: np.ndarray, weights: EncoderWeights) -> np.ndarray:
    """conv1 + GELU, conv2 + GELU, plus the positional embedding: [n_mels, 3000] -> [1500, d]."""
    check_mel(mel, weights.dims)
    x = gelu(conv1d(np.ascontiguousarray(mel.T, dtype=np.float32), weights.conv1))
    return gelu(conv1d(x, weights.conv2)) + weights.positional


def encoder_states(mel: np.ndarray, weights: EncoderWeights) -> tuple[np.ndarray, ...]:
    """The residual stream after the stem and after each block: n_layers + 1 arrays [frames, d].

    For per-layer comparisons; :func:`encode` is the last of these after the final layer norm.
    """
    states = [stem(mel, weights)]
    for layer in weights.layers:
        states.append(encoder_layer(states[-1], layer, weights.dims.n_heads))
    return tuple(states)


def encode(mel: np.ndarray, weights: EncoderWeights) -> np.ndarray:
    """Whisper's encoder output for one log-mel window: float32 [n_frames, d_model].

    ``mel`` is [n_mels, 3000] from :func:`~npu_pipeline.whisper.mel.log_mel_spectrogram`.
    The result is what CTranslate2's ``Whisper.encode`` returns for the same mel
    (batch dimension dropped), and what ``Whisper.generate`` accepts in its place.
    """
    return layer_norm(encoder_states(mel, weights)[-1], weights.final_norm)
