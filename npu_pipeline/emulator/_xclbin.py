"""``pyxrt.xclbin`` and ``pyxrt.uuid``: an emulated xclbin names a kernel contract.

An emulated xclbin is made from one of:

- a ``.xclbin`` path whose folder holds the build's ``kernel.json`` (the
  file itself need not exist; its name must be the contract's ``xclbin``);
- the path of a ``kernel.json``;
- a :class:`~npu_pipeline.contract.KernelContract` (in the place of pyxrt's
  ``axlf`` data).
"""

from __future__ import annotations

import os
import uuid as _uuid
from pathlib import Path

from npu_pipeline.contract import KernelContract, load_contract
from npu_pipeline.emulator._compute import check_supported
from npu_pipeline.errors import ContractError, explain


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
