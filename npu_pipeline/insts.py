"""The header of an NPU instruction stream (``insts.bin``), as mlir-aie writes it.

mlir-aie's ``AIETranslateNpuToBinary`` (Xilinx/mlir-aie
``lib/Targets/AIETargetNPU.cpp``) starts every instruction stream with four
little-endian 32-bit words:

====  ==========================================================================
word  content
====  ==========================================================================
0     byte 0 major version, byte 1 minor version, **byte 2 the device
      generation** (3 = npu1: Phoenix, Hawk Point; 4 = npu2: Strix, Krackan),
      byte 3 the number of rows
1     byte 0 the number of columns, byte 1 the number of memory-tile rows
2     the number of operations that follow
3     **the size of the whole stream in bytes**, header included
====  ==========================================================================

The device layer checks bytes 2 and word 3 of every instruction file when it
opens a build, and the emulator refuses a stream whose header does not match
its generation or its length (docs/device.md#kernel-builds).
"""

from __future__ import annotations

import numpy as np

#: Byte 2 of header word 0, per NPU generation.
DEVICE_GENERATION = {"npu1": 3, "npu2": 4}

#: The header's length, bytes.
HEADER_BYTES = 16


def header_words(generation: str, columns: int, operations: int, n_bytes: int) -> np.ndarray:
    """The four header words of a stream of ``n_bytes`` bytes for ``generation``.

    Version 0.1 and 6 rows with one memory-tile row, as mlir-aie writes for
    both NPU generations.
    """
    major, minor, rows, memtile_rows = 0, 1, 6, 1
    word0 = (rows << 24) | (DEVICE_GENERATION[generation] << 16) | (minor << 8) | major
    return np.array([word0, (memtile_rows << 8) | columns, operations, n_bytes], dtype=np.uint32)


def generation_of(words: np.ndarray) -> str | None:
    """The NPU generation header byte 2 names, or ``None`` for an unknown value."""
    code = (int(words[0]) >> 16) & 0xFF
    return next((gen for gen, value in DEVICE_GENERATION.items() if value == code), None)


def header_problem(data: bytes | np.ndarray, generation: str) -> str | None:
    """What is wrong with the header of the stream ``data`` for ``generation``, or ``None``.

    Args:
        data: the whole stream (its bytes, or its uint32 words).
        generation: the NPU generation that will run it.
    """
    raw = np.frombuffer(bytes(data) if isinstance(data, bytes) else data.tobytes(), np.uint8)
    if raw.size < HEADER_BYTES or raw.size % 4:
        return f"{raw.size} bytes: too short for the {HEADER_BYTES}-byte header, or not whole words"
    words = raw[:HEADER_BYTES].view("<u4")
    code = (int(words[0]) >> 16) & 0xFF
    if code != DEVICE_GENERATION[generation]:
        named = generation_of(words)
        built_for = f" (built for {named})" if named else ""
        return (
            f"header byte 2 is {code}{built_for}, expected {DEVICE_GENERATION[generation]} "
            f"for {generation}"
        )
    if int(words[3]) != raw.size:
        return f"header word 3 says {int(words[3])} bytes, the stream has {raw.size}"
    return None
