"""IRON design of the ``gemm_i8_i32`` block GEMM for Ryzen AI NPUs (npu1 and npu2).

NOT COMPILED, NOT RUN ON HARDWARE. Neither mlir-aie (IRON, aiecc, Peano) nor an
NPU was available where this was written. The IRON part (:func:`build_module`)
is written against mlir-aie release v1.3.4 (``mlir_aie==1.3.4``): every import
and call in it was checked, by reading, against that release's
``python/iron`` sources and examples (kernels/README.md lists them). Later
releases (v1.4.0 on) replaced ``Runtime.sequence`` by a sequence callback and
will not run it. It must be compiled and run on a machine that has the
toolchain before anyone trusts it. The pure-Python part above it
(geometry, the shim DMA plan, the memory-tile re-tiling patterns, the limit
checks) needs no mlir-aie and is exercised by ``tests/test_kernel_scalar.py``,
which pushes a whole block through a numpy model of these patterns and the
real (host-compiled) core kernel.

What one run computes: ``C = A @ B`` for one block, A ``M x K`` int8, B ``K x N``
int8, C ``M x N`` int32, all three row-major in their buffer objects (kernel.json
``layout: row_major``). Exact int32: nothing is narrowed on the NPU.

How (the whole-array pattern of mlir-aie's GEMM examples, re-derived):

- 4 rows x ``C`` columns of cores (npu1: 4 columns, 16 cores; npu2: 8 columns,
  32 cores), each owning a 64x64 int32 output tile at a time. The output is cut
  into row blocks of ``4 * m`` rows; core ``(row, col)`` computes, for every row
  block, the rows ``row * m ...`` of that block and the column tiles
  ``col, col + C, col + 2C, ...``.
- A: one shim -> memory tile FIFO per core row. Its memory tile re-tiles each
  ``m x k`` object into micro-tiles and broadcasts it to the ``C`` cores of the
  row. B: one FIFO per column, broadcast to the 4 cores of the column. C: the
  memory tile of each column joins the 4 cores' tiles and un-tiles them into
  row-major on the way out.
- The shim DMA moves row-major data only; every layout change happens in the
  memory tiles (``dims_to_stream``), so the host never tiles anything.

One xclbin, any block shape: the array (cores, FIFOs, memory-tile patterns)
depends only on the core tile, never on ``(M, K, N)``. What a block shape
changes lives in the instruction stream (``insts_{M}x{K}x{N}.bin``): the shim
DMA descriptors, and two run-time parameters written into every core's memory
(output tiles per core, k-steps per tile) followed by a barrier that releases
the cores. The cores loop forever, waiting at that barrier once per run. This
is how kernel.json's "the host writes the block shape into the instruction
stream of each run" is met. Consequences: after a failed or aborted run the
hardware context must be recreated (the FIFOs' ping-pong state and the cores'
place in their loop are no longer in step with a fresh run), and every
``insts`` file must come from this same design with the same core tile.

Usage::

    python3 design.py --generation npu1 -M 512 -K 512 -N 512 > aie_512x512x512.mlir
    python3 design.py --generation npu2 -M 2048 -K 4096 -N 2048 --plan   # no mlir-aie needed
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field

import numpy as np

# Facts the geometry rests on (docs/hardware-facts.md#array-geometry and
# docs/hardware-facts.md#on-chip-memory-and-shim-dma-limits; kernel.json "targets").
ROWS = 4  # compute rows per column on both generations
COLUMNS = {"npu1": 4, "npu2": 8}
MICRO_TILE = {"npu1": (4, 8, 8), "npu2": (8, 8, 8)}  # aie::mmul int8 (r, s, t)
CORE_TILE = (64, 64, 64)
MAX_BLOCK = (2048, 4096, 2048)

# Shim DMA descriptor limits, as mlir-aie's verifier states them for
# npu_dma_memcpy_nd / dma_bd: the innermost size (in 32-bit words) and the next
# one at most 1023, the outermost (iteration) size at most 64, strides at most
# 2^20 words, offsets and transfer sizes whole 32-bit words.
SHIM_MAX_INNER = 1023
SHIM_MAX_REPEAT = 64
SHIM_MAX_STRIDE_WORDS = 1 << 20
WORD = 4

# Row blocks per shim task group. A task group of one column holds one C drain
# and, per row block, one A fill and one B fill: 5 buffer descriptors at 2 row
# blocks. Two groups are in flight at a time (the next is queued while the
# previous drains), so a shim uses at most 10 of its 16 BDs and queues at most
# 4 tasks per DMA channel.
ROW_BLOCKS_PER_GROUP = 2
FIFO_DEPTH = 2  # double buffering everywhere

# Layout of each core's run-time-parameter buffer (int32 words).
RTP_TILES = 0  # output tiles this core computes in the run
RTP_K_STEPS = 1  # k-tiles summed into each output tile
RTP_WORDS = 2

KERNEL_OBJECT = "mm_{m}x{k}x{n}.o"


@dataclass(frozen=True)
class Geometry:
    """One block shape on one NPU generation, with the core tile it is cut into.

    All shapes are elements. ``(m, k, n)`` is the core tile (kernel.json
    ``core_tile``); ``(r, s, t)`` the aie::mmul micro-tile of the generation.
    """

    generation: str
    M: int
    K: int
    N: int
    m: int = CORE_TILE[0]
    k: int = CORE_TILE[1]
    n: int = CORE_TILE[2]

    @property
    def columns(self) -> int:
        return COLUMNS[self.generation]

    @property
    def rows(self) -> int:
        return ROWS

    @property
    def micro_tile(self) -> tuple[int, int, int]:
        return MICRO_TILE[self.generation]

    @property
    def granularity(self) -> tuple[int, int, int]:
        """Block dimensions must be multiples of this (``4m``, ``k``, ``C * n``).

        M: the memory tile joins the 4 rows' C tiles of a row block into one
        object. N: the A FIFO of a row is broadcast to every column, so all
        columns must consume the same number of tiles. K: whole k-tiles.
        """
        return (self.rows * self.m, self.k, self.columns * self.n)

    @property
    def row_blocks(self) -> int:
        return self.M // (self.rows * self.m)

    @property
    def col_tiles(self) -> int:
        """Output column tiles each core computes per row block."""
        return self.N // (self.columns * self.n)

    @property
    def k_steps(self) -> int:
        return self.K // self.k

    @property
    def tiles_per_core(self) -> int:
        return self.row_blocks * self.col_tiles

    def a_column(self, row: int) -> int:
        """Column whose shim and memory tile feed A to core row ``row``.

        npu1 has as many columns as rows. npu2 has twice as many, so A uses
        every other column and the memory tiles' channels stay balanced (as
        mlir-aie's whole-array example does).
        """
        return row * (self.columns // self.rows)

    def problems(self) -> list[str]:
        """Every reason this geometry cannot run; empty when it can."""
        out: list[str] = []
        if self.generation not in COLUMNS:
            return [f"unknown generation {self.generation!r} (npu1 or npu2)"]
        r, s, t = self.micro_tile
        for axis, core, micro in zip("mkn", (self.m, self.k, self.n), (r, s, t), strict=True):
            if core <= 0 or core % micro:
                out.append(f"core tile {axis}={core} is not a positive multiple of {micro}")
        if (self.m // r) % 2 or (self.n // t) % 2:
            out.append("core tile needs an even number of micro-tiles in m and n (2x2 blocking)")
        l1 = FIFO_DEPTH * (self.m * self.k + self.k * self.n + WORD * self.m * self.n)
        if l1 > 64 * 1024 - 4 * 1024:  # leave room for stack and RTPs
            out.append(f"core tile needs {l1} bytes of core data memory")
        block = {"M": self.M, "K": self.K, "N": self.N}
        for (axis, size), step, limit in zip(
            block.items(), self.granularity, MAX_BLOCK, strict=True
        ):
            if size < step or size % step:
                out.append(f"{axis}={size} is not a positive multiple of {step}")
            if size > limit:
                out.append(f"{axis}={size} exceeds the compiled maximum {limit}")
        if not out:
            for transfer in (tr for group in runtime_plan(self) for tr in group):
                out.extend(transfer.problems())
        return out

    def check(self) -> None:
        """Raise :class:`ValueError` naming every problem, if there is one."""
        problems = self.problems()
        if problems:
            raise ValueError(
                f"block {self.M}x{self.K}x{self.N} on {self.generation}: " + "; ".join(problems)
            )


# ---------------------------------------------------------------------------
# Memory-tile re-tiling (dims_to_stream): lists of (size, stride), outermost
# first, over one object's elements.


def a_to_core_dims(g: Geometry) -> list[tuple[int, int]]:
    """Row-major ``m x k`` A object -> micro-tiles of ``r x s``, tile-major."""
    r, s, _ = g.micro_tile
    return [(g.m // r, r * g.k), (g.k // s, s), (r, g.k), (s, 1)]


def b_to_core_dims(g: Geometry) -> list[tuple[int, int]]:
    """Row-major ``k x n`` B object -> micro-tiles of ``s x t``, tile-major."""
    _, s, t = g.micro_tile
    return [(g.k // s, s * g.n), (g.n // t, t), (s, g.n), (t, 1)]


def c_to_shim_dims(g: Geometry) -> list[tuple[int, int]]:
    """Joined C object (4 tile-major ``m x n`` tiles, one per row) -> row-major.

    The 4 cores' tiles sit one after another, so the micro-tile rows of all 4
    continue at the same stride: the outermost size covers all ``4m / r`` of them.
    """
    r, _, t = g.micro_tile
    return [(g.rows * g.m // r, r * g.n), (r, t), (g.n // t, r * t), (t, 1)]


def pattern_indices(offset: int, sizes: list[int], strides: list[int]) -> np.ndarray:
    """Flat element indices an access pattern visits, in order (outermost first)."""
    idx = np.array([offset], dtype=np.int64)
    for size, stride in zip(sizes, strides, strict=True):
        idx = (idx[:, None] + np.arange(size, dtype=np.int64)[None, :] * stride).reshape(-1)
    return idx


# ---------------------------------------------------------------------------
# Runtime sequence: shim DMA transfers between the row-major BOs and the FIFOs.


@dataclass(frozen=True)
class Transfer:
    """One shim DMA task (a fill of A or B, or a drain of C).

    ``sizes``/``strides`` are 4-D, outermost first, in elements of the BO;
    ``sizes[0]`` is the descriptor's iteration (repeat) count.
    """

    operand: str  # "A", "B" or "C"
    fifo: int  # A: core row; B, C: column
    column: int  # shim column that runs it
    offset: int
    sizes: tuple[int, int, int, int]
    strides: tuple[int, int, int, int]
    itemsize: int
    tensor_elems: int = field(default=0)

    def problems(self) -> list[str]:
        """Reasons the shim DMA cannot run this transfer.

        The limits: docs/hardware-facts.md#on-chip-memory-and-shim-dma-limits.
        """
        out = []
        where = f"{self.operand} transfer at offset {self.offset}"
        inner_bytes = self.sizes[3] * self.itemsize
        if inner_bytes % WORD or (self.offset * self.itemsize) % WORD:
            out.append(f"{where}: not whole 32-bit words")
        if inner_bytes // WORD > SHIM_MAX_INNER or self.sizes[2] > SHIM_MAX_INNER:
            out.append(f"{where}: inner sizes {self.sizes[2:]} exceed {SHIM_MAX_INNER}")
        if self.sizes[0] > SHIM_MAX_REPEAT:
            out.append(f"{where}: repeat {self.sizes[0]} exceeds {SHIM_MAX_REPEAT}")
        for stride in self.strides[:3]:
            if stride * self.itemsize > SHIM_MAX_STRIDE_WORDS * WORD:
                out.append(f"{where}: stride {stride} exceeds 2^20 words")
        if self.strides[3] != 1:
            out.append(f"{where}: innermost stride must be 1")
        last = self.offset + sum((s - 1) * d for s, d in zip(self.sizes, self.strides, strict=True))
        if self.tensor_elems and last >= self.tensor_elems:
            out.append(f"{where}: reaches element {last} of {self.tensor_elems}")
        return out

    def indices(self) -> np.ndarray:
        return pattern_indices(self.offset, list(self.sizes), list(self.strides))


def runtime_plan(g: Geometry) -> list[list[Transfer]]:
    """The shim transfers of one run, in task groups, each in issue order.

    Per group of row blocks and per column: first the C drain (so the output
    path is ready before inputs arrive), then for each row block the A fill of
    the row this column feeds (if any) and the B fill of the column.
    """
    m, k, n, K, N = g.m, g.k, g.n, g.K, g.N
    rows, cols = g.rows, g.columns
    a_row_of_column = {g.a_column(row): row for row in range(rows)}
    groups: list[list[Transfer]] = []
    for first in range(0, g.row_blocks, ROW_BLOCKS_PER_GROUP):
        count = min(ROW_BLOCKS_PER_GROUP, g.row_blocks - first)
        group: list[Transfer] = []
        for col in range(cols):
            # C: for each row block of the group, for each of this column's
            # tiles (every cols-th 64-wide column), a (4m x n) row-major piece.
            group.append(
                Transfer(
                    "C", col, col,
                    offset=first * rows * m * N + col * n,
                    sizes=(count, g.col_tiles, rows * m, n),
                    strides=(rows * m * N, cols * n, N, 1),
                    itemsize=4, tensor_elems=g.M * N,
                )
            )  # fmt: skip
            for block in range(first, first + count):
                if col in a_row_of_column:
                    row = a_row_of_column[col]
                    # A: this row's m x K strip, k columns at a time; sent once
                    # per output tile of the row block (stride 0 repeat).
                    group.append(
                        Transfer(
                            "A", row, col,
                            offset=(block * rows + row) * m * K,
                            sizes=(g.col_tiles, g.k_steps, m, k),
                            strides=(0, k, K, 1),
                            itemsize=1, tensor_elems=g.M * K,
                        )
                    )  # fmt: skip
                # B: this column's n-wide strips (every cols-th), each as k_steps
                # k x n pieces; the same for every row block (B is re-streamed).
                group.append(
                    Transfer(
                        "B", col, col,
                        offset=col * n,
                        sizes=(g.col_tiles, g.k_steps, k, n),
                        strides=(cols * n, k * N, N, 1),
                        itemsize=1, tensor_elems=K * N,
                    )
                )  # fmt: skip
        groups.append(group)
    return groups


def runtime_parameters(g: Geometry) -> dict[int, int]:
    """What the runtime sequence writes into every core's RTP buffer."""
    return {RTP_TILES: g.tiles_per_core, RTP_K_STEPS: g.k_steps}


def array_fingerprint(mlir_text: str) -> str:
    """The MLIR with its runtime sequence cut out.

    Two designs may share one xclbin only if this is identical for both: the
    runtime sequence is the only part that may depend on the block shape. Used
    by ``make check-array``.
    """
    lines = mlir_text.splitlines()
    kept: list[str] = []
    depth = 0
    for line in lines:
        if depth == 0 and re.search(r"\b(aiex|aie)\.runtime_sequence\b", line):
            depth = line.count("{") - line.count("}")
            continue
        if depth > 0:
            depth += line.count("{") - line.count("}")
            continue
        kept.append(re.sub(r"loc\(.*?\)", "", line).rstrip())
    return "\n".join(kept)


# ---------------------------------------------------------------------------
# IRON: everything below needs mlir-aie's Python package and is not run here.


def _device(generation: str):
    from aie.iron.device import NPU1, NPU2

    # Phoenix's physical column 0 has no shim DMA. mlir-aie v1.3.4 never exposes
    # it: its npu1 device is the four usable columns, numbered 0..3 (NPU1Col1..3
    # are narrower partitions), and the firmware places the partition on the
    # physical columns that have shims.
    return NPU2() if generation == "npu2" else NPU1()


def build_module(g: Geometry):
    """Emit the design as an MLIR module (needs mlir-aie; see the module docstring)."""
    g.check()

    from aie.helpers.taplib import TensorAccessPattern
    from aie.iron import Buffer, Kernel, ObjectFifo, Program, Runtime, Worker, WorkerRuntimeBarrier
    from aie.iron.controlflow import range_
    from aie.iron.device import Tile

    m, k, n = g.m, g.k, g.n
    r, s, t = g.micro_tile
    rows, cols = g.rows, g.columns
    i8, i32 = np.dtype[np.int8], np.dtype[np.int32]

    a_l3 = np.ndarray[(g.M * g.K,), i8]
    b_l3 = np.ndarray[(g.K * g.N,), i8]
    c_l3 = np.ndarray[(g.M * g.N,), i32]
    a_l2 = np.ndarray[(m * k,), i8]
    b_l2 = np.ndarray[(k * n,), i8]
    c_l2 = np.ndarray[(rows * m * n,), i32]
    a_l1 = np.ndarray[(m, k), i8]
    b_l1 = np.ndarray[(k, n), i8]
    c_l1 = np.ndarray[(m, n), i32]
    rtp_ty = np.ndarray[(RTP_WORDS,), i32]

    obj = KERNEL_OBJECT.format(m=m, k=k, n=n)
    # Shapes go in as arguments (one C ABI with the host build); the AIE build
    # takes its vector path when they equal what it was compiled for.
    zero = Kernel("zero_i32", obj, [c_l1, np.int32, np.int32])
    matmul = Kernel("matmul_i8_i32", obj, [a_l1, b_l1, c_l1] + [np.int32] * 6)

    # A: shim -> memory tile (row-major m x k objects) -> every core of the row.
    a_in, a_cores = [], []
    for row in range(rows):
        fifo = ObjectFifo(a_l2, depth=FIFO_DEPTH, name=f"A_L3L2_{row}")
        a_in.append(fifo)
        a_cores.append(
            fifo.cons().forward(
                obj_type=a_l1,
                name=f"A_L2L1_{row}",
                dims_to_stream=a_to_core_dims(g),
                tile=Tile(g.a_column(row), 1),
            )
        )

    # B: shim -> memory tile -> every core of the column. C: every core of the
    # column -> memory tile (joined, un-tiled) -> shim.
    b_in, b_cores, c_out, c_cores = [], [], [], []
    for col in range(cols):
        fifo = ObjectFifo(b_l2, depth=FIFO_DEPTH, name=f"B_L3L2_{col}")
        b_in.append(fifo)
        b_cores.append(
            fifo.cons().forward(
                obj_type=b_l1,
                name=f"B_L2L1_{col}",
                dims_to_stream=b_to_core_dims(g),
                tile=Tile(col, 1),
            )
        )
        joined = ObjectFifo(
            c_l2, depth=FIFO_DEPTH, name=f"C_L2L3_{col}", dims_to_stream=c_to_shim_dims(g)
        )
        c_out.append(joined)
        c_cores.append(
            joined.prod().join(
                [m * n * row for row in range(rows)],
                obj_types=[c_l1] * rows,
                names=[f"C_L1L2_{col}_{row}" for row in range(rows)],
                depths=[FIFO_DEPTH] * rows,
                tile=Tile(col, 1),
            )
        )

    def core_fn(a_fifo, b_fifo, c_fifo, zero_fn, matmul_fn, rtp, barrier):
        # Once per run: wait until the runtime sequence has written this run's
        # parameters, compute, then release the barrier: the handshake of
        # programming_examples/ml/scale_shift/scale_shift.py in v1.3.4. The loop
        # bounds are i32 values read from the RTP buffer; range_ (scf.for)
        # casts them to index itself.
        barrier.wait_for_value(1)
        tiles = rtp[RTP_TILES]
        k_steps = rtp[RTP_K_STEPS]
        for _ in range_(tiles):
            acc = c_fifo.acquire(1)
            zero_fn(acc, m, n)
            for _ in range_(k_steps):
                a = a_fifo.acquire(1)
                b = b_fifo.acquire(1)
                matmul_fn(a, b, acc, m, k, n, r, s, t)
                a_fifo.release(1)
                b_fifo.release(1)
            c_fifo.release(1)
        barrier.release_with_value(1)

    workers, rtps, barriers = [], [], []
    for row in range(rows):
        for col in range(cols):
            rtp = Buffer(rtp_ty, name=f"rtp_{row}_{col}", use_write_rtp=True)
            barrier = WorkerRuntimeBarrier()
            rtps.append(rtp)
            barriers.append(barrier)
            workers.append(
                Worker(
                    core_fn,
                    [
                        a_cores[row].cons(),
                        b_cores[col].cons(),
                        c_cores[col][row].prod(),
                        zero,
                        matmul,
                        rtp,
                        barrier,
                    ],
                    tile=Tile(col, 2 + row),
                    # Loop counts known only at run time need the dynamic
                    # ObjectFIFO lowering (single_core_iron_dynamic.py does the same).
                    dynamic_objfifo_lowering=True,
                )
            )

    params = runtime_parameters(g)
    sizes = {"A": g.M * g.K, "B": g.K * g.N, "C": g.M * g.N}

    rt = Runtime()
    with rt.sequence(a_l3, b_l3, c_l3) as (A, B, C):
        rt.start(*workers)

        def write_rtps(*buffers):
            for buffer in buffers:
                for index, value in params.items():
                    buffer[index] = value

        rt.inline_ops(write_rtps, rtps)
        for barrier in barriers:
            rt.set_barrier(barrier, 1)

        previous = None
        for group in runtime_plan(g):
            task_group = rt.task_group()
            for tr in group:
                tap = TensorAccessPattern(
                    [sizes[tr.operand]], tr.offset, list(tr.sizes), list(tr.strides)
                )
                shim = Tile(tr.column, 0)
                if tr.operand == "C":
                    rt.drain(
                        c_out[tr.fifo].cons(), C, tap=tap, wait=True,
                        task_group=task_group, tile=shim,
                    )  # fmt: skip
                elif tr.operand == "A":
                    rt.fill(a_in[tr.fifo].prod(), A, tap=tap, task_group=task_group, tile=shim)
                else:
                    rt.fill(b_in[tr.fifo].prod(), B, tap=tap, task_group=task_group, tile=shim)
            # Keep two groups in flight: wait for the previous group's drains
            # (its fills are done by then) and free its BDs while this one runs.
            if previous is not None:
                rt.finish_task_group(previous)
            previous = task_group
        rt.finish_task_group(previous)

    # v1.3.4 has no placer argument: every tile above is placed explicitly, and
    # aiecc's --aie-place-tiles pass resolves what is left.
    return Program(_device(g.generation), rt).resolve_program()


# ---------------------------------------------------------------------------


def describe_plan(g: Geometry) -> str:
    """Human-readable plan: what a run moves and what each core does."""
    r, s, t = g.micro_tile
    lines = [
        f"block {g.M}x{g.K}x{g.N} on {g.generation}: {g.rows}x{g.columns} cores, "
        f"core tile {g.m}x{g.k}x{g.n}, micro-tile {r}x{s}x{t}",
        f"granularity {g.granularity}, per core: {g.tiles_per_core} output tiles "
        f"x {g.k_steps} k-steps",
    ]
    for number, group in enumerate(runtime_plan(g)):
        lines.append(f"task group {number}:")
        for tr in group:
            lines.append(
                f"  shim {tr.column} {tr.operand}[{tr.fifo}] offset={tr.offset} "
                f"sizes={list(tr.sizes)} strides={list(tr.strides)}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generation", "--dev", choices=sorted(COLUMNS), default="npu1")
    parser.add_argument("-M", type=int, required=True)
    parser.add_argument("-K", type=int, required=True)
    parser.add_argument("-N", type=int, required=True)
    parser.add_argument("--plan", action="store_true", help="print the DMA plan, no mlir-aie")
    parser.add_argument(
        "--fingerprint", metavar="MLIR", help="print the MLIR file's array part (make check-array)"
    )
    args = parser.parse_args(argv)
    if args.fingerprint:
        with open(args.fingerprint) as handle:
            print(array_fingerprint(handle.read()))
        return 0
    g = Geometry(args.generation, args.M, args.K, args.N)
    try:
        g.check()
    except ValueError as error:
        print(f"design.py: {error}", file=sys.stderr)
        return 2
    if args.plan:
        print(describe_plan(g))
        return 0
    print(build_module(g))
    return 0


if __name__ == "__main__":
    sys.exit(main())
