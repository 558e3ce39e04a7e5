"""Host-side data movement: numba kernels that pack, unpack, accumulate and requantise.

These run in the pipeline's pack and accumulate stages (``docs/architecture.md``), from
several worker threads at once. Four rules shape them (``docs/packing.md``):

- ``nogil=True``: a kernel releases the GIL for its whole run, so packing batch
  n+1 and accumulating batch n-1 really run in parallel with each other and
  with the event loop.
- never ``parallel=True``: numba's default ``workqueue`` threading layer aborts
  the process when two threads run parallel code at once. Parallelism comes
  from running different batches in different threads instead.
- eager signatures and ``cache=True``: every kernel is compiled (or loaded from
  the on-disk cache) when this module is imported, never inside a request.
- one numba call per Python call: the wrappers check arguments, then hand the
  whole block to one kernel; there is no per-tile Python loop.

**Views without copies.** Every 2-D operand (a source matrix, an output view
into the caller's C) reaches the kernels as a *strided region*: a contiguous
1-D view spanning the region's memory plus (base, row stride, column stride)
in elements (:func:`_strided`). This is numba's any-layout array made
explicit: one signature per dtype serves C-ordered, sliced, Fortran-ordered,
transposed, broadcast and negatively strided arrays alike, read and written
in place; sub-blocks (tile pairs) are offset arithmetic; and "column stride
is 1" is a run-time test that selects a copy of the loops compiled for the
constant 1, so every row-contiguous view (not only C-contiguous arrays) gets
the vectorised path. Column-strided sources (a transposed or Fortran-ordered
B) take the scalar path, about 1.6 GB/s, as fast as numpy's own transposing
copy; transpose constant weights once up front instead.

**Layouts** of a padded ``(rows, cols)`` block in a flat buffer:

- ``row_major``: element (i, j) at ``i * cols + j``.
- ``tile_major``: the block is cut into ``(tr, tc)`` tiles; tiles are stored in
  row-major order of tiles, each tile row-major (mlir-aie's pre-tiled layout).
  ``row_major`` is the special case of one tile covering the whole block, and
  the kernels treat it so.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types as nt

from npu_pipeline.errors import DTypeError, ShapeError, explain
from npu_pipeline.reference import Rounding, Saturation

#: Block layouts a flat buffer may hold (the same names as ``KernelContract.layout``).
LAYOUTS = ("row_major", "tile_major")

#: Element types the pack and unpack kernels move (int8 operands, int32 partials).
MOVED_DTYPES = (np.dtype(np.int8), np.dtype(np.int32))

#: Edge of the ``tile16_legacy`` contract's square tiles, elements.
LEGACY_TILE = 16

# Every kernel option in one place: see the module docstring for why.
_JIT = {"nogil": True, "cache": True}

# Tile rows at most this wide (and a multiple of 8) are copied 8 elements at a
# time by _move8; wider rows use a plain loop, which LLVM vectorises itself.
# Measured, packing a 1536x2048 int8 block: 4x8 tiles 3.6 -> 7.7 GB/s, 8x32
# tiles 7 -> 11 GB/s, 64x64 tiles slower with _move8 (13 vs 15 GB/s). Adding
# (accumulate) 8 at a time was slower than the plain loop, so only copies use it.
_MOVE8_MAX = 32

# Numba indexes with signed integers by checking for negative indices and
# wrapping them, which stops LLVM from vectorising the inner loops (measured:
# 0.7 GB/s instead of 38 GB/s for a row-major copy). Every index below is
# non-negative by construction, so it is cast to an unsigned type first.
_U = np.uintp


# ---------------------------------------------------------------------------
# Numba kernels. Helpers marked inline="always" are inlined into their caller's
# numba IR, so the constants a caller passes (stride 1, add=False) specialise
# their loops at compile time.


@numba.njit(inline="always")
def _move8(src, s, dst, d):
    """dst[d:d+8] = src[s:s+8], both contiguous.

    All loads come before all stores: LLVM cannot prove src and dst do not
    overlap, so an element-by-element copy stays scalar; loads first let it
    merge them into one 8-element move.
    """
    x0 = src[_U(s)]
    x1 = src[_U(s + 1)]
    x2 = src[_U(s + 2)]
    x3 = src[_U(s + 3)]
    x4 = src[_U(s + 4)]
    x5 = src[_U(s + 5)]
    x6 = src[_U(s + 6)]
    x7 = src[_U(s + 7)]
    dst[_U(d)] = x0
    dst[_U(d + 1)] = x1
    dst[_U(d + 2)] = x2
    dst[_U(d + 3)] = x3
    dst[_U(d + 4)] = x4
    dst[_U(d + 5)] = x5
    dst[_U(d + 6)] = x6
    dst[_U(d + 7)] = x7


@numba.njit(inline="always")
def _move(src, s, ss, dst, d, ds, n, add):
    """dst[d + j*ds] (+)= src[s + j*ss] for j < n (strides in elements)."""
    if add:
        for j in range(n):
            dst[_U(d + j * ds)] += src[_U(s + j * ss)]
    else:
        for j in range(n):
            dst[_U(d + j * ds)] = src[_U(s + j * ss)]


@numba.njit(inline="always")
def _move_tiles(src, s, ss, s_step, dst, d, ds, d_step, count, n, add):
    """``count`` moves of n elements; move t reads at s + t*s_step, writes at d + t*d_step."""
    if not add and ss == 1 and ds == 1 and n % 8 == 0 and n <= _MOVE8_MAX:
        for t in range(count):
            for q in range(0, n, 8):
                _move8(src, s + t * s_step + q, dst, d + t * d_step + q)
    else:
        for t in range(count):
            _move(src, s + t * s_step, ss, dst, d + t * d_step, ds, n, add)


@numba.njit(inline="always")
def _pack_rows(src, base, rs, cs, h, w, dst, off, br, bc, tr, tc):
    """Body of :func:`_pack_kernel` for one (possibly compile-time constant) column stride."""
    ntc = bc // tc
    tsize = tr * tc
    full = min(w // tc, ntc)  # tiles of a row whose tc columns all lie inside the region
    for i in range(br):
        ti = i // tr
        d = off + ti * ntc * tsize + (i - ti * tr) * tc  # this row's part of its first tile
        done = 0
        if i < h:
            s = base + i * rs
            _move_tiles(src, s, cs, tc * cs, dst, d, 1, tsize, full, tc, False)
            done = full
            if full < ntc:  # the ragged tile: copy what there is, pad the rest below
                n = w - full * tc
                _move(src, s + full * tc * cs, cs, dst, d + full * tsize, 1, n, False)
                for j in range(n, tc):
                    dst[_U(d + full * tsize + j)] = 0
                done = full + 1
        for t in range(done, ntc):  # padding tiles, and every tile of a padding row
            for j in range(tc):
                dst[_U(d + t * tsize + j)] = 0


@numba.njit(inline="always")
def _gather_rows(src, off, bc, tr, tc, out, base, rs, cs, h, w, add):
    """Body of :func:`_gather_kernel` for one (possibly compile-time constant) column stride."""
    ntc = bc // tc
    tsize = tr * tc
    full = w // tc
    for i in range(h):
        ti = i // tr
        s = off + ti * ntc * tsize + (i - ti * tr) * tc
        o = base + i * rs
        _move_tiles(src, s, 1, tsize, out, o, cs, tc * cs, full, tc, add)
        _move(src, s + full * tsize, 1, out, o + full * tc * cs, cs, w - full * tc, add)


_I = nt.int64


def _flat(dtype, readonly):
    """A flat buffer type. Inputs are declared read-only so read-only arrays
    (broadcasts, buffers of bytes) are accepted: writeable ones convert to it."""
    return nt.Array(dtype, 1, "C", readonly=readonly)


def _region(dtype, readonly):
    """Argument types of a strided region: flat buffer, base, row stride, column stride."""
    return (_flat(dtype, readonly), _I, _I, _I)


@numba.njit(
    [
        nt.void(*_region(dt, True), _I, _I, _flat(dt, False), _I, _I, _I, _I, _I)
        for dt in (nt.int8, nt.int32)
    ],
    **_JIT,
)
def _pack_kernel(src, base, rs, cs, h, w, dst, off, br, bc, tr, tc):
    """Pack the h x w strided region of src into dst[off:off + br*bc], padded, by tile."""
    if cs == 1:  # contiguous rows: the constant lets LLVM vectorise the moves
        _pack_rows(src, base, rs, 1, h, w, dst, off, br, bc, tr, tc)
    else:
        _pack_rows(src, base, rs, cs, h, w, dst, off, br, bc, tr, tc)


@numba.njit(
    [
        nt.void(_flat(s, True), _I, _I, _I, _I, *_region(o, False), _I, _I, nt.boolean)
        for s, o in ((nt.int8, nt.int8), (nt.int32, nt.int32), (nt.int8, nt.int32))
    ],
    **_JIT,
)
def _gather_kernel(src, off, bc, tr, tc, out, base, rs, cs, h, w, add):
    """Read the top-left h x w of the padded block at src[off:] into a strided region of out.

    ``add``: out += block (int8 blocks widen to int32 first); else out = block.
    """
    if cs == 1:
        _gather_rows(src, off, bc, tr, tc, out, base, rs, 1, h, w, add)
    else:
        _gather_rows(src, off, bc, tr, tc, out, base, rs, cs, h, w, add)


@numba.njit(
    [
        nt.int64(
            *_region(nt.int8, True), *_region(nt.int8, True), _I, _I, _I, _flat(nt.int8, False), _I
        )
    ],
    **_JIT,
)
def _pack_tile_pairs_kernel(a, abase, ars, acs, b, bbase, brs, bcs, m, k, n, dst, tile):
    """Every (i, j, k) tile pair of the m x k x n ranges, k innermost; returns the pair count."""
    pair = 0
    size = tile * tile
    for i in range(0, m, tile):
        for j in range(0, n, tile):
            for q in range(0, k, tile):
                off = 2 * size * pair
                h, w, d = min(m - i, tile), min(n - j, tile), min(k - q, tile)
                a0 = abase + i * ars + q * acs
                _pack_kernel(a, a0, ars, acs, h, d, dst, off, tile, tile, tile, tile)
                b0 = bbase + q * brs + j * bcs
                _pack_kernel(b, b0, brs, bcs, d, w, dst, off + size, tile, tile, tile, tile)
                pair += 1
    return pair


@numba.njit(
    [nt.void(_flat(nt.int8, True), _I, *_region(nt.int32, False), _I, _I, _I)],
    **_JIT,
)
def _accumulate_tile_pairs_kernel(src, k, acc, base, rs, cs, m, n, tile):
    """acc (m x n strided region) += every pair's int8 output tile, in pack order."""
    pair = 0
    for i in range(0, m, tile):
        for j in range(0, n, tile):
            h, w = min(m - i, tile), min(n - j, tile)
            o = base + i * rs + j * cs
            for _ in range(0, k, tile):
                _gather_kernel(
                    src, pair * tile * tile, tile, tile, tile, acc, o, rs, cs, h, w, True
                )
                pair += 1


# Rounding and saturation codes, bound at compile time (numba freezes globals).
_FLOOR, _CEIL, _TRUNC = Rounding.FLOOR.code, Rounding.CEIL.code, Rounding.TRUNC.code
_HALF_UP, _HALF_DOWN = Rounding.HALF_UP.code, Rounding.HALF_DOWN.code
_HALF_AWAY, _HALF_ZERO = Rounding.HALF_AWAY.code, Rounding.HALF_ZERO.code
_HALF_EVEN, _HALF_ODD = Rounding.HALF_EVEN.code, Rounding.HALF_ODD.code
_SATURATE, _SYMMETRIC = Saturation.SATURATE.code, Saturation.SYMMETRIC.code


@numba.njit(inline="always")
def _rounding_bias(shift, rounding):
    """(b0, b_neg, b_odd): every SRS rounding mode as ``(x + bias) >> shift`` (floor shift).

    With ``q = x >> shift`` and ``half = 2**(shift-1)``, the bias is
    ``b0 + b_neg * (x < 0) + b_odd * (q & 1)``. Nearest-rounding modes add half,
    or half - 1 to send ties down; the tie rule picks between them by sign or
    parity. Directed modes add 0 (floor) or 2**shift - 1 (ceil).
    """
    if shift == 0:
        return 0, 0, 0
    one = np.int64(1)
    half = one << (shift - 1)
    ceil = (one << shift) - 1
    if rounding == _CEIL:
        return ceil, 0, 0
    if rounding == _TRUNC:
        return 0, ceil, 0
    if rounding == _HALF_UP:
        return half, 0, 0
    if rounding == _HALF_DOWN:
        return half - 1, 0, 0
    if rounding == _HALF_AWAY:
        return half, -1, 0
    if rounding == _HALF_ZERO:
        return half - 1, 1, 0
    if rounding == _HALF_EVEN:
        return half - 1, 0, 1
    if rounding == _HALF_ODD:
        return half, 0, -1
    return 0, 0, 0  # _FLOOR


@numba.njit(
    [nt.void(*_region(nt.int32, True), *_region(nt.int8, False), _I, _I, _I, _I, _I)],
    **_JIT,
)
def _requantize_kernel(acc, abase, ars, acs, out, obase, ors, ocs, h, w, shift, rounding, sat):
    """out = saturate(round(acc / 2**shift)) over two strided regions, branch-free per element."""
    b0, b_neg, b_odd = _rounding_bias(shift, rounding)
    lo, hi = np.int64(-(2**63)), np.int64(2**63 - 1)  # Saturation.NONE: wrap on the cast below
    if sat == _SATURATE:
        lo, hi = np.int64(-128), np.int64(127)
    elif sat == _SYMMETRIC:
        lo, hi = np.int64(-127), np.int64(127)
    for i in range(h):
        a = abase + i * ars
        o = obase + i * ors
        for j in range(w):
            x = np.int64(acc[_U(a + j * acs)])
            bias = b0 + b_neg * (x < 0) + b_odd * ((x >> shift) & 1)
            y = min(max((x + bias) >> shift, lo), hi)
            out[_U(o + j * ocs)] = np.int8(y)  # truncation: two's-complement wrap


# ---------------------------------------------------------------------------
# Argument checks


def _check_array(name: str, value: object, dtypes: tuple[np.dtype, ...], ndim: int) -> np.ndarray:
    """``value`` if it is an ndarray of one of ``dtypes`` with ``ndim`` dimensions, else raise."""
    if not isinstance(value, np.ndarray) or value.dtype not in dtypes:
        got = f"dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
        names = " or ".join(str(d) for d in dtypes)
        raise DTypeError(
            explain(
                f"{name} is {got}",
                f"a numpy.ndarray of dtype {names}",
                "Pass an array of that dtype (a mapped BO: np.frombuffer(bo.map(), dtype)).",
            )
        )
    if value.ndim != ndim:
        raise ShapeError(
            explain(
                f"{name} has {value.ndim} dimension(s), shape {value.shape}",
                f"a {ndim}-D array",
                "Reshape it (flat buffers: .reshape(-1) of a contiguous array).",
            )
        )
    if not value.flags.aligned:
        raise ShapeError(
            explain(
                f"{name} is not aligned to its {value.itemsize}-byte elements",
                "an aligned array",
                "Pass a copy (np.array(x)), or map the buffer at an aligned offset.",
            )
        )
    return value


def _check_buffer(name: str, value: object, dtype: np.dtype, need: int, write: bool) -> np.ndarray:
    """A flat, contiguous buffer of ``dtype`` with at least ``need`` elements."""
    buf = _check_array(name, value, (dtype,), 1)
    if not buf.flags.c_contiguous:
        raise ShapeError(
            explain(
                f"{name} is a strided view (strides {buf.strides})",
                "a contiguous 1-D buffer",
                "Pass the buffer itself, not a strided slice of it.",
            )
        )
    if buf.size < need:
        raise ShapeError(
            explain(
                f"{name} holds {buf.size} elements",
                f"at least {need} elements ({need * dtype.itemsize} bytes) for this block",
                "Allocate the buffer for the padded block size.",
            )
        )
    if write and not buf.flags.writeable:
        raise ShapeError(
            explain(f"{name} is read-only", "a writeable buffer", "Map it for writing.")
        )
    return buf


def _check_separate(name: str, value: np.ndarray, other_name: str, other: np.ndarray) -> None:
    """Refuse an output that may overlap an input (a cheap bounds test, no false negatives)."""
    if np.may_share_memory(value, other):
        raise ShapeError(
            explain(
                f"{name} overlaps {other_name}",
                "an output in memory separate from the input",
                "Write into a separate array or buffer.",
            )
        )


def _check_writeable(name: str, value: np.ndarray) -> None:
    if not value.flags.writeable:
        raise ShapeError(
            explain(f"{name} is read-only", "a writeable array", "Pass a writeable array or view.")
        )


def _check_range(name: str, rng: tuple[int, int], size: int, axis: str) -> tuple[int, int]:
    """A non-empty half-open range ``(lo, hi)`` inside ``[0, size]``."""
    lo, hi = (int(v) for v in rng)
    if not 0 <= lo < hi <= size:
        raise ShapeError(
            explain(
                f"{name} ({lo}, {hi}) is not a non-empty range inside the {axis} ({size})",
                f"0 <= start < stop <= {size}",
                "Clip the range to the matrix.",
            )
        )
    return lo, hi


def _check_geometry(
    block: tuple[int, int], layout: str, tile: tuple[int, int], region: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Validate a padded block holding a ``region``-sized array; return (br, bc, tr, tc).

    ``row_major`` is returned as one tile covering the whole block.
    """
    br, bc = (int(v) for v in block)
    if br < 1 or bc < 1:
        raise ShapeError(
            explain(f"block {block} is empty", "a block (rows, cols) >= 1", "Fix the block shape.")
        )
    if layout not in LAYOUTS:
        raise ShapeError(
            explain(
                f"layout {layout!r} is unknown",
                f"one of {', '.join(LAYOUTS)}",
                "Use the contract's layout (KernelContract.layout).",
            )
        )
    tr, tc = (int(v) for v in tile) if layout == "tile_major" else (br, bc)
    if tr < 1 or tc < 1 or br % tr or bc % tc:
        raise ShapeError(
            explain(
                f"tile {tile} does not divide block {block}",
                "a tile (rows, cols) >= 1 whose sides divide the block's",
                "Round the block up to a multiple of the micro-tile.",
            )
        )
    if region[0] > br or region[1] > bc:
        raise ShapeError(
            explain(
                f"a {region[0]}x{region[1]} region does not fit block {block}",
                "a region no larger than the padded block",
                "Use a larger block, or a smaller range.",
            )
        )
    return br, bc, tr, tc


def _strided(view: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """A 2-D view as (flat, base, row_stride, col_stride) for the kernels, without copying.

    ``flat`` is a contiguous 1-D view of the memory from the view's lowest to
    its highest addressed element; element (i, j) is
    ``flat[base + i * row_stride + j * col_stride]``. That span lies inside the
    array's own buffer, so the view is always valid. ``flat`` keeps ``view``'s
    writeability; read-only inputs are handed over read-only.
    """
    item = view.itemsize
    if view.strides[0] % item or view.strides[1] % item:
        raise ShapeError(
            explain(
                f"array strides {view.strides} are not multiples of its itemsize {item}",
                "strides in whole elements",
                "Pass np.ascontiguousarray(x).",
            )
        )
    (h, w), (rs, cs) = view.shape, (view.strides[0] // item, view.strides[1] // item)
    i0, j0 = (h - 1 if rs < 0 else 0), (w - 1 if cs < 0 else 0)
    span = abs(rs) * (h - 1) + abs(cs) * (w - 1) + 1
    flat = np.lib.stride_tricks.as_strided(
        view[i0:, j0:], shape=(span,), strides=(item,), writeable=view.flags.writeable
    )
    return flat, -(i0 * rs + j0 * cs), rs, cs


# ---------------------------------------------------------------------------
# Public API


def pack_block(
    src: np.ndarray,
    rows: tuple[int, int],
    cols: tuple[int, int],
    dst: np.ndarray,
    block: tuple[int, int],
    layout: str,
    tile: tuple[int, int],
) -> None:
    """Write ``src[r0:r1, c0:c1]`` into ``dst[:block[0]*block[1]]`` as a zero-padded block.

    Args:
        src: 2-D int8 (or int32) matrix, any strides (views are read in place).
        rows, cols: half-open ranges ``(start, stop)`` inside ``src``, elements.
        dst: flat contiguous buffer of ``src``'s dtype (e.g. a mapped BO) with
            at least ``block[0] * block[1]`` elements; only that prefix is written.
        block: padded block shape ``(rows_padded, cols_padded)``, elements, at
            least the ranges' sizes; the ragged edge is zero-filled.
        layout: ``"row_major"`` or ``"tile_major"`` (module docstring).
        tile: ``(tr, tc)`` tile for ``tile_major`` (A: micro-tile (r, s); B:
            (s, t)); must divide ``block``. Ignored for ``row_major``.

    Raises:
        DTypeError: ``src`` is not int8/int32, or ``dst`` has another dtype.
        ShapeError: a range outside ``src``, a block too small or not divisible
            by the tile, ``dst`` too small, strided or read-only.
    """
    src = _check_array("src", src, MOVED_DTYPES, 2)
    r0, r1 = _check_range("rows", rows, src.shape[0], "source's rows")
    c0, c1 = _check_range("cols", cols, src.shape[1], "source's columns")
    br, bc, tr, tc = _check_geometry(block, layout, tile, (r1 - r0, c1 - c0))
    dst = _check_buffer("dst", dst, src.dtype, br * bc, write=True)
    _check_separate("dst", dst, "src", src)
    _pack_kernel(*_strided(src[r0:r1, c0:c1]), r1 - r0, c1 - c0, dst, 0, br, bc, tr, tc)


def _gather(
    name: str,
    src: np.ndarray,
    block: tuple[int, int],
    layout: str,
    tile: tuple[int, int],
    out: np.ndarray,
    out_name: str,
    dtypes: tuple[np.dtype, ...],
    add: bool,
) -> None:
    """Shared checks and call of :func:`unpack_block` and :func:`accumulate_block`."""
    out = _check_array(out_name, out, dtypes, 2)
    _check_writeable(out_name, out)
    br, bc, tr, tc = _check_geometry(block, layout, tile, out.shape)
    src = _check_buffer(name, src, out.dtype, br * bc, write=False)
    _check_separate(out_name, out, name, src)
    if 0 in out.shape:
        return
    _gather_kernel(src, 0, bc, tr, tc, *_strided(out), *out.shape, add)


def unpack_block(
    src: np.ndarray,
    block: tuple[int, int],
    layout: str,
    tile: tuple[int, int],
    out: np.ndarray,
) -> None:
    """Inverse of :func:`pack_block`: crop the padded block in flat ``src`` into ``out``.

    Args:
        src: flat contiguous int8 or int32 buffer holding a padded ``block``
            (``block[0] * block[1]`` elements or more) in ``layout``.
        block, layout, tile: as for :func:`pack_block`.
        out: 2-D array of ``src``'s dtype, any strides, at most ``block`` in
            each dimension; receives the block's top-left ``out.shape`` region.

    Raises:
        DTypeError, ShapeError: as for :func:`pack_block`.
    """
    _gather("src", src, block, layout, tile, out, "out", MOVED_DTYPES, add=False)


def accumulate_block(
    src: np.ndarray,
    block: tuple[int, int],
    layout: str,
    tile: tuple[int, int],
    acc: np.ndarray,
    first: bool,
) -> None:
    """Fold one int32 output block into ``acc``: ``acc = block`` if ``first`` else ``acc += block``.

    Args:
        src: flat contiguous int32 output buffer holding a padded ``block``
            (rows, cols) in ``layout`` (``tile`` = the C micro-tile (r, t)).
        acc: 2-D int32 array of the valid (cropped) size, any strides, e.g. a
            view of the caller's C: partials go straight there, no extra buffer.
        first: the batch is the first k-block of its output block, so its
            values overwrite ``acc`` (no zeroing pass needed).

    Raises:
        DTypeError, ShapeError: as for :func:`pack_block`.
    """
    int32 = (np.dtype(np.int32),)
    _gather("src", src, block, layout, tile, acc, "acc", int32, add=not first)


def requantize(
    acc: np.ndarray,
    out: np.ndarray,
    shift: int,
    rounding: Rounding | str,
    saturation: Saturation | str,
) -> None:
    """``out = srs(acc, shift, rounding, saturation)``: int32 sums to int8, bit for bit.

    Equals :func:`npu_pipeline.reference.srs` for every rounding and saturation mode.

    Args:
        acc: 2-D int32 accumulators, any strides.
        out: 2-D int8 array of the same shape, any strides (e.g. a view of C).
        shift: right shift, 0..31 bits.
        rounding, saturation: :class:`Rounding` / :class:`Saturation` or their names.

    Raises:
        DTypeError, ShapeError: wrong dtypes, shapes that differ, read-only ``out``.
        ValueError: unknown rounding or saturation name, shift outside 0..31.
    """
    acc = _check_array("acc", acc, (np.dtype(np.int32),), 2)
    out = _check_array("out", out, (np.dtype(np.int8),), 2)
    if acc.shape != out.shape:
        raise ShapeError(
            explain(
                f"acc is {acc.shape} but out is {out.shape}",
                "arrays of the same shape",
                "Pass the matching region of the output.",
            )
        )
    _check_writeable("out", out)
    rounding, saturation = _mode(Rounding, rounding), _mode(Saturation, saturation)
    if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or not 0 <= shift <= 31:
        raise ValueError(
            explain(f"shift is {shift!r}", "an integer 0..31", "Pass the contract's shift.")
        )
    _check_separate("out", out, "acc", acc)
    if 0 in acc.shape:
        return
    _requantize_kernel(
        *_strided(acc), *_strided(out), *acc.shape, int(shift), rounding.code, saturation.code
    )


def _mode(kind: type[Rounding] | type[Saturation], value: object) -> Rounding | Saturation:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(
            explain(
                f"{kind.__name__.lower()} {value!r} is unknown",
                f"one of {', '.join(m.value for m in kind)}",
                f"Pass a {kind.__name__} member or its name.",
            )
        ) from None


def _check_tile(tile: object) -> int:
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ShapeError(
            explain(f"tile is {tile!r}", "a positive integer edge", "Pass the contract's tile.")
        )
    return int(tile)


def _check_tile_range(name: str, rng: tuple[int, int], tile: int, size: int | None) -> int:
    """Size of a non-empty range that starts on a tile boundary (and ends inside ``size``)."""
    lo, hi = (int(v) for v in rng)
    limit = size if size is not None else hi
    if not 0 <= lo < hi <= limit or lo % tile:
        inside = f" and stop <= {size}" if size is not None else ""
        raise ShapeError(
            explain(
                f"{name} ({lo}, {hi}) is empty, out of bounds or off the {tile}-element grid",
                f"(start, stop) with start % {tile} == 0, 0 <= start < stop{inside}",
                "Cut batches on tile boundaries, inside the matrices.",
            )
        )
    return hi - lo


def _pairs(m: int, k: int, n: int, tile: int) -> int:
    """Tile pairs of an m x k x n batch."""
    return -(-m // tile) * -(-k // tile) * -(-n // tile)


def pack_tile_pairs(
    a: np.ndarray,
    b: np.ndarray,
    m_range: tuple[int, int],
    k_range: tuple[int, int],
    n_range: tuple[int, int],
    dst: np.ndarray,
    tile: int = LEGACY_TILE,
) -> int:
    """Pack a batch for the ``tile16_legacy`` contract; return the number of tile pairs.

    For tile indices i (over m), j (over n), k (over k, innermost) writes
    ``2 * tile**2`` bytes per pair into ``dst``: the zero-padded A tile (i, k),
    row-major, then the zero-padded B tile (k, j), row-major.

    Args:
        a, b: int8 matrices (M, K) and (K, N), any strides.
        m_range, k_range, n_range: half-open ranges, elements, inside the
            matrices, each starting on a multiple of ``tile``.
        dst: flat contiguous int8 buffer of at least ``pairs * 2 * tile**2`` bytes.
        tile: tile edge, elements.

    Raises:
        DTypeError, ShapeError: as for :func:`pack_block`; K of a and b differ.
    """
    a = _check_array("a", a, MOVED_DTYPES[:1], 2)
    b = _check_array("b", b, MOVED_DTYPES[:1], 2)
    if a.shape[1] != b.shape[0]:
        raise ShapeError(
            explain(
                f"a is {a.shape} but b is {b.shape}",
                "a (M, K) and b (K, N)",
                "Pass operands whose inner dimensions agree.",
            )
        )
    tile = _check_tile(tile)
    m = _check_tile_range("m_range", m_range, tile, a.shape[0])
    k = _check_tile_range("k_range", k_range, tile, a.shape[1])
    n = _check_tile_range("n_range", n_range, tile, b.shape[1])
    dst = _check_buffer("dst", dst, np.dtype(np.int8), _pairs(m, k, n, tile) * 2 * tile**2, True)
    _check_separate("dst", dst, "a", a)
    _check_separate("dst", dst, "b", b)
    m0, k0, n0 = int(m_range[0]), int(k_range[0]), int(n_range[0])
    a_region = _strided(a[m0 : m0 + m, k0 : k0 + k])
    b_region = _strided(b[k0 : k0 + k, n0 : n0 + n])
    return int(_pack_tile_pairs_kernel(*a_region, *b_region, m, k, n, dst, tile))


def accumulate_tile_pairs(
    src: np.ndarray,
    m_range: tuple[int, int],
    k_range: tuple[int, int],
    n_range: tuple[int, int],
    acc: np.ndarray,
    tile: int = LEGACY_TILE,
) -> None:
    """``acc +=`` every tile pair's int8 output tile (widened to int32), cropped.

    The seed's wrapper summed its clipped int8 partials like this; clip the
    total at the end with ``requantize(acc, out, 0, "floor", "saturate")``.

    Args:
        src: flat contiguous int8 outputs, ``tile**2`` bytes per pair, in
            :func:`pack_tile_pairs` order.
        m_range, k_range, n_range: the batch's ranges, as packed.
        acc: int32 array of shape ``(m_range size, n_range size)``, any strides.
        tile: tile edge, elements.

    Raises:
        DTypeError, ShapeError: wrong dtypes, ranges off the tile grid, ``acc``
            of the wrong shape or read-only, ``src`` too small.
    """
    tile = _check_tile(tile)
    m = _check_tile_range("m_range", m_range, tile, None)
    k = _check_tile_range("k_range", k_range, tile, None)
    n = _check_tile_range("n_range", n_range, tile, None)
    acc = _check_array("acc", acc, (np.dtype(np.int32),), 2)
    if acc.shape != (m, n):
        raise ShapeError(
            explain(
                f"acc has shape {acc.shape}",
                f"shape {(m, n)} (the m_range x n_range output region)",
                "Pass the output region the batch covers.",
            )
        )
    _check_writeable("acc", acc)
    src = _check_buffer("src", src, np.dtype(np.int8), _pairs(m, k, n, tile) * tile**2, False)
    _check_separate("acc", acc, "src", src)
    _accumulate_tile_pairs_kernel(src, k, *_strided(acc), m, n, tile)
