"""Kernel contracts: what one kernel build computes, read from ``kernels/<name>/kernel.json``.

A :class:`KernelContract` is the one place that knows a kernel's shape: block
geometry and granularity per NPU generation, dtypes, buffer layout, argument
order and group ids, output rounding, and where its instructions come from.
The planner sizes batches from it, the packing kernels lay data out by it, the
device layer builds kernel arguments from it, and the emulator executes it.

Contracts are loaded with :func:`load_contract` by name (the builds shipped in
the wheel) or by path (your own build). Loading validates every field and
raises :class:`~npu_pipeline.errors.ContractError` naming the first bad one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from npu_pipeline.errors import ContractError, explain
from npu_pipeline.reference import Rounding, Saturation

#: Data memory of one AIE-ML compute tile, bytes
#: (docs/hardware-facts.md#on-chip-memory-and-shim-dma-limits).
CORE_DATA_MEMORY_BYTES = 64 * 1024

#: Shim DMA descriptor limits: the two innermost sizes are at most 1023, the
#: outer repeat at most 64 (docs/hardware-facts.md#on-chip-memory-and-shim-dma-limits).
SHIM_MAX_INNER = 1023
SHIM_MAX_REPEAT = 64

SEMANTICS = ("block_gemm", "tile_pair")
COUNT_UNITS = ("words", "bytes")

#: Where a generation's build lives beside ``kernel.json`` unless it says otherwise.
DEFAULT_BUILD_DIR = "build/{generation}"
LAYOUTS = ("row_major", "tile_major")
ROLES = ("input", "output")


@dataclass(frozen=True)
class BufferSpec:
    """One data buffer (BO) of a kernel invocation.

    Attributes:
        name: the argument name used in :attr:`KernelContract.arguments`.
        group_id: the kernel argument's memory group (``kernel.group_id``).
        dtype: element type, a numpy dtype name (``"int8"``, ``"int32"``).
        role: ``"input"`` (host -> NPU) or ``"output"`` (NPU -> host).
        operand: what the buffer holds: ``"A"``, ``"B"``, ``"C"``, or ``"AB"``
            (an A tile followed by a B tile, for ``tile_pair`` kernels).
    """

    name: str
    group_id: int
    dtype: str
    role: str
    operand: str

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class TargetSpec:
    """Geometry of a kernel build for one NPU generation (``npu1`` or ``npu2``).

    All shapes are (m, k, n) in elements: a block computes an (m x k) @ (k x n)
    product.

    Attributes:
        block_granularity: block dimensions must be multiples of this. For
            the whole-array GEMM design it is coarser than the micro-tile: M
            steps by 4 core rows x core tile m (each column's memory tile joins
            its 4 rows' outputs), N by columns x core tile n (every column
            gets the same rows of A). See kernels/gemm_i8_i32/README.md.
        micro_tile: the int8 ``aie::mmul`` micro-tile (r, s, t): the tile
            shape of the ``tile_major`` layout.
        core_tile: the per-core tile the build was compiled for; its
            double-buffered operands must fit a core's 64 KB data memory.
        max_block: the largest block one invocation accepts.
    """

    block_granularity: tuple[int, int, int]
    micro_tile: tuple[int, int, int]
    core_tile: tuple[int, int, int]
    max_block: tuple[int, int, int]

    def core_memory_bytes(self, in_itemsize: int, acc_itemsize: int) -> int:
        """Data memory the core tile needs with double buffering, bytes.

        ``2 * (m*k + k*n) * in_itemsize + 2 * m*n * acc_itemsize``
        (about 48 KB at m=k=n=64 for i8 in, i32 out;
        docs/hardware-facts.md#on-chip-memory-and-shim-dma-limits).
        """
        m, k, n = self.core_tile
        return 2 * (m * k + k * n) * in_itemsize + 2 * m * n * acc_itemsize


@dataclass(frozen=True)
class OutputSpec:
    """How the kernel narrows its int32 accumulators into the output buffer.

    ``dtype`` int32 with ``shift`` 0 means the exact product is returned.
    """

    dtype: str
    shift: int
    rounding: Rounding
    saturation: Saturation


@dataclass(frozen=True)
class KernelContract:
    """What one kernel build computes and how the host must call it.

    Attributes:
        name: contract name (folder name under ``kernels/``).
        description: one paragraph for people.
        semantic: ``"block_gemm"`` (one block product per run, buffers A, B, C)
            or ``"tile_pair"`` (one 16x16 tile pair per run, buffers in, out).
        kernel_name: the kernel's name inside the xclbin (``"MLIR_AIE"``).
        opcode: first scalar argument of every run (3 for mlir-aie designs).
        xclbin: file name of the compiled design, relative to the build folder.
        instr_group_id: memory group of the instruction BO.
        instr_file: file name pattern of the instruction stream; ``{m}``,
            ``{k}``, ``{n}`` are replaced by the block shape.
        instr_count_unit: unit of the instruction-count argument ``n_insts``:
            ``"words"`` (the C++ test programs and older mlir-aie host code pass
            ``len(insts)``) or ``"bytes"`` (the newest mlir-aie host runtime
            passes ``insts.nbytes``); which one the firmware expects is
            unsettled (docs/hardware-facts.md#kernel-arguments), so it is the
            build's to state (docs/contracts.md#instructions).
        arguments: the run's argument order, e.g.
            ``("opcode", "instr", "n_insts", "a", "b", "c")``.
        buffers: the data buffers, in argument order.
        layout: how blocks are laid out in their buffers: ``"row_major"`` (the
            NPU's DMA tiles them itself) or ``"tile_major"`` (pre-tiled into
            micro-tiles, tiles row-major, each tile row-major).
        output: the output narrowing.
        targets: geometry per NPU generation, as ``(generation, TargetSpec)`` pairs.
        build_dir: where the build of one generation lives, relative to the
            folder of ``kernel.json``; ``{generation}`` is replaced by
            ``npu1``/``npu2`` (default ``build/{generation}``, what the
            kernel's Makefile writes; docs/device.md#kernel-builds).
        source: the file the contract was read from.
    """

    name: str
    description: str
    semantic: str
    kernel_name: str
    opcode: int
    xclbin: str
    instr_group_id: int
    instr_file: str
    instr_count_unit: str
    arguments: tuple[str, ...]
    buffers: tuple[BufferSpec, ...]
    layout: str
    output: OutputSpec
    targets: tuple[tuple[str, TargetSpec], ...]
    build_dir: str = DEFAULT_BUILD_DIR
    source: str = ""

    def target(self, generation: str) -> TargetSpec:
        """The geometry for ``generation`` (``"npu1"`` or ``"npu2"``)."""
        for name, spec in self.targets:
            if name == generation:
                return spec
        known = ", ".join(name for name, _ in self.targets)
        raise ContractError(
            explain(
                f"contract {self.name!r} has no build for NPU generation {generation!r}",
                f"one of: {known}",
                "Pick a profile of a supported generation, or add a target to kernel.json.",
            )
        )

    def buffer(self, name: str) -> BufferSpec:
        """The buffer spec called ``name``."""
        for spec in self.buffers:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def input_buffers(self) -> tuple[BufferSpec, ...]:
        """Buffers the host writes before a run."""
        return tuple(b for b in self.buffers if b.role == "input")

    @property
    def output_buffer(self) -> BufferSpec:
        """The buffer the host reads after a run."""
        return next(b for b in self.buffers if b.role == "output")

    def run_buffer_bytes(self, block: tuple[int, int, int]) -> dict[str, int]:
        """Bytes each buffer of one run needs for a (padded) block shape (m, k, n)."""
        m, k, n = block
        elements = {"A": m * k, "B": k * n, "C": m * n, "AB": m * k + k * n}
        return {b.name: elements[b.operand] * b.itemsize for b in self.buffers}

    def instruction_count(self, n_bytes: int) -> int:
        """The ``n_insts`` argument for an instruction stream of ``n_bytes`` bytes.

        Words (``n_bytes // 4``) or bytes, as :attr:`instr_count_unit` says.
        """
        return n_bytes // 4 if self.instr_count_unit == "words" else n_bytes

    def with_count_unit(self, unit: str) -> KernelContract:
        """This contract with ``n_insts`` counted in ``unit`` (``"words"`` or ``"bytes"``).

        For trying the other convention when a known-answer run fails
        (:func:`npu_pipeline.device.known_answer.try_other_count_unit`).
        """
        if unit not in COUNT_UNITS:
            raise ContractError(
                explain(f"count unit {unit!r}", f"one of {COUNT_UNITS}", "Pick one of those.")
            )
        return dataclasses.replace(self, instr_count_unit=unit)

    def build_folder(self, generation: str) -> Path:
        """The folder of the build for ``generation`` in the default layout.

        ``build_dir`` relative to the folder of ``kernel.json``, e.g.
        ``kernels/gemm_i8_i32/build/npu1``.
        """
        return Path(self.source).parent / self.build_dir.format(generation=generation)

    def instruction_file(self, block: tuple[int, int, int]) -> str:
        """File name of the instruction stream for ``block`` (m, k, n)."""
        m, k, n = block
        return self.instr_file.format(m=m, k=k, n=n)

    def check_block(self, block: tuple[int, int, int], generation: str) -> None:
        """Raise :class:`ContractError` unless ``block`` is a legal padded block shape."""
        spec = self.target(generation)
        for axis, size, step, limit in zip(
            "mkn", block, spec.block_granularity, spec.max_block, strict=True
        ):
            if size < step or size % step or size > limit:
                raise ContractError(
                    explain(
                        f"block {axis}={size} is illegal for contract {self.name!r} "
                        f"on {generation}",
                        f"a multiple of {step} between {step} and {limit}",
                        "Round the block up to the granularity, or split it.",
                    )
                )
        dma_problem = shim_dma_problem(block, spec.core_tile, self)
        if dma_problem:
            raise ContractError(
                explain(
                    f"block {block} cannot be moved by the shim DMA: {dma_problem}",
                    f"inner DMA sizes <= {SHIM_MAX_INNER} and repeat <= {SHIM_MAX_REPEAT}",
                    "Use a smaller block.",
                )
            )


def shim_dma_problem(
    block: tuple[int, int, int], core_tile: tuple[int, int, int], contract: KernelContract
) -> str | None:
    """Why the shim DMA cannot move a block's operands, or ``None`` if it can.

    Model (an assumption, following the mlir-aie GEMM designs): each operand
    of ``rows x cols`` elements moves as core-tile-sized pieces, with a 4-D
    descriptor ``[rows/tile_rows (repeat), cols/tile_cols, tile_rows,
    tile_cols in 32-bit words]``. The two innermost sizes must be <= 1023 and
    the repeat <= 64 (docs/hardware-facts.md#on-chip-memory-and-shim-dma-limits).
    """
    m, k, n = block
    cm, ck, cn = core_tile
    operands = {"A": (m, k, cm, ck), "B": (k, n, ck, cn), "C": (m, n, cm, cn)}
    for spec in contract.buffers:
        if spec.operand not in operands:
            continue  # tile-pair buffers are one contiguous transfer per run
        rows, cols, tile_rows, tile_cols = operands[spec.operand]
        tile_rows, tile_cols = min(tile_rows, rows), min(tile_cols, cols)
        words = -(-tile_cols * spec.itemsize // 4)
        repeat = -(-rows // tile_rows)
        if words > SHIM_MAX_INNER or tile_rows > SHIM_MAX_INNER:
            return f"operand {spec.operand} tile {tile_rows}x{tile_cols} exceeds the inner sizes"
        if repeat > SHIM_MAX_REPEAT:
            return f"operand {spec.operand} needs {repeat} row repeats of {tile_rows}"
    return None


# ---------------------------------------------------------------------------
# Loading and validation


def _require(raw: dict[str, Any], field: str, kind: type | tuple[type, ...], where: str) -> Any:
    if field not in raw:
        raise ContractError(
            explain(
                f"{where}: field {field!r} is missing",
                f"a {getattr(kind, '__name__', kind)} value",
                "Add the field to kernel.json (see kernels/gemm_i8_i32/kernel.json).",
            )
        )
    value = raw[field]
    # bool is an int in Python; a contract never means True when it says 1.
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ContractError(
            explain(
                f"{where}: field {field!r} is {value!r} ({type(value).__name__})",
                f"a {getattr(kind, '__name__', kind)}",
                "Fix the field's type in kernel.json.",
            )
        )
    return value


def _choice(raw: dict[str, Any], field: str, choices: tuple[str, ...], where: str) -> str:
    value = _require(raw, field, str, where)
    if value not in choices:
        raise ContractError(
            explain(
                f"{where}: field {field!r} is {value!r}",
                f"one of {', '.join(choices)}",
                "Fix the value in kernel.json.",
            )
        )
    return value


def _shape(raw: dict[str, Any], field: str, where: str) -> tuple[int, int, int]:
    value = _require(raw, field, list, where)
    if len(value) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ContractError(
            explain(
                f"{where}: field {field!r} is {value!r}",
                "three positive integers [m, k, n]",
                "Fix the shape in kernel.json.",
            )
        )
    if min(value) < 1:
        raise ContractError(
            explain(
                f"{where}: field {field!r} is {value!r}",
                "three positive integers [m, k, n]",
                "Fix the shape in kernel.json.",
            )
        )
    return (value[0], value[1], value[2])


def _parse_buffer(raw: Any, where: str) -> BufferSpec:
    if not isinstance(raw, dict):
        raise ContractError(explain(f"{where} is {raw!r}", "an object", "Fix kernel.json."))
    dtype = _choice(raw, "dtype", ("int8", "int16", "int32"), where)
    return BufferSpec(
        name=_require(raw, "name", str, where),
        group_id=_require(raw, "group_id", int, where),
        dtype=dtype,
        role=_choice(raw, "role", ROLES, where),
        operand=_choice(raw, "operand", ("A", "B", "C", "AB"), where),
    )


def _parse_target(raw: Any, where: str) -> TargetSpec:
    if not isinstance(raw, dict):
        raise ContractError(explain(f"{where} is {raw!r}", "an object", "Fix kernel.json."))
    spec = TargetSpec(
        block_granularity=_shape(raw, "block_granularity", where),
        micro_tile=_shape(raw, "micro_tile", where),
        core_tile=_shape(raw, "core_tile", where),
        max_block=_shape(raw, "max_block", where),
    )
    for axis, step, micro, core, big in zip(
        "mkn", spec.block_granularity, spec.micro_tile, spec.core_tile, spec.max_block, strict=True
    ):
        if core % micro or step % micro or big % step:
            raise ContractError(
                explain(
                    f"{where}: {axis}: core_tile {core}, block_granularity {step} or "
                    f"max_block {big} is off the grid (micro_tile {micro})",
                    "core_tile and block_granularity multiples of micro_tile, and "
                    "max_block a multiple of block_granularity",
                    "Fix the shapes in kernel.json.",
                )
            )
    return spec


def _build_dir(raw: dict[str, Any], where: str) -> str:
    """The optional ``build_dir`` field: a relative path, ``{generation}`` its only field."""
    if "build_dir" not in raw:
        return DEFAULT_BUILD_DIR
    value = _require(raw, "build_dir", str, where)
    try:
        expanded = value.format(generation="npu1")
    except (KeyError, IndexError, ValueError):
        expanded = None
    if expanded is None or not value or Path(expanded).is_absolute():
        raise ContractError(
            explain(
                f"{where}: field 'build_dir' is {value!r}",
                "a relative path whose only {...} field is {generation}, "
                f"e.g. {DEFAULT_BUILD_DIR!r}",
                "Fix build_dir in kernel.json, or give the build folder to "
                "NpuDevice.open(build_dir=...) instead.",
            )
        )
    return value


def parse_contract(raw: dict[str, Any], source: str = "<dict>") -> KernelContract:
    """Validate a decoded ``kernel.json`` and build its :class:`KernelContract`.

    Raises:
        ContractError: naming the first missing or malformed field.
    """
    where = f"contract {source}"
    if not isinstance(raw, dict):
        raise ContractError(explain(f"{where} is not a JSON object", "an object", "Fix the file."))
    instr = _require(raw, "instructions", dict, where)
    buffers_raw = _require(raw, "buffers", list, where)
    buffers = tuple(_parse_buffer(b, f"{where} buffers[{i}]") for i, b in enumerate(buffers_raw))
    output_raw = _require(raw, "output", dict, where)
    try:
        output = OutputSpec(
            dtype=_choice(output_raw, "dtype", ("int8", "int32"), f"{where} output"),
            shift=_require(output_raw, "shift", int, f"{where} output"),
            rounding=Rounding(_require(output_raw, "rounding", str, f"{where} output")),
            saturation=Saturation(_require(output_raw, "saturation", str, f"{where} output")),
        )
    except ValueError as error:
        if isinstance(error, ContractError):
            raise
        raise ContractError(
            explain(
                f"{where} output: {error}",
                f"rounding in {[r.value for r in Rounding]}, "
                f"saturation in {[s.value for s in Saturation]}",
                "Fix the output section of kernel.json.",
            )
        ) from None
    targets_raw = _require(raw, "targets", dict, where)
    targets = tuple(
        (gen, _parse_target(spec, f"{where} targets.{gen}")) for gen, spec in targets_raw.items()
    )
    contract = KernelContract(
        name=_require(raw, "name", str, where),
        description=_require(raw, "description", str, where),
        semantic=_choice(raw, "semantic", SEMANTICS, where),
        kernel_name=_require(raw, "kernel_name", str, where),
        opcode=_require(raw, "opcode", int, where),
        xclbin=_require(raw, "xclbin", str, where),
        instr_group_id=_require(instr, "group_id", int, f"{where} instructions"),
        instr_file=_require(instr, "file", str, f"{where} instructions"),
        instr_count_unit=_choice(instr, "count_unit", COUNT_UNITS, f"{where} instructions"),
        arguments=tuple(_require(raw, "arguments", list, where)),
        buffers=buffers,
        layout=_choice(raw, "layout", LAYOUTS, where),
        output=output,
        targets=targets,
        build_dir=_build_dir(raw, where),
        source=source,
    )
    _check_consistency(contract, where)
    return contract


def _check_consistency(contract: KernelContract, where: str) -> None:
    """Cross-field rules: argument list, group ids, roles, on-chip memory."""
    names = [b.name for b in contract.buffers]
    expected_args = ("opcode", "instr", "n_insts", *names)
    if contract.arguments != expected_args:
        raise ContractError(
            explain(
                f"{where}: field 'arguments' is {list(contract.arguments)}",
                f"{list(expected_args)} (opcode, instruction BO, count, then the buffers in order)",
                "List the arguments in the order the kernel takes them.",
            )
        )
    groups = [contract.instr_group_id] + [b.group_id for b in contract.buffers]
    if len(set(groups)) != len(groups):
        raise ContractError(
            explain(
                f"{where}: group ids {groups} repeat",
                "one distinct group id per BO argument",
                "Fix the group_id fields.",
            )
        )
    # A run takes at most 5 data BOs (docs/hardware-facts.md#kernel-arguments).
    if len(contract.buffers) > 5 or sum(b.role == "output" for b in contract.buffers) != 1:
        raise ContractError(
            explain(
                f"{where}: {len(contract.buffers)} buffers with "
                f"{sum(b.role == 'output' for b in contract.buffers)} outputs",
                "at most 5 data buffers, exactly one of them an output",
                "Fix the buffers list.",
            )
        )
    operands = sorted(b.operand for b in contract.buffers)
    wanted = {"block_gemm": ["A", "B", "C"], "tile_pair": ["AB", "C"]}[contract.semantic]
    if operands != wanted:
        raise ContractError(
            explain(
                f"{where}: semantic {contract.semantic!r} with buffer operands {operands}",
                f"operands {wanted}",
                "Make the buffers match the semantic.",
            )
        )
    in_size = max(b.itemsize for b in contract.input_buffers)
    for generation, spec in contract.targets:
        need = spec.core_memory_bytes(in_size, 4)
        if need > CORE_DATA_MEMORY_BYTES:
            raise ContractError(
                explain(
                    f"{where}: targets.{generation}.core_tile {spec.core_tile} needs {need} "
                    "bytes of core data memory with double buffering",
                    f"at most {CORE_DATA_MEMORY_BYTES} bytes (64 KB per compute tile)",
                    "Use a smaller core tile; the seed's 64x64 build failed to compile for "
                    "this reason.",
                )
            )
        if contract.semantic == "block_gemm":
            problem = shim_dma_problem(spec.max_block, spec.core_tile, contract)
            if problem:
                raise ContractError(
                    explain(
                        f"{where}: targets.{generation}.max_block {spec.max_block}: {problem}",
                        f"shim DMA inner sizes <= {SHIM_MAX_INNER}, repeat <= {SHIM_MAX_REPEAT}",
                        "Lower max_block.",
                    )
                )


def _packaged_root() -> Path:
    """Folder holding ``<name>/kernel.json``: the installed package, else the source tree."""
    try:
        packaged = Path(str(resources.files("npu_pipeline.kernels")))
    except ModuleNotFoundError:
        packaged = None
    if packaged is not None and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "kernels"


def available_contracts() -> list[str]:
    """Names of the contracts that ship with the library, sorted."""
    root = _packaged_root()
    return sorted(p.parent.name for p in root.glob("*/kernel.json"))


@functools.cache
def load_contract(name_or_path: str | Path) -> KernelContract:
    """Load and validate a contract by shipped name (``"gemm_i8_i32"``) or by path.

    A path may name a ``kernel.json`` file or the folder holding one.

    Raises:
        ContractError: the contract does not exist or is malformed.
    """
    text = str(name_or_path)
    path = Path(text)
    if path.suffix != ".json" and not path.is_dir():
        path = _packaged_root() / text / "kernel.json"
    elif path.is_dir():
        path = path / "kernel.json"
    if not path.is_file():
        raise ContractError(
            explain(
                f"no kernel contract {text!r} (looked for {path})",
                f"a shipped name ({', '.join(available_contracts())}) or a path to a kernel.json",
                "Check the spelling, or pass the path of your own build's kernel.json.",
            )
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ContractError(
            explain(
                f"{path} is not valid JSON ({error})",
                "a JSON object",
                "Fix the syntax.",
            )
        ) from None
    return parse_contract(raw, source=str(path))
