"""Whisper's log-mel front end, in numpy.

The definition is Whisper's own (``log_mel_spectrogram`` and ``pad_or_trim`` in
openai/whisper ``whisper/audio.py``):

1. pad with zeros or trim the 16 kHz audio to 30 s (480000 samples);
2. short-time Fourier transform: 400-sample frames every 160 samples (25 ms
   every 10 ms), a periodic Hann window, the signal reflected by 200 samples at
   both ends so that frame t is centred on sample 160 t; the last frame is
   dropped, which leaves 3000 frames;
3. power spectrum |X|^2 of the 201 bins from 0 to 8 kHz;
4. a Slaney-style mel filterbank (80 bins, or 128 for large-v3): the
   ``librosa.filters.mel`` default Whisper's filter file was made with;
5. log10, clamped at 1e-10; values below (maximum - 8) raised to it, so the
   range is at most 8 decades; then (x + 4) / 4.

Plain functions, CPU-bound for a few tens of milliseconds: call them from a
worker thread in async code.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from npu_pipeline.errors import ShapeError, explain
from npu_pipeline.whisper.audio import SAMPLE_RATE

N_FFT = 400
"""STFT frame length, in samples (25 ms)."""
HOP_LENGTH = 160
"""STFT hop, in samples (10 ms)."""
CHUNK_SAMPLES = 30 * SAMPLE_RATE
"""Samples in Whisper's 30 s window."""
N_FRAMES = CHUNK_SAMPLES // HOP_LENGTH
"""Mel frames in a 30 s window (3000)."""

# Slaney's mel scale (Auditory Toolbox; librosa's htk=False): linear below 1 kHz
# at 200/3 Hz per mel, logarithmic above with 27 mels per factor 6.4.
_HZ_PER_MEL = 200.0 / 3.0
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Frequency in Hz to Slaney mels (15 mel at 1 kHz, 42 mel at 6.4 kHz)."""
    hz = np.asarray(hz, dtype=np.float64)
    above = _BREAK_MEL + np.log(np.maximum(hz, _BREAK_HZ) / _BREAK_HZ) / _LOG_STEP
    return np.where(hz < _BREAK_HZ, hz / _HZ_PER_MEL, above)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Slaney mels to frequency in Hz, the inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    above = _BREAK_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _BREAK_MEL) - _BREAK_MEL))
    return np.where(mel < _BREAK_MEL, mel * _HZ_PER_MEL, above)


@lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = 80) -> np.ndarray:
    """The mel filterbank, read-only float32 [n_mels, N_FFT // 2 + 1], for 16 kHz audio.

    Triangles with corners at n_mels + 2 points evenly spaced in Slaney mels
    from 0 Hz to 8 kHz; filter i rises from corner i to corner i + 1 and falls to
    corner i + 2, and is scaled by 2 / (width in Hz) so that each has the same
    area (Slaney normalisation).
    """
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    corners = mel_to_hz(np.linspace(0.0, hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    low, centre, high = corners[:-2, None], corners[1:-1, None], corners[2:, None]
    rising = (bins - low) / (centre - low)
    falling = (high - bins) / (high - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    filters = (triangles * (2.0 / (high - low))).astype(np.float32)
    filters.flags.writeable = False
    return filters


def pad_or_trim(audio: np.ndarray, length: int = CHUNK_SAMPLES) -> np.ndarray:
    """The first ``length`` samples of ``audio``, zero-padded at the end when shorter."""
    if audio.ndim != 1:
        raise ShapeError(
            explain(
                f"audio has shape {audio.shape}",
                "one channel of samples, shape (n,)",
                "Read the file with npu_pipeline.whisper.audio.read_wav (mono only).",
            )
        )
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))


def power_spectrogram(audio: np.ndarray) -> np.ndarray:
    """|STFT|^2 of ``audio`` as Whisper frames it, float64 [N_FFT // 2 + 1, frames].

    Centred frames (the signal reflected by N_FFT / 2 at both ends), a periodic
    Hann window, and one frame per HOP_LENGTH samples; the last frame is dropped
    as Whisper drops it, so 480000 samples give 3000 frames.
    """
    half = N_FFT // 2
    padded = np.pad(audio.astype(np.float64), half, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:-1]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    spectrum = np.fft.rfft(frames * window, axis=1)
    return (spectrum.real**2 + spectrum.imag**2).T


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Whisper's log-mel spectrogram of a 30 s window, float32 [n_mels, 3000].

    ``audio`` is 16 kHz mono float samples in [-1, 1], as
    :func:`~npu_pipeline.whisper.audio.read_wav` returns them; it is padded or
    trimmed to 30 s first. Values lie in [max - 2, max] with max = (log10 of the
    largest mel power + 4) / 4; max is 1.2 to 1.3 for the shipped test clips.
    """
    power = power_spectrogram(pad_or_trim(audio))
    log_spec = np.log10(np.maximum(mel_filterbank(n_mels) @ power, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
