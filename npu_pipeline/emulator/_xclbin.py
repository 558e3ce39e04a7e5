"""``pyxrt.xclbin`` and ``pyxrt.uuid``: an emulated xclbin names a kernel contract.

An emulated xclbin is made from one of:

- an emulated xclbin file, as :func:`write_build` writes it into an
  emulated build folder: a marker line and the path of the ``kernel.json``
  it builds (a real xclbin there is refused: the emulator cannot run one);
- a ``.xclbin`` path that does not exist, whose folder holds the build's
  ``kernel.json`` (its name must be the contract's ``xclbin``);
- the path of a ``kernel.json``;
- a :class:`~npu_pipeline.contract.KernelContract` (in the place of pyxrt's
  ``axlf`` data).
"""

from __future__ import annotations

import os
import uuid as _uuid
from collections.abc import Iterable
from pathlib import Path

from npu_pipeline.contract import KernelContract, load_contract
from npu_pipeline.emulator._compute import check_supported
from npu_pipeline.emulator._instructions import instructions
from npu_pipeline.errors import ContractError, explain

#: First line of an emulated xclbin file; the second is the kernel.json path.
EMULATED_XCLBIN = b"npu_pipeline emulated xclbin\n"


def write_build(
    contract: KernelContract,
    folder: str | os.PathLike[str],
    generation: str = "npu1",
    blocks: Iterable[tuple[int, int, int]] = (),
) -> Path:
    """Write an emulated build of ``contract`` for ``generation`` into ``folder``.

    The same files a real build has, under the contract's names: the xclbin
    (an emulated one, naming the contract's ``kernel.json``) and one
    instruction file per block in ``blocks``. Lets the real-XRT path of host
    code (file lookup, header checks) run on the emulator. Returns the folder.

    Raises:
        ContractError: a block is not legal for the contract on ``generation``.
    """
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    source = Path(contract.source).resolve()
    (path / contract.xclbin).write_bytes(EMULATED_XCLBIN + str(source).encode() + b"\n")
    for block in blocks:
        instructions(contract, tuple(block), generation).tofile(
            path / contract.instruction_file(block)
        )
    return path


def _read_xclbin(path: Path) -> KernelContract:
    """The contract an emulated xclbin file names."""
    data = path.read_bytes()
    if not data.startswith(EMULATED_XCLBIN):
        raise ContractError(
            explain(
                f"{path} is not an emulated xclbin (a real one cannot run on the emulator)",
                "an emulated build, as npu_pipeline.emulator.write_build writes it",
                "Run real builds on real XRT (device='xrt'), or pass the emulator "
                "the contract or its kernel.json.",
            )
        )
    return load_contract(Path(data[len(EMULATED_XCLBIN) :].decode().strip()))


class uuid:
    """An xclbin's UUID."""

    def __init__(self, uuid_str: str) -> None:
        self._value = _uuid.UUID(str(uuid_str))

    def to_string(self) -> str:
        """The UUID as a string."""
        return str(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, uuid) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"uuid({self.to_string()!r})"


class xclbin:
    """An emulated xclbin: the kernel contract it implements."""

    class xclbinkernel:
        """A kernel inside an xclbin."""

        def __init__(self, name: str = "", num_args: int = 0) -> None:
            self._name, self._num_args = name, num_args

        def get_name(self) -> str:
            """The kernel's name (``MLIR_AIE``)."""
            return self._name

        def get_num_args(self) -> int:
            """Number of kernel arguments."""
            return self._num_args

    def __init__(self, source: str | os.PathLike[str] | KernelContract) -> None:
        if isinstance(source, KernelContract):
            self.contract = source
        else:
            path = Path(source)
            if path.suffix == ".json":
                self.contract = load_contract(path)
            elif path.is_file():
                self.contract = _read_xclbin(path)
            else:
                self.contract = load_contract(path.parent / "kernel.json")
                if path.name != self.contract.xclbin:
                    raise ContractError(
                        explain(
                            f"xclbin {path.name!r} is not the build of contract "
                            f"{self.contract.name!r} beside it",
                            f"the contract's xclbin file name {self.contract.xclbin!r}",
                            "Open the xclbin the kernel.json names.",
                        )
                    )
        check_supported(self.contract)
        key = f"npu_pipeline-emulator:{self.contract.name}:{self.contract.source}"
        self._uuid = uuid(str(_uuid.uuid5(_uuid.NAMESPACE_URL, key)))

    def get_kernels(self) -> list[xclbin.xclbinkernel]:
        """The one kernel of the build."""
        return [xclbin.xclbinkernel(self.contract.kernel_name, len(self.contract.arguments))]

    def get_xsa_name(self) -> str:
        """A fixed platform name for emulated builds."""
        return "npu_pipeline_emulated_npu"

    def get_uuid(self) -> uuid:
        """The xclbin's UUID (stable for a contract and its source path)."""
        return self._uuid
