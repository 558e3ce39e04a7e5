"""The known-answer run every :meth:`NpuDevice.open` makes before it serves anything.

A missing or wrong instruction stream, an instruction count in the unit the
firmware does not expect, or a build made for other shapes can end in
``ERT_CMD_STATE_COMPLETED`` with nothing computed
(docs/hardware-facts.md#kernel-arguments). So the device runs one block of
the smallest legal shape on operands whose exact product is known and
nonzero, and refuses to open with a :class:`DeviceError` that says what to
check when the answer is wrong. :func:`try_other_count_unit` is what a
diagnosis (``npu-pipeline doctor``) calls next: the same check with ``n_insts``
counted in the other unit.

The operands are rank one, so the expected product costs ``m * n``
operations, not a matmul: ``A[i, p] = alpha_i`` and ``B[p, j] = sigma_p *
beta_j``, hence ``C[i, j] = alpha_i * beta_j * sum(sigma)``. Every
``alpha_i`` and ``beta_j`` is nonzero and ``sigma`` depends on ``p``, so an
output of zeros, a product over the wrong K, or swapped rows or columns all
differ from it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from npu_pipeline.contract import COUNT_UNITS, KernelContract
from npu_pipeline.errors import DeviceError, NpuPipelineError, explain
from npu_pipeline.reference import srs

if TYPE_CHECKING:
    from npu_pipeline.device.npu import NpuDevice

#: Runs the known-answer check starts (an emulated device's planned faults
#: are numbered after them).
KNOWN_ANSWER_RUNS = 1


def block_of(contract: KernelContract, generation: str) -> tuple[int, int, int]:
    """The block the check runs: the smallest legal one (the block granularity)."""
    return contract.target(generation).block_granularity


def operands(block: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The known-answer operands of ``block`` (m, k, n): int8 A (m x k) and B (k x n)."""
    m, k, n = block
    i, p, j = np.arange(m), np.arange(k), np.arange(n)
    alpha = (1 + (37 * i) % 127) * np.where(i % 2, -1, 1)  # in [-127, 127], never 0
    beta = (1 + (11 * j) % 63) * np.where(j % 3, 1, -1)  # in [-63, 63], never 0
    sigma = 1 + (p % 3 == 0)  # 1 or 2: |sigma * beta| <= 126
    a = np.repeat(alpha[:, None], k, axis=1).astype(np.int8)
    b = (sigma[:, None] * beta[None, :]).astype(np.int8)
    return a, b


def expected(contract: KernelContract, block: tuple[int, int, int]) -> np.ndarray:
    """What the contract's kernel must return for :func:`operands` of ``block``."""
    a, b = operands(block)
    exact = np.outer(a[:, 0].astype(np.int64), b[:, :].astype(np.int64).sum(axis=0))
    out = contract.output
    if out.dtype == "int32" and out.shift == 0:
        return exact.astype(np.int32)
    return srs(exact, out.shift, out.rounding, out.saturation).astype(out.dtype)


def _tiled(x: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    """``x`` in the ``tile_major`` layout: tiles row-major, each tile row-major."""
    rows, cols = x.shape
    tr, tc = tile
    return x.reshape(rows // tr, tr, cols // tc, tc).transpose(0, 2, 1, 3).ravel()


def _untiled(flat: np.ndarray, shape: tuple[int, int], tile: tuple[int, int]) -> np.ndarray:
    rows, cols = shape
    tr, tc = tile
    return flat.reshape(rows // tr, cols // tc, tr, tc).transpose(0, 2, 1, 3).reshape(shape)


def run(device: NpuDevice) -> tuple[np.ndarray, np.ndarray]:
    """Run the known-answer block once on ``device``: (what it returned, what it should).

    Raises:
        DeviceError: the run itself failed.
    """
    contract, generation = device.contract, device.info.generation
    block = block_of(contract, generation)
    m, k, n = block
    a, b = operands(block)
    r, s, t = contract.target(generation).micro_tile
    tiles = {"A": (r, s), "B": (s, t), "C": (r, t)}
    if contract.layout == "row_major":
        tiles = {"A": (m, k), "B": (k, n), "C": (m, n)}
    data = {"A": _tiled(a, tiles["A"]), "B": _tiled(b, tiles["B"])}
    data["AB"] = np.concatenate([data["A"], data["B"]])
    slot = device.allocate_slot(block)
    try:
        for spec in contract.input_buffers:
            values = data[spec.operand]
            slot.view(spec.name, np.int8)[: values.size] = values
        device.wait(device.start(slot, block))
        out = contract.output_buffer
        got = slot.view(out.name)[: m * n].copy()
    finally:
        device.free_slot(slot)
    return _untiled(got, (m, n), tiles["C"]), expected(contract, block)


def check(device: NpuDevice) -> float:
    """Run the known-answer block; return its wall seconds.

    Raises:
        DeviceError: the answer is wrong (saying what to check), or the run failed.
    """
    began = time.perf_counter()
    got, want = run(device)
    if np.array_equal(got, want):
        return time.perf_counter() - began
    contract, info = device.contract, device.info
    block = block_of(contract, info.generation)
    wrong = int(np.count_nonzero(got != want))
    symptom = (
        "completed with its output all zero"
        if not got.any()
        else f"completed with {wrong} of {want.size} values wrong"
    )
    other = next(u for u in COUNT_UNITS if u != contract.instr_count_unit)
    build = device.build
    raise DeviceError(
        explain(
            f"the known-answer run of {contract.name!r} (block {block}) on {info.name!r} "
            f"({info.backend}) {symptom}: the kernel did not compute its product",
            "the exact product of the known operands (docs/device.md#the-known-answer-run)",
            f"Check the build and the instruction count. The build: the xclbin and the "
            f"insts files must come from one design.py build for {info.generation} "
            f"(`{build.make_command(block)}`; files from {build.origin}). The count: "
            f"kernel.json says n_insts is in {contract.instr_count_unit}; if your firmware "
            f"reads {other}, set instructions.count_unit to {other!r} "
            "(`npu-pipeline doctor` tries both).",
        )
    )


def try_other_count_unit(contract: KernelContract, **open_options: Any) -> str | None:
    """Open a device with ``n_insts`` counted in the other unit; the unit if its check passes.

    For a diagnosis after :func:`check` failed: ``open_options`` are those of
    :meth:`NpuDevice.open`. Returns the other unit (``"words"`` or
    ``"bytes"``) when its known-answer run is right, else ``None`` (the
    count unit is not the problem).
    """
    from npu_pipeline.device.npu import NpuDevice

    other = next(u for u in COUNT_UNITS if u != contract.instr_count_unit)
    try:
        NpuDevice.open(contract.with_count_unit(other), **open_options).close()
    except NpuPipelineError:
        return None
    return other
