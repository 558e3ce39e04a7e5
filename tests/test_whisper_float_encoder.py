"""The float32 reference encoder against a plain float64 implementation written differently.

CTranslate2's own encoder checks it on the real tiny.en in test_whisper_ct2.py;
here small random weights check each step, without any optional package.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from npu_pipeline.errors import ShapeError
from npu_pipeline.whisper import float_encoder as fe
from npu_pipeline.whisper.ct2_model import WhisperDims
from npu_pipeline.whisper.synthetic import WHISPER_BASE, random_encoder_weights

SMALL = WhisperDims(n_mels=6, d_model=16, n_heads=4, n_layers=2, n_ffn=64, n_frames=10)


def _gelu64(x):
    return np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(x)


def _conv64(x, weight, bias, stride):
    """Convolution by loops over output frames and taps, x [in, time] as PyTorch holds it."""
    n_in, time = x.shape
    padded = np.zeros((n_in, time + 2))
    padded[:, 1:-1] = x
    out = np.zeros((weight.shape[0], (time - 1) // stride + 1))
    for t in range(out.shape[1]):
        for tap in range(3):
            out[:, t] += weight[:, :, tap].astype(np.float64) @ padded[:, t * stride + tap]
    return out + bias[:, None]


def _norm64(x, norm):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * (
        norm.gamma
    ) + norm.beta


def _encode64(mel, weights):
    """Whisper's encoder in float64, attention via einsum over all heads at once."""
    dims = weights.dims
    x = _gelu64(_conv64(mel, weights.conv1.weight, weights.conv1.bias, 1))
    x = _gelu64(_conv64(x, weights.conv2.weight, weights.conv2.bias, 2)).T + weights.positional
    for layer in weights.layers:
        qkv = _norm64(x, layer.attn_norm) @ layer.qkv.weight.T.astype(np.float64) + layer.qkv.bias
        q, k, v = (
            part.reshape(len(x), dims.n_heads, dims.head_dim) for part in np.split(qkv, 3, axis=1)
        )
        logits = np.einsum("qhc,khc->hqk", q, k) / math.sqrt(dims.head_dim)
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        heads = np.einsum("hqk,khc->qhc", probs, v).reshape(len(x), dims.d_model)
        x = x + heads @ layer.out.weight.T + layer.out.bias
        hidden = _gelu64(_norm64(x, layer.ffn_norm) @ layer.fc1.weight.T + layer.fc1.bias)
        x = x + hidden @ layer.fc2.weight.T + layer.fc2.bias
    return _norm64(x, weights.final_norm)


def test_gelu_is_the_erf_gelu():
    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    got = fe.gelu(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _gelu64(x.astype(np.float64)), rtol=2e-6, atol=1e-7)
    assert fe.gelu(np.float32(0.0)) == 0.0


@pytest.mark.parametrize("stride", [1, 2])
def test_conv1d_matches_a_loop_convolution(rng, stride):
    weights = random_encoder_weights(SMALL, seed=1)
    conv = weights.conv1 if stride == 1 else weights.conv2
    x = rng.standard_normal((20, conv.weight.shape[1])).astype(np.float32)
    got = fe.conv1d(x, conv.__class__(conv.weight, conv.bias, stride))
    np.testing.assert_allclose(got.T, _conv64(x.T, conv.weight, conv.bias, stride), atol=2e-5)


def test_encoder_matches_a_float64_einsum_implementation(rng):
    weights = random_encoder_weights(SMALL, seed=2)
    mel = rng.uniform(-1, 1, (SMALL.n_mels, 2 * SMALL.n_frames)).astype(np.float32)
    got = fe.encode(mel, weights)
    assert got.shape == (SMALL.n_frames, SMALL.d_model) and got.dtype == np.float32
    np.testing.assert_allclose(got, _encode64(mel.astype(np.float64), weights), atol=5e-5)
    states = fe.encoder_states(mel, weights)
    assert len(states) == SMALL.n_layers + 1
    np.testing.assert_allclose(fe.layer_norm(states[-1], weights.final_norm), got, rtol=0)


def test_random_weights_are_seeded_and_sized():
    first, again = random_encoder_weights(SMALL, seed=5), random_encoder_weights(SMALL, seed=5)
    np.testing.assert_array_equal(first.layers[1].fc2.weight, again.layers[1].fc2.weight)
    other = random_encoder_weights(SMALL, seed=6)
    assert not np.array_equal(first.layers[1].fc2.weight, other.layers[1].fc2.weight)
    assert first.layers[1].fc2.weight.shape == (SMALL.d_model, SMALL.n_ffn)
    assert first.conv1.weight.shape == (SMALL.d_model, SMALL.n_mels, 3)
    assert (WHISPER_BASE.d_model, WHISPER_BASE.n_heads, WHISPER_BASE.head_dim) == (512, 8, 64)


def test_a_mel_of_the_wrong_shape_is_refused():
    weights = random_encoder_weights(SMALL, seed=2)
    with pytest.raises(ShapeError, match=r"\(6, 20\): this model's mel bins"):
        fe.encode(np.zeros((80, 3000), np.float32), weights)
