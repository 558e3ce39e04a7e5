"""The log-mel front end against implementations written differently, and against known facts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from npu_pipeline.errors import ShapeError
from npu_pipeline.whisper import mel
from npu_pipeline.whisper.audio import read_wav

CLIP = Path(__file__).parent / "data" / "audio" / "report.wav"


def test_slaney_mel_scale_known_points():
    # Slaney's scale: linear to 15 mel at 1 kHz, then 27 mel per factor 6.4.
    np.testing.assert_allclose(mel.hz_to_mel([0, 200 / 3, 1000, 6400]), [0, 1, 15, 42])
    hz = np.array([0.0, 123.0, 999.0, 1000.0, 2500.0, 8000.0])
    np.testing.assert_allclose(mel.mel_to_hz(mel.hz_to_mel(hz)), hz, rtol=1e-12)


def _filterbank_by_bisection(n_mels: int) -> np.ndarray:
    """Slaney filters built another way: corners by inverting the scale numerically, per bin."""

    def to_mel(f):
        return f / (200 / 3) if f < 1000 else 15 + 27 * math.log(f / 1000) / math.log(6.4)

    def to_hz(m):
        lo, hi = 0.0, 8000.0
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if to_mel(mid) < m else (lo, mid)
        return (lo + hi) / 2

    top = to_mel(8000.0)
    corners = [to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    out = np.zeros((n_mels, 201))
    for i in range(n_mels):
        lo, mid, hi = corners[i : i + 3]
        for b in range(201):
            f = b * 8000.0 / 200
            if lo < f <= mid:
                out[i, b] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                out[i, b] = (hi - f) / (hi - mid)
        out[i] *= 2.0 / (hi - lo)
    return out


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filterbank_matches_a_bisection_construction(n_mels):
    filters = mel.mel_filterbank(n_mels)
    assert filters.shape == (n_mels, 201) and filters.dtype == np.float32
    np.testing.assert_allclose(filters, _filterbank_by_bisection(n_mels), rtol=1e-5, atol=1e-9)
    # Slaney normalisation: each triangle's area in Hz is 1 (bins are 40 Hz apart).
    # Sampled at the bins, only the top filters, a dozen bins wide, show it closely.
    areas = filters.sum(axis=1) * 40.0
    np.testing.assert_allclose(areas[-20:], 1.0, rtol=0.02)
    assert not filters.flags.writeable


def _direct_dft_power(audio: np.ndarray, frame: int) -> np.ndarray:
    """|DFT|^2 of frame ``frame`` by explicit sums, the signal mirrored at the edges by hand."""
    n = np.arange(400)
    positions = frame * 160 - 200 + n
    positions = np.where(positions < 0, -positions, positions)
    positions = np.where(positions >= len(audio), 2 * (len(audio) - 1) - positions, positions)
    window = np.sin(np.pi * n / 400) ** 2  # the periodic Hann window, written as sin^2
    x = audio[positions] * window
    k = np.arange(201)[:, None]
    real = (x * np.cos(2 * np.pi * k * n / 400)).sum(axis=1)
    imag = (x * np.sin(2 * np.pi * k * n / 400)).sum(axis=1)
    return real**2 + imag**2


def test_power_spectrogram_matches_a_direct_dft():
    audio = mel.pad_or_trim(read_wav(CLIP).astype(np.float64))
    power = mel.power_spectrogram(audio)
    assert power.shape == (201, 3000)
    for frame in [0, 1, 137, 250, 2999]:
        want = _direct_dft_power(audio, frame)
        np.testing.assert_allclose(power[:, frame], want, rtol=1e-9, atol=1e-9 * want.max())


def test_power_spectrogram_matches_scipy_stft():
    signal = pytest.importorskip("scipy.signal")
    audio = mel.pad_or_trim(read_wav(CLIP).astype(np.float64))
    window = signal.get_window("hann", 400)  # periodic by default (fftbins=True)
    # 'even' extension mirrors without repeating the edge sample: numpy's 'reflect'.
    _, _, spectrum = signal.stft(
        audio, window=window, nperseg=400, noverlap=240, boundary="even", padded=False
    )
    # scipy scales the spectrum by 1 / sum(window); Whisper's STFT does not.
    want = np.abs(spectrum * window.sum()) ** 2
    assert want.shape == (201, 3001)
    np.testing.assert_allclose(mel.power_spectrogram(audio), want[:, :-1], atol=1e-9 * want.max())


def test_log_mel_of_speech_has_whisper_shape_and_range():
    audio = read_wav(CLIP)
    log_mel = mel.log_mel_spectrogram(audio)
    assert log_mel.shape == (80, 3000) and log_mel.dtype == np.float32
    # (log10 + 4) / 4 with at most 8 decades: the range is 2 at most, and the
    # padded silence sits exactly at the floor.
    top = log_mel.max()
    assert log_mel.min() == pytest.approx(top - 2.0, abs=1e-6)
    assert 0.5 < top < 1.5
    frames_of_speech = int(np.ceil(len(audio) / 160))
    assert np.all(log_mel[:, frames_of_speech + 3 :] == log_mel.min())
    assert log_mel[:, : frames_of_speech - 3].mean() > log_mel.min() + 0.5
    np.testing.assert_array_equal(mel.log_mel_spectrogram(audio, n_mels=128).shape, (128, 3000))


def test_a_tone_peaks_in_the_mel_bin_centred_on_it():
    t = np.arange(16000) / 16000
    log_mel = mel.log_mel_spectrogram((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    centres = mel.mel_to_hz(np.linspace(0, mel.hz_to_mel(8000), 82))[1:-1]
    loudest = int(np.argmax(log_mel[:, 50]))
    assert abs(centres[loudest] - 1000) == pytest.approx(np.abs(centres - 1000).min())


def test_pad_or_trim():
    audio = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(mel.pad_or_trim(audio, 4), audio[:4])
    np.testing.assert_array_equal(mel.pad_or_trim(audio, 12), np.r_[audio, 0, 0])
    assert len(mel.pad_or_trim(np.ones(500_000, np.float32))) == 480_000
    with pytest.raises(ShapeError, match="one channel"):
        mel.pad_or_trim(np.zeros((2, 10)))
