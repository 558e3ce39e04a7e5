"""The emulated instruction stream: the block shape travels in insts.bin, as on hardware.

On the NPU, the GEMM shape is compiled into the instruction stream the host
loads into the instruction BO (docs/hardware-facts.md#one-kernel-build-serves-one-block-shape).
The emulator keeps that contract: a run learns its block shape only by
reading the instruction BO's *device copy*, so a missing ``sync(TO_DEVICE)``
of the instructions fails as it would on hardware.

Encoding (version 2), little-endian uint32 words. Words 0-3 are the header
mlir-aie writes in front of every instruction stream (:mod:`npu_pipeline.insts`:
byte 2 of word 0 the device generation, word 3 the stream's size in bytes),
so the device layer's header checks hold for emulated builds too:

=====  ==================  ==================================================
word   field               value
=====  ==================  ==================================================
0-3    header              generation 3 (npu1) or 4 (npu2); one operation;
                           size ``4 * WORDS`` bytes
4      magic               ``0x4555504E`` (the bytes ``b"NPUE"``)
5      version             2
6      semantic            0 = ``block_gemm``, 1 = ``tile_pair``
7-9    m, k, n             the block shape, elements
10     layout              0 = ``row_major``, 1 = ``tile_major``
11     checksum            ``zlib.crc32`` of words 0-10 as bytes
=====  ==================  ==================================================

The micro-tile of a ``tile_major`` layout is the contract's micro-tile for the
encoded generation, so it is not repeated in the stream.

How the emulated firmware reads a run's instruction-count argument is
:class:`Firmware`: which unit it expects, and what a count that does not
match the stream does (the run completes and computes nothing, as a wrong
instruction stream can on hardware: docs/hardware-facts.md#kernel-arguments).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np

from npu_pipeline import insts
from npu_pipeline.contract import COUNT_UNITS, LAYOUTS, SEMANTICS, KernelContract
from npu_pipeline.errors import DeviceError, explain

MAGIC = int.from_bytes(b"NPUE", "little")
VERSION = 2
WORDS = 12
#: Columns written into the header (informative only; nothing checks them).
_COLUMNS = {"npu1": 4, "npu2": 8}


class MalformedInstructions(ValueError):
    """The instruction stream cannot be decoded; the run ends in ERT_CMD_STATE_ERROR."""


@dataclass(frozen=True)
class InstructionStream:
    """What one decoded instruction stream asks the device to do.

    Attributes:
        semantic: ``"block_gemm"`` or ``"tile_pair"``.
        generation: NPU generation the stream was built for (its header byte 2).
        block: (m, k, n) in elements.
        layout: ``"row_major"`` or ``"tile_major"``.
        zeros: the firmware read the stream with a count that does not match
            it: the run completes without computing, its output all zero.
    """

    semantic: str
    generation: str
    block: tuple[int, int, int]
    layout: str
    zeros: bool = False


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
    header = insts.header_words(generation, _COLUMNS[generation], 1, 4 * WORDS)
    body = [
        MAGIC,
        VERSION,
        SEMANTICS.index(contract.semantic),
        m,
        k,
        n,
        LAYOUTS.index(contract.layout),
        0,
    ]
    words = np.concatenate([header, np.array(body, dtype=np.uint32)])
    words[WORDS - 1] = _checksum(words)
    return words


def decode(words: np.ndarray) -> InstructionStream:
    """Decode an emulated instruction stream.

    Raises:
        MalformedInstructions: wrong length, header (unknown generation, a size
            that is not the stream's), checksum, magic, version or field.
    """
    if len(words) != WORDS:
        raise MalformedInstructions(f"{len(words)} words, expected {WORDS}")
    generation = insts.generation_of(words)
    if generation is None:
        raise MalformedInstructions(f"header byte 2 is {(int(words[0]) >> 16) & 0xFF}")
    if int(words[3]) != 4 * WORDS:
        raise MalformedInstructions(f"header size {int(words[3])} bytes, expected {4 * WORDS}")
    if int(words[WORDS - 1]) != _checksum(words):
        raise MalformedInstructions("checksum mismatch")
    if int(words[4]) != MAGIC or int(words[5]) != VERSION:
        raise MalformedInstructions(
            f"magic/version {int(words[4]):#x}/{int(words[5])}, expected {MAGIC:#x}/{VERSION}"
        )
    semantic, m, k, n, layout = (int(w) for w in words[6:11])
    if semantic >= len(SEMANTICS) or layout >= len(LAYOUTS):
        raise MalformedInstructions(f"semantic {semantic} or layout {layout} unknown")
    return InstructionStream(
        semantic=SEMANTICS[semantic],
        generation=generation,
        block=(m, k, n),
        layout=LAYOUTS[layout],
    )


@dataclass(frozen=True)
class Firmware:
    """How the emulated NPU firmware reads a run's instructions.

    Attributes:
        insts_unit: the unit it expects ``n_insts`` in: ``"words"`` (the
            shipped contracts' unit) or ``"bytes"``. A host that counts in the
            other unit passes a count that does not match the stream.
        zeros: every run completes without computing, its output all zero
            (what a missing or wrong instruction stream can do on hardware).
    """

    insts_unit: str = "words"
    zeros: bool = False

    def __post_init__(self) -> None:
        if self.insts_unit not in COUNT_UNITS:
            raise DeviceError(
                explain(
                    f"insts_unit={self.insts_unit!r}",
                    f"one of {COUNT_UNITS}",
                    "Pick the unit the emulated firmware reads n_insts in.",
                )
            )

    def stream_bytes(self, n_insts: int) -> int:
        """The bytes of instructions the firmware executes for count ``n_insts``."""
        return 4 * n_insts if self.insts_unit == "words" else n_insts

    def read(self, device: np.ndarray, n_insts: int, generation: str) -> InstructionStream | None:
        """The stream a run executes, or ``None`` if the firmware refuses it (ERROR).

        Args:
            device: uint8 device copy of the instruction BO from the run's offset.
            n_insts: the run's instruction-count argument.
            generation: the device's NPU generation.

        A stream that does not decode, or whose header names another
        generation, is refused. A count that covers more or less than the
        stream's header says (the wrong unit, or a wrong length) gives a run
        that completes with nothing computed, as does ``zeros``.
        """
        try:
            stream = decode(device[: 4 * WORDS].view("<u4"))
        except (MalformedInstructions, ValueError):
            return None
        if stream.generation != generation:
            return None
        if self.zeros or self.stream_bytes(n_insts) != 4 * WORDS:
            return dataclasses.replace(stream, zeros=True)
        return stream
