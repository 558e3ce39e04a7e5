"""Where a kernel's build files are, checking them, and its instruction streams.

On real XRT the xclbin and the instruction files come from the build folder
of the device's generation; on the emulator they are made from the contract
itself. The build folder is, first found first (docs/device.md#kernel-builds):

1. the ``build_dir`` option of :meth:`NpuDevice.open` (``open_pipeline``'s
   ``device_options``);
2. the environment variable :data:`BUILD_DIR_ENV`;
3. the contract's own layout: ``build_dir`` of its ``kernel.json``, by
   default ``build/<generation>`` beside it, which is where the kernel's
   Makefile writes (``kernels/gemm_i8_i32/build/npu1/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npu_pipeline import emulator, insts
from npu_pipeline.contract import KernelContract
from npu_pipeline.errors import ContractError, explain

#: Environment variable naming the build folder when ``build_dir`` is not given.
BUILD_DIR_ENV = "NPU_PIPELINE_BUILD_DIR"


@dataclass(frozen=True)
class KernelBuild:
    """One contract's build for one NPU generation: where its files come from.

    Attributes:
        contract: the kernel contract.
        generation: ``"npu1"`` or ``"npu2"``.
        folder: the build folder, or ``None`` on the emulator (no files).
        origin: how ``folder`` was chosen, for messages.
    """

    contract: KernelContract
    generation: str
    folder: Path | None
    origin: str

    @classmethod
    def locate(
        cls,
        contract: KernelContract,
        generation: str,
        emulated: bool,
        build_dir: str | os.PathLike[str] | None = None,
    ) -> KernelBuild:
        """The build of ``contract`` for ``generation`` (no file is read yet)."""
        if emulated:
            return cls(contract, generation, None, "the emulator (made from the contract)")
        if build_dir is not None:
            return cls(contract, generation, Path(build_dir), "the build_dir option")
        from_env = os.environ.get(BUILD_DIR_ENV)
        if from_env:
            return cls(contract, generation, Path(from_env), f"${BUILD_DIR_ENV}")
        return cls(
            contract, generation, contract.build_folder(generation), "the contract's build_dir"
        )

    def xclbin(self) -> Any:
        """What ``pyxrt.xclbin`` is made from: the file's path, or the contract (emulator)."""
        if self.folder is None:
            return self.contract
        return str(self._file(self.contract.xclbin, "xclbin"))

    def instruction_words(self, block: tuple[int, int, int]) -> np.ndarray:
        """The instruction stream of ``block`` as uint32 words, its header checked.

        Raises:
            ContractError: the file is missing, or its header is wrong.
        """
        if self.folder is None:
            return emulator.instructions(self.contract, block, self.generation)
        path = self._file(self.contract.instruction_file(block), "insts", block)
        data = path.read_bytes()
        self._check_header(path, data)
        return np.frombuffer(data, dtype="<u4").copy()

    def instruction_count(self, words: np.ndarray) -> int:
        """The ``n_insts`` argument for ``words``, in the contract's unit."""
        return self.contract.instruction_count(words.nbytes)

    def check(self, block: tuple[int, int, int]) -> None:
        """The checks made when a device opens: the xclbin and ``block``'s
        instruction file exist, and every instruction file of the folder has
        the header of this generation and of its own size.

        Raises:
            ContractError: naming the file and the make command that builds it.
        """
        if self.folder is None:
            return
        self._file(self.contract.xclbin, "xclbin")
        self._file(self.contract.instruction_file(block), "insts", block)
        pattern = self.contract.instr_file.format(m="*", k="*", n="*")
        for path in sorted(self.folder.glob(pattern)):
            self._check_header(path, path.read_bytes())

    # -- messages ----------------------------------------------------------------

    def make_command(self, block: tuple[int, int, int] | None = None) -> str:
        """The command that builds this generation's files (``block``'s instructions).

        Run in the kernel's folder beside its ``kernel.json`` when that has the
        Makefile (a source checkout), else in ``kernels/<name>`` of a checkout
        (an installed package carries the contracts only).
        """
        kernel_dir: Path | str = Path(self.contract.source).parent
        if not (kernel_dir / "Makefile").is_file():
            kernel_dir = f"kernels/{self.contract.name}"
        shapes = f' SHAPES="{"x".join(map(str, block))}"' if block else ""
        target = " insts" if block else ""
        return f"make -C {kernel_dir} GEN={self.generation}{shapes}{target}"

    def _file(self, name: str, kind: str, block: tuple[int, int, int] | None = None) -> Path:
        path = Path(self.folder or ".") / name
        if not path.is_file():
            what = f"the instructions of block {block}" if block else "the xclbin"
            raise ContractError(
                explain(
                    f"kernel build file {path} does not exist ({what} of "
                    f"{self.contract.name!r} for {self.generation}; the build folder "
                    f"came from {self.origin})",
                    f"the file {name} in the build folder",
                    f"Build it with `{self.make_command(block if kind == 'insts' else None)}` "
                    f"(kernels/{self.contract.name}/README.md), point NpuDevice.open("
                    f"build_dir=...) or ${BUILD_DIR_ENV} at your build folder, or use "
                    "device='emulator'.",
                )
            )
        return path

    def _check_header(self, path: Path, data: bytes) -> None:
        problem = insts.header_problem(data, self.generation)
        if problem:
            raise ContractError(
                explain(
                    f"instruction file {path}: {problem}",
                    f"the mlir-aie header of a {self.generation} stream: byte 2 "
                    f"{insts.DEVICE_GENERATION[self.generation]}, word 3 the file's size "
                    "in bytes (docs/device.md#kernel-builds)",
                    f"Rebuild it for this device with `{self.make_command()}`; a file "
                    "built for the other generation, or cut short, cannot run here.",
                )
            )
