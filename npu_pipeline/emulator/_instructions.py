"""The emulated instruction stream: the block shape travels in insts.bin, as on hardware.

On the NPU, the GEMM shape is compiled into the instruction stream the host
loads into the instruction BO (docs/hardware-facts.md#one-kernel-build-serves-one-block-shape).
The emulator keeps
that contract: a run learns its block shape only by reading the instruction
BO's *device copy*, so a missing ``sync(TO_DEVICE)`` of the instructions
fails as it would on hardware.

Encoding (version 1), little-endian uint32 words:

====  ==================  ==================================================
word  field               value
====  ==================  ==================================================
0     magic               ``0x4555504E`` (the bytes ``b"NPUE"``)
1     version             1
2     semantic            0 = ``block_gemm``, 1 = ``tile_pair``
3     generation          1 = ``npu1``, 2 = ``npu2``
4-6   m, k, n             the block shape, elements
7     layout              0 = ``row_major``, 1 = ``tile_major``
8     checksum            ``zlib.crc32`` of words 0-7 as bytes
====  ==================  ==================================================

The micro-tile of a ``tile_major`` layout is the contract's micro-tile for the
encoded generation, so it is not repeated in the stream.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from npu_pipeline.contract import LAYOUTS, SEMANTICS, KernelContract

MAGIC = int.from_bytes(b"NPUE", "little")
VERSION = 1
GENERATIONS = ("npu1", "npu2")
WORDS = 9


class MalformedInstructions(ValueError):
    """The instruction stream cannot be decoded; the run ends in ERT_CMD_STATE_ERROR."""


@dataclass(frozen=True)
class InstructionStream:
    """What one decoded instruction stream asks the device to do.

    Attributes:
        semantic: ``"block_gemm"`` or ``"tile_pair"``.
        generation: NPU generation the stream was built for.
        block: (m, k, n) in elements.
        layout: ``"row_major"`` or ``"tile_major"``.
    """

    semantic: str
    generation: str
    block: tuple[int, int, int]
    layout: str


def _checksum(words: np.ndarray) -> int:
    return zlib.crc32(words[: WORDS - 1].astype("<u4").tobytes())


def instructions(
    contract: KernelContract, block: tuple[int, int, int], generation: str = "npu1"
) -> np.ndarray:
    """The emulated insts.bin for one block shape, as uint32 words.

    Raises:
        ContractError: ``block`` is not a legal block of ``contract`` on ``generation``.
    """
    contract.check_block(block, generation)
    m, k, n = block
    words = np.array(
        [
            MAGIC,
            VERSION,
            SEMANTICS.index(contract.semantic),
            GENERATIONS.index(generation) + 1,
            m,
            k,
            n,
            LAYOUTS.index(contract.layout),
            0,
        ],
        dtype=np.uint32,
    )
    words[WORDS - 1] = _checksum(words)
    return words


def instruction_count(contract: KernelContract, n_words: int) -> int:
    """The ``n_insts`` kernel argument for a stream of ``n_words`` words.

    In the contract's unit (words in the C++ examples, bytes in one newer Python
    runtime: docs/hardware-facts.md#kernel-arguments).
    """
    return n_words if contract.instr_count_unit == "words" else 4 * n_words


def decode(words: np.ndarray) -> InstructionStream:
    """Decode an emulated instruction stream.

    Raises:
        MalformedInstructions: wrong length, magic, version, checksum or field.
    """
    if len(words) != WORDS:
        raise MalformedInstructions(f"{len(words)} words, expected {WORDS}")
    if int(words[0]) != MAGIC or int(words[1]) != VERSION:
        raise MalformedInstructions(
            f"magic/version {int(words[0]):#x}/{int(words[1])}, expected {MAGIC:#x}/{VERSION}"
        )
    if int(words[WORDS - 1]) != _checksum(words):
        raise MalformedInstructions("checksum mismatch")
    semantic, generation, m, k, n, layout = (int(w) for w in words[2:8])
    if semantic >= len(SEMANTICS) or not 1 <= generation <= len(GENERATIONS):
        raise MalformedInstructions(f"semantic {semantic} or generation {generation} unknown")
    if layout >= len(LAYOUTS):
        raise MalformedInstructions(f"layout {layout} unknown")
    return InstructionStream(
        semantic=SEMANTICS[semantic],
        generation=GENERATIONS[generation - 1],
        block=(m, k, n),
        layout=LAYOUTS[layout],
    )
