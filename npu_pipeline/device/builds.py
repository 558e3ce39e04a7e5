"""Where a kernel's build files are, and its instruction streams.

On real XRT the xclbin and the instruction files come from the kernel's build
folder; on the emulator they are made from the contract itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npu_pipeline import emulator
from npu_pipeline.contract import KernelContract
from npu_pipeline.errors import ContractError, explain


def build_file(contract: KernelContract, name: str) -> Path:
    """The path of build file ``name`` of ``contract``.

    Raises:
        ContractError: the file does not exist.
    """
    path = Path(contract.source).parent / name
    if not path.is_file():
        raise ContractError(
            explain(
                f"kernel build file {path} does not exist",
                f"the files the contract names beside {contract.source}",
                "Build the kernel (see kernels/<name>/), or use device='emulator'.",
            )
        )
    return path


def instruction_words(
    backend_name: str, contract: KernelContract, block: tuple[int, int, int], generation: str
) -> np.ndarray:
    """The instruction stream of ``block`` as uint32 words: the build's file on XRT,
    the emulator's own stream on the emulator."""
    if backend_name == "emulator":
        return emulator.instructions(contract, block, generation)
    return np.fromfile(build_file(contract, contract.instruction_file(block)), dtype="<u4")


def instruction_count(contract: KernelContract, n_words: int) -> int:
    """The ``n_insts`` kernel argument for a stream of ``n_words`` words, in the contract's unit."""
    return emulator.instruction_count(contract, n_words)
