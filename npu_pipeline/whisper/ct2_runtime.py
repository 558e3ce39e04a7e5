"""CTranslate2's Whisper on the CPU: its encoder to check ours against, its decoder to read ours.

``ctranslate2.models.Whisper.generate`` takes either a mel spectrogram
[batch, n_mels, 3000] or an encoder output [batch, 1500, d_model] (its docstring,
OpenNMT/CTranslate2 ``python/cpp/whisper.cc``), so an encoder computed elsewhere
is decoded by the same beam search as CTranslate2's own. Needs the ``whisper``
extra: ``pip install "npu-pipeline[whisper]"`` (ctranslate2, tokenizers).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from npu_pipeline.errors import DependencyError, ModelError, explain


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise DependencyError(
            explain(
                f"the Python package {module!r} is not installed",
                "ctranslate2 and tokenizers, the npu-pipeline[whisper] extra",
                'Install them: pip install "npu-pipeline[whisper]".',
            )
        ) from error


def load_ct2_whisper(
    model_dir: str | Path, compute_type: str = "float32", intra_threads: int = 0
) -> Any:
    """CTranslate2's Whisper on the CPU for ``model_dir``, as ``ctranslate2.models.Whisper``.

    Args:
        model_dir: a CTranslate2 Whisper model directory.
        compute_type: ``"float32"`` (the reference) or ``"int8"`` (the CPU int8
            path a faster-whisper user would pick), or any type CTranslate2 accepts.
        intra_threads: CPU threads per call (0: CTranslate2's default).

    Raises:
        DependencyError: ctranslate2 is not installed.
    """
    ctranslate2 = _require("ctranslate2")
    return ctranslate2.models.Whisper(
        str(model_dir), device="cpu", compute_type=compute_type, intra_threads=intra_threads
    )


def _storage(array: np.ndarray) -> Any:
    ctranslate2 = _require("ctranslate2")
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array[None], dtype=np.float32))


def ct2_encode(model: Any, mel: np.ndarray) -> np.ndarray:
    """CTranslate2's encoder output for one mel window [n_mels, 3000]: float32 [1500, d_model]."""
    return np.array(model.encode(_storage(mel), to_cpu=True))[0]


def prompt_tokens(model: Any, language: str = "en") -> list[str]:
    """The decoder's start tokens: transcribe, no timestamps (and the language if multilingual)."""
    if model.is_multilingual:
        return ["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"]
    return ["<|startoftranscript|>", "<|notimestamps|>"]


def ct2_transcribe(
    model: Any,
    tokenizer_path: str | Path | None,
    features: np.ndarray,
    *,
    beam_size: int = 5,
    language: str = "en",
) -> str:
    """The text CTranslate2's decoder reads from one 30 s window.

    Args:
        model: from :func:`load_ct2_whisper`.
        tokenizer_path: the model directory's ``tokenizer.json``.
        features: a log-mel window [n_mels, 3000] (CTranslate2 runs its own
            encoder) or an encoder output [1500, d_model] (ours, decoded as is).
        beam_size: beam width (5, faster-whisper's default; 1 for greedy).
        language: the spoken language, for multilingual models.

    Raises:
        ModelError: there is no tokenizer.json.
        DependencyError: ctranslate2 or tokenizers is not installed.
    """
    if tokenizer_path is None or not Path(tokenizer_path).is_file():
        raise ModelError(
            explain(
                f"no tokenizer.json at {tokenizer_path}",
                "the tokenizer.json CTranslate2's converter copies into the model directory",
                "Copy tokenizer.json from the original Hugging Face model into the directory.",
            )
        )
    tokenizer = _require("tokenizers").Tokenizer.from_file(str(tokenizer_path))
    (result,) = model.generate(
        _storage(features), [prompt_tokens(model, language)], beam_size=beam_size
    )
    return tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True).strip()
