"""Benchmark of the numba packing kernels against numpy doing the same data movement.

The case is the pack stage's real one: a 1536 x 2048 int8 A block cut from a
larger 1600 x 2100 matrix (a strided read, rows 2100 bytes apart) into a flat
slot buffer. Every figure is bytes moved per second of wall time (GB = 1e9
bytes), the median of several calls, all taken in the same run.
"""

from __future__ import annotations

import numpy as np

from npu_pipeline import packing
from npu_pipeline.benchmarks import Goal, Row, Section, median_seconds

SOURCE_SHAPE = (1600, 2100)
BLOCK = (1536, 2048)
ORIGIN = (37, 29)  # where the block starts inside the source: not aligned to anything
MICRO_TILE = (4, 8)  # npu1's A micro-tile (r, s), docs/hardware-facts.md#array-geometry


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def run(quick: bool = False) -> Section:
    """Measure packing, numpy equivalents and accumulation; return the section with its goals."""
    repeat = 5 if quick else 21
    note = f"median of {repeat}"
    rng = np.random.default_rng(0)
    (mb, kb), (r0, c0), (tr, tc) = BLOCK, ORIGIN, MICRO_TILE
    rows, cols = (r0, r0 + mb), (c0, c0 + kb)
    source = rng.integers(-128, 128, size=SOURCE_SHAPE, dtype=np.int8)
    region = source[r0 : r0 + mb, c0 : c0 + kb]
    nbytes = mb * kb
    slot = np.empty(nbytes, np.int8)

    def timed(fn) -> float:
        return median_seconds(fn, repeat=repeat)

    def numba_pack(layout: str) -> None:
        packing.pack_block(source, rows, cols, slot, BLOCK, layout, MICRO_TILE)

    t_row = timed(lambda: numba_pack("row_major"))
    t_tile = timed(lambda: numba_pack("tile_major"))

    contiguous = rng.integers(-128, 128, size=nbytes, dtype=np.int8)
    t_copyto = timed(lambda: np.copyto(slot, contiguous))

    # numpy's own way to each layout: one strided copy of the region, through a
    # reshaped/transposed view for tile_major.
    row_view = slot.reshape(mb, kb)
    t_np_row = timed(lambda: np.copyto(row_view, region))
    tiles_src = region.reshape(mb // tr, tr, kb // tc, tc).transpose(0, 2, 1, 3)
    tiles_dst = slot.reshape(mb // tr, kb // tc, tr, tc)
    t_np_tile = timed(lambda: np.copyto(tiles_dst, tiles_src))
    # A fast wrong answer is worth nothing: both numba layouts must equal numpy's.
    for layout, reference in (("row_major", region.ravel()), ("tile_major", tiles_src.ravel())):
        numba_pack(layout)
        if not np.array_equal(slot, reference):
            raise RuntimeError(f"numba pack_block {layout} differs from the numpy copy")

    # C partials: an int32 output block folded into a view of a larger C.
    c_full = np.zeros(SOURCE_SHAPE, np.int32)
    c_view = c_full[r0 : r0 + mb, c0 : c0 + kb]
    partial = rng.integers(-(2**20), 2**20, size=nbytes, dtype=np.int32)
    c_bytes = partial.nbytes
    t_acc = timed(
        lambda: packing.accumulate_block(partial, BLOCK, "row_major", (1, 1), c_view, False)
    )
    t_np_acc = timed(lambda: np.add(c_view, partial.reshape(BLOCK), out=c_view))
    out8 = np.empty(BLOCK, np.int8)
    t_srs = timed(lambda: packing.requantize(c_view, out8, 7, "half_even", "saturate"))

    rows_out = [
        Row("numba pack_block row_major", _gbps(nbytes, t_row), "GB/s", note),
        Row(f"numba pack_block tile_major {tr}x{tc}", _gbps(nbytes, t_tile), "GB/s", note),
        Row("np.copyto contiguous -> contiguous", _gbps(nbytes, t_copyto), "GB/s", note),
        Row("numpy strided copy (row_major)", _gbps(nbytes, t_np_row), "GB/s", note),
        Row(f"numpy reshape/transpose copy {tr}x{tc}", _gbps(nbytes, t_np_tile), "GB/s", note),
        Row("numba accumulate_block int32 (+=)", _gbps(c_bytes, t_acc), "GB/s", note),
        Row("numpy np.add into the C view", _gbps(c_bytes, t_np_acc), "GB/s", note),
        Row("numba requantize int32 -> int8", _gbps(c_bytes, t_srs), "GB/s", "int32 bytes in"),
    ]
    goals = [
        Goal("numba tile_major pack / numpy reshape-transpose copy", t_np_tile / t_tile, 1.5),
        Goal("numba row_major pack / np.copyto (within 2x)", t_copyto / t_row, 0.5),
    ]
    return Section(
        f"packing: {mb}x{kb} int8 block from a {SOURCE_SHAPE[0]}x{SOURCE_SHAPE[1]} matrix",
        rows_out,
        goals,
    )
