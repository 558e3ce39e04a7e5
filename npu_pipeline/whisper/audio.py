"""Read the audio Whisper takes: 16 kHz mono WAV, with the standard library's ``wave`` module.

Whisper's front end works on 16 kHz mono samples. Resampling and down-mixing
are left to the tools made for them: anything else is refused with the
``ffmpeg`` and ``sox`` command that converts it.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from npu_pipeline.errors import AudioError, explain

SAMPLE_RATE = 16000
"""Whisper's sample rate, in Hz."""

# Sample widths (bytes) wave reads as integer PCM, and the full scale of each.
_FULL_SCALE = {2: 2.0**15, 3: 2.0**23, 4: 2.0**31}


def conversion_commands(path: str | Path) -> str:
    """The ffmpeg and sox commands that turn ``path`` into a 16 kHz mono PCM16 WAV."""
    source = Path(path)
    target = source.with_name(f"{source.stem}_16k.wav")
    return (
        f"Convert it with `ffmpeg -i {source} -ar 16000 -ac 1 {target}` "
        f"or `sox {source} -r 16000 -c 1 -b 16 {target}`."
    )


def _refuse(path: Path, what: str) -> AudioError:
    return AudioError(
        explain(
            f"{path}: {what}",
            f"a {SAMPLE_RATE} Hz mono WAV of 16-, 24- or 32-bit integer PCM",
            conversion_commands(path),
        )
    )


def read_wav(path: str | Path) -> np.ndarray:
    """Read a 16 kHz mono WAV as float32 samples in [-1, 1).

    Accepts integer PCM of 16, 24 or 32 bits (what ``wave`` reads; it has no
    float WAV support, so float WAV is refused like any other format).

    Raises:
        AudioError: the file is not a WAV ``wave`` can read, or has another
            sample rate, channel count or sample width; the message gives the
            conversion command.
    """
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as handle:
            rate, channels = handle.getframerate(), handle.getnchannels()
            width = handle.getsampwidth()
            raw = handle.readframes(handle.getnframes())
    except FileNotFoundError as error:
        raise AudioError(
            explain(f"{path} does not exist", "a path to a WAV file", "Check the file name.")
        ) from error
    except (wave.Error, EOFError) as error:
        raise _refuse(path, f"not a WAV file the standard library can read ({error})") from error
    if rate != SAMPLE_RATE:
        raise _refuse(path, f"sample rate {rate} Hz")
    if channels != 1:
        raise _refuse(path, f"{channels} channels")
    if width not in _FULL_SCALE:
        raise _refuse(path, f"{8 * width}-bit samples")
    if width == 3:
        # No numpy dtype is 3 bytes wide: place each sample in an int32's top three bytes.
        triplets = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        words = np.zeros((len(triplets), 4), dtype=np.uint8)
        words[:, 1:] = triplets
        samples = words.view("<i4").ravel() >> 8
    else:
        samples = np.frombuffer(raw, dtype=f"<i{width}")
    return (samples / _FULL_SCALE[width]).astype(np.float32)
