"""16 kHz mono WAV in; anything else refused with the command that converts it. The clips."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from npu_pipeline.errors import AudioError, NpuPipelineError
from npu_pipeline.whisper.audio import SAMPLE_RATE, read_wav

AUDIO = Path(__file__).parent / "data" / "audio"


def write_wav(path, frames: bytes, rate=16000, channels=1, width=2):
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(frames)
    return path


def test_pcm16_reads_to_unit_scale_floats(tmp_path):
    samples = np.array([0, 1, -1, 16384, -32768, 32767], dtype="<i2")
    got = read_wav(write_wav(tmp_path / "a.wav", samples.tobytes()))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, samples / 32768.0)


def test_pcm24_and_pcm32_read_to_the_same_scale(tmp_path):
    values = np.array([0, 1, -1, 2**22, -(2**23), 2**23 - 1], dtype=np.int64)
    # 24-bit little-endian: the low three bytes of each two's-complement int32.
    raw24 = b"".join(struct.pack("<i", v)[:3] for v in values)
    got24 = read_wav(write_wav(tmp_path / "a24.wav", raw24, width=3))
    np.testing.assert_array_equal(got24, (values / 2.0**23).astype(np.float32))
    values32 = values * 256
    got32 = read_wav(write_wav(tmp_path / "a32.wav", values32.astype("<i4").tobytes(), width=4))
    np.testing.assert_array_equal(got32, got24)


def _assert_refused_with_commands(path, reason):
    with pytest.raises(AudioError, match=reason) as caught:
        read_wav(path)
    message = str(caught.value)
    assert f"ffmpeg -i {path} -ar 16000 -ac 1 {path.with_name(path.stem + '_16k.wav')}" in message
    assert f"sox {path} -r 16000 -c 1 -b 16 " in message
    assert isinstance(caught.value, NpuPipelineError) and isinstance(caught.value, ValueError)


def test_other_rates_channels_and_widths_are_refused(tmp_path):
    silence = bytes(400)
    _assert_refused_with_commands(
        write_wav(tmp_path / "cd.wav", silence, rate=44100), "sample rate 44100 Hz"
    )
    _assert_refused_with_commands(
        write_wav(tmp_path / "stereo.wav", silence, channels=2), "2 channels"
    )
    _assert_refused_with_commands(write_wav(tmp_path / "u8.wav", silence, width=1), "8-bit")


def test_non_wav_and_float_wav_are_refused(tmp_path):
    mp3 = tmp_path / "talk.mp3"
    mp3.write_bytes(b"ID3\x03\x00" + bytes(100))
    _assert_refused_with_commands(mp3, "not a WAV file")
    # An IEEE-float WAV (format tag 3), which the standard library cannot read.
    data = np.zeros(16, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data"
    body += struct.pack("<I", len(data)) + data
    floats = tmp_path / "float.wav"
    floats.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    _assert_refused_with_commands(floats, "not a WAV file")
    with pytest.raises(AudioError, match="does not exist"):
        read_wav(tmp_path / "missing.wav")


# --- the shipped clips -----------------------------------------------------------------


def shipped_clips() -> dict[str, str]:
    return json.loads((AUDIO / "sentences.json").read_text())


def test_every_shipped_clip_is_short_16k_mono_pcm16_with_known_text():
    clips = shipped_clips()
    assert set(clips) == {p.name for p in AUDIO.glob("*.wav")}
    assert len(clips) >= 4 and any("Pipelines" in text for text in clips.values())
    assert sum(p.stat().st_size for p in AUDIO.iterdir()) < 1_500_000
    for name, text in clips.items():
        with wave.open(str(AUDIO / name)) as handle:
            assert (handle.getframerate(), handle.getnchannels(), handle.getsampwidth()) == (
                SAMPLE_RATE,
                1,
                2,
            )
        samples = read_wav(AUDIO / name)
        assert 3.0 <= len(samples) / SAMPLE_RATE <= 6.0, name
        assert 0.1 < np.abs(samples).max() <= 1.0, name  # speech, not silence or clipping
        assert len(text.split()) >= 8


@pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("sox")),
    reason="espeak-ng and sox not installed",
)
def test_make_clips_makes_the_shipped_clips(tmp_path):
    for name in ("make_clips.sh", "sentences.json"):
        shutil.copy(AUDIO / name, tmp_path / name)
    subprocess.run(["sh", str(tmp_path / "make_clips.sh")], check=True, capture_output=True)
    versions = (
        subprocess.run(
            ["espeak-ng", "--version"], check=True, capture_output=True, text=True
        ).stdout
        + subprocess.run(["sox", "--version"], check=True, capture_output=True, text=True).stdout
    )
    # The script names the tool versions that made the shipped bytes.
    recorded = re.findall(
        r"eSpeak NG text-to-speech: [\d.]+|SoX v[\d.]+", (AUDIO / "make_clips.sh").read_text()
    )
    same_tools = len(recorded) == 2 and all(tool in versions for tool in recorded)
    for name in shipped_clips():
        made, shipped = read_wav(tmp_path / name), read_wav(AUDIO / name)
        if same_tools:
            assert (tmp_path / name).read_bytes() == (AUDIO / name).read_bytes(), name
        else:
            assert abs(len(made) - len(shipped)) <= 0.05 * len(shipped), name
