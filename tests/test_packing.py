"""Tests of npu_pipeline.packing: every result checked value by value against numpy.

The numpy reference for a padded block in a layout is written out here
independently of the kernels: pad with zeros, then for ``tile_major``
``reshape(br//tr, tr, bc//tc, tc).transpose(0, 2, 1, 3)``.
"""

from __future__ import annotations

import concurrent.futures
import inspect

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npu_pipeline import packing, reference
from npu_pipeline.errors import DTypeError, NpuPipelineError, ShapeError
from npu_pipeline.reference import Rounding, Saturation

TILES = [(4, 8), (8, 8), (16, 16)]
DTYPES = [np.int8, np.int32]

#: Memory layouts of the source views the kernels must read in place (see make_view).
SOURCE_KINDS = ("c", "fortran", "transposed", "strided", "negative", "row_slice", "broadcast")
#: Output views the kernels must write in place (all writeable).
OUT_KINDS = ("c", "fortran", "transposed", "strided", "negative")


def random_array(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def make_view(rng, shape, dtype, kind):
    """A (h, w) array of random values with the memory layout ``kind``."""
    h, w = shape
    if kind == "c":
        return random_array(rng, (h, w), dtype)
    if kind == "fortran":
        return np.asfortranarray(random_array(rng, (h, w), dtype))
    if kind == "transposed":
        return random_array(rng, (w, h), dtype).T
    if kind == "strided":
        return random_array(rng, (2 * h + 1, 3 * w), dtype)[1::2, ::3]
    if kind == "negative":
        return random_array(rng, (h, w), dtype)[::-1, ::-1]
    if kind == "row_slice":
        return random_array(rng, (h + 3, w + 5), dtype)[2 : 2 + h, 4 : 4 + w]
    assert kind == "broadcast"
    return np.broadcast_to(random_array(rng, (1, w), dtype), (h, w))


def make_out(shape, dtype, kind, fill):
    """A writeable (h, w) view of kind ``kind`` and the container holding it."""
    h, w = shape
    if kind == "c":
        holder = np.full((h, w), fill, dtype)
        return holder, holder
    if kind == "fortran":
        holder = np.full((h, w), fill, dtype, order="F")
        return holder, holder
    if kind == "transposed":
        holder = np.full((w, h), fill, dtype)
        return holder, holder.T
    if kind == "strided":
        holder = np.full((2 * h + 1, 3 * w), fill, dtype)
        return holder, holder[1::2, ::3]
    assert kind == "negative"
    holder = np.full((h, w), fill, dtype)
    return holder, holder[::-1, ::-1]


def layout_of(block2d, layout, tile):
    """The numpy reference: a padded 2-D block as the flat buffer of ``layout``."""
    if layout == "row_major":
        return block2d.ravel()
    br, bc = block2d.shape
    tr, tc = tile
    return block2d.reshape(br // tr, tr, bc // tc, tc).transpose(0, 2, 1, 3).ravel()


def block_of(flat, block, layout, tile):
    """Inverse of :func:`layout_of`: read a flat slot back as a 2-D block (numpy only)."""
    br, bc = block
    if layout == "row_major":
        return flat[: br * bc].reshape(br, bc)
    tr, tc = tile
    tiles = flat[: br * bc].reshape(br // tr, bc // tc, tr, tc)
    return tiles.transpose(0, 2, 1, 3).reshape(br, bc)


def padded(region, block):
    out = np.zeros(block, dtype=region.dtype)
    out[: region.shape[0], : region.shape[1]] = region
    return out


def round_up(x, step):
    return -(-x // step) * step


# ---------------------------------------------------------------------------
# Pack / unpack round trips


@st.composite
def pack_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(packing.LAYOUTS))
    tile = draw(st.sampled_from(TILES))
    kind = draw(st.sampled_from(SOURCE_KINDS))
    h_src, w_src = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    r0 = draw(st.integers(0, h_src - 1))
    r1 = draw(st.integers(r0 + 1, h_src))
    c0 = draw(st.integers(0, w_src - 1))
    c1 = draw(st.integers(c0 + 1, w_src))
    extra = draw(st.tuples(st.integers(0, 2), st.integers(0, 2)))
    block = (
        round_up(r1 - r0, tile[0]) + extra[0] * tile[0],
        round_up(c1 - c0, tile[1]) + extra[1] * tile[1],
    )
    out_kind = draw(st.sampled_from(OUT_KINDS))
    seed = draw(st.integers(0, 2**32 - 1))
    return dtype, layout, tile, kind, (h_src, w_src), (r0, r1), (c0, c1), block, out_kind, seed


@given(pack_cases())
def test_pack_matches_numpy_layout_and_unpack_round_trips(case):
    dtype, layout, tile, kind, shape, rows, cols, block, out_kind, seed = case
    rng = np.random.default_rng(seed)
    src = make_view(rng, shape, dtype, kind)
    region = src[rows[0] : rows[1], cols[0] : cols[1]]
    size = block[0] * block[1]
    sentinel = 77
    dst = np.full(size + 9, sentinel, dtype=dtype)  # the tail must stay untouched

    packing.pack_block(src, rows, cols, dst, block, layout, tile)

    np.testing.assert_array_equal(dst[:size], layout_of(padded(region, block), layout, tile))
    assert (dst[size:] == sentinel).all()

    holder, out = make_out(region.shape, dtype, out_kind, fill=-5)
    packing.unpack_block(dst, block, layout, tile, out)
    np.testing.assert_array_equal(out, region)
    # Only the view's own elements were written.
    assert holder.size - (holder == -5).sum() <= region.size


@given(
    st.sampled_from(TILES),
    st.sampled_from(DTYPES),
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(0, 2**32 - 1),
)
def test_unpack_crops_the_top_left_of_a_larger_block(tile, dtype, h, w, seed):
    rng = np.random.default_rng(seed)
    block = (round_up(h, tile[0]) + tile[0], round_up(w, tile[1]))
    full = random_array(rng, block, dtype)
    flat = layout_of(full, "tile_major", tile).copy()
    out = np.empty((h, w), dtype)
    packing.unpack_block(flat, block, "tile_major", tile, out)
    np.testing.assert_array_equal(out, full[:h, :w])


def test_row_major_ignores_tile_and_tile_major_with_one_tile_is_row_major(rng):
    src = random_array(rng, (9, 13), np.int8)
    a = np.empty(12 * 16, np.int8)
    b = np.empty(12 * 16, np.int8)
    packing.pack_block(src, (0, 9), (0, 13), a, (12, 16), "row_major", (5, 7))
    packing.pack_block(src, (0, 9), (0, 13), b, (12, 16), "tile_major", (12, 16))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, padded(src, (12, 16)).ravel())


# ---------------------------------------------------------------------------
# The whole block GEMM data path: pack -> block products -> accumulate -> crop

SMALL_DIMS = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 13, 31, 61, 63, 64, 65]), st.integers(1, 70))
LARGE_K = st.sampled_from([1021, 2053, 4093, 4096])


@st.composite
def gemm_cases(draw):
    m, n = draw(SMALL_DIMS), draw(SMALL_DIMS)
    k = draw(st.one_of(SMALL_DIMS, st.integers(66, 300), LARGE_K))
    # npu1, npu2 (docs/hardware-facts.md#array-geometry)
    micro = draw(st.sampled_from([(4, 8, 8), (8, 8, 8)]))
    r, s, t = micro
    # Blocks on the micro-tile grid, at most 8 x 16 x 8 blocks so the test stays fast.
    bm = draw(st.sampled_from([b for b in (r, 16, 64, 128) if b * 8 >= m]))
    bk = draw(st.sampled_from([b for b in (s, 64, 512, 4096) if b * 16 >= k]))
    bn = draw(st.sampled_from([b for b in (t, 16, 64, 128) if b * 8 >= n]))
    layout = draw(st.sampled_from(packing.LAYOUTS))
    a_kind = draw(st.sampled_from(SOURCE_KINDS[:-1]))
    b_kind = draw(st.sampled_from(SOURCE_KINDS[:-1]))
    c_kind = draw(st.sampled_from(OUT_KINDS))
    seed = draw(st.integers(0, 2**32 - 1))
    return (m, k, n), micro, (bm, bk, bn), layout, a_kind, b_kind, c_kind, seed


def run_block_gemm(a, b, c, micro, blocks, layout):
    """The pipeline's data path with numpy standing in for the NPU.

    The "device" reads each input slot back with the layout's reshape and
    writes its int32 block product into an output slot in the same layout.
    """
    (m, k), n = a.shape, b.shape[1]
    r, s, t = micro
    bm, bk, bn = blocks
    slot_a = np.empty(bm * bk, np.int8)
    slot_b = np.empty(bk * bn, np.int8)
    for m0 in range(0, m, bm):
        m1 = min(m0 + bm, m)
        for n0 in range(0, n, bn):
            n1 = min(n0 + bn, n)
            for k0 in range(0, k, bk):
                k1 = min(k0 + bk, k)
                packing.pack_block(a, (m0, m1), (k0, k1), slot_a, (bm, bk), layout, (r, s))
                packing.pack_block(b, (k0, k1), (n0, n1), slot_b, (bk, bn), layout, (s, t))
                a_blk = block_of(slot_a, (bm, bk), layout, (r, s)).astype(np.int64)
                b_blk = block_of(slot_b, (bk, bn), layout, (s, t)).astype(np.int64)
                slot_c = layout_of((a_blk @ b_blk).astype(np.int32), layout, (r, t))
                packing.accumulate_block(
                    slot_c, (bm, bn), layout, (r, t), c[m0:m1, n0:n1], first=k0 == 0
                )


@given(gemm_cases())
def test_block_gemm_path_equals_exact_product(case):
    (m, k, n), micro, blocks, layout, a_kind, b_kind, c_kind, seed = case
    rng = np.random.default_rng(seed)
    a = make_view(rng, (m, k), np.int8, a_kind)
    b = make_view(rng, (k, n), np.int8, b_kind)
    _, c = make_out((m, n), np.int32, c_kind, fill=123456)  # garbage: first=True overwrites
    run_block_gemm(a, b, c, micro, blocks, layout)
    np.testing.assert_array_equal(c, a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("layout", packing.LAYOUTS)
def test_block_gemm_path_at_the_largest_k_and_extreme_values(layout):
    # All -128: every product term is +16384, the largest int32 sum per K.
    a = np.full((5, 4093), -128, np.int8)
    b = np.full((4093, 9), -128, np.int8)
    c = np.empty((5, 9), np.int32)
    run_block_gemm(a, b, c, (4, 8, 8), (8, 4096, 16), layout)
    assert (c == 4093 * 16384).all()


# ---------------------------------------------------------------------------
# Requantisation

ALL_MODES = [(r, s) for r in Rounding for s in Saturation]
SHIFTS = [0, 1, 2, 3, 7, 8, 15, 16, 30, 31]


def srs_inputs(rng):
    """Random int32 plus the extremes and exact ties for every shift in SHIFTS."""
    values = [
        random_array(rng, 4000, np.int32),
        rng.integers(-5000, 5000, 2000).astype(np.int32),
        np.array([-(2**31), -(2**31) + 1, -1, 0, 1, 2**31 - 2, 2**31 - 1], np.int32),
    ]
    for shift in SHIFTS[1:]:
        half = 1 << (shift - 1)
        q = np.arange(-6, 6, dtype=np.int64) << shift
        for x in (q + half, q - half, q + half - 1, q + half + 1):
            values.append(np.clip(x, -(2**31), 2**31 - 1).astype(np.int32))
    flat = np.concatenate(values)
    return np.resize(flat, (round_up(flat.size, 64) // 64, 64))


@pytest.mark.parametrize(("rounding", "saturation"), ALL_MODES, ids=lambda m: m.value)
def test_requantize_equals_reference_srs(rounding, saturation, rng):
    acc = srs_inputs(rng)
    out = np.empty(acc.shape, np.int8)
    for shift in SHIFTS:
        packing.requantize(acc, out, shift, rounding, saturation)
        expected = reference.srs(acc, shift, rounding, saturation)
        np.testing.assert_array_equal(out, expected, err_msg=f"shift={shift}")
    # Names work as well as members, and strided views in and out.
    view_in = np.asfortranarray(acc)[::-1]
    holder = np.zeros((acc.shape[1], acc.shape[0]), np.int8)
    packing.requantize(view_in, holder.T, 7, rounding.value, saturation.value)
    np.testing.assert_array_equal(holder.T, reference.srs(view_in, 7, rounding, saturation))


def test_requantize_hand_checked_ties():
    acc = np.array([[-3, -2, -1, 1, 2, 3, 5, -5]], np.int32)  # shift 1: -1.5 ... -2.5
    cases = {
        "floor": [-2, -1, -1, 0, 1, 1, 2, -3],
        "ceil": [-1, -1, 0, 1, 1, 2, 3, -2],
        "trunc": [-1, -1, 0, 0, 1, 1, 2, -2],
        "half_up": [-1, -1, 0, 1, 1, 2, 3, -2],
        "half_down": [-2, -1, -1, 0, 1, 1, 2, -3],
        "half_away": [-2, -1, -1, 1, 1, 2, 3, -3],
        "half_zero": [-1, -1, 0, 0, 1, 1, 2, -2],
        "half_even": [-2, -1, 0, 0, 1, 2, 2, -2],
        "half_odd": [-1, -1, -1, 1, 1, 1, 3, -3],
    }
    out = np.empty_like(acc, dtype=np.int8)
    for mode, expected in cases.items():
        packing.requantize(acc, out, 1, mode, "saturate")
        assert out.tolist() == [expected], mode


def test_requantize_saturation_modes_at_the_edges():
    acc = np.array([[-(2**31), -129, -128, -127, 127, 128, 255, 256, 2**31 - 1]], np.int32)
    out = np.empty(acc.shape, np.int8)
    packing.requantize(acc, out, 0, "floor", "saturate")
    assert out.tolist() == [[-128, -128, -128, -127, 127, 127, 127, 127, 127]]
    packing.requantize(acc, out, 0, "floor", "symmetric")
    assert out.tolist() == [[-127, -127, -127, -127, 127, 127, 127, 127, 127]]
    packing.requantize(acc, out, 0, "floor", "none")
    assert out.tolist() == [[0, 127, -128, -127, 127, -128, -1, 0, -1]]


@given(
    st.sampled_from(list(Rounding)),
    st.sampled_from(list(Saturation)),
    st.integers(0, 31),
    st.sampled_from(SOURCE_KINDS),
    st.sampled_from(OUT_KINDS),
    st.integers(1, 30),
    st.integers(1, 30),
    st.integers(0, 2**32 - 1),
)
def test_requantize_any_views_equals_reference(
    rounding, saturation, shift, kind, out_kind, h, w, seed
):
    acc = make_view(np.random.default_rng(seed), (h, w), np.int32, kind)
    _, out = make_out((h, w), np.int8, out_kind, fill=0)
    packing.requantize(acc, out, shift, rounding, saturation)
    np.testing.assert_array_equal(out, reference.srs(acc, shift, rounding, saturation))


# ---------------------------------------------------------------------------
# The tile16_legacy contract's tile pairs


def test_tile_pair_layout_is_a_tile_then_b_tile_with_k_innermost(rng):
    a = random_array(rng, (20, 40), np.int8)
    b = random_array(rng, (40, 18), np.int8)
    dst = np.full(2 * 3 * 2 * 512 + 5, 99, np.int8)
    pairs = packing.pack_tile_pairs(a, b, (0, 20), (0, 40), (0, 18), dst)
    assert pairs == 2 * 2 * 3
    pa, pb = padded(a, (32, 48)), padded(b, (48, 32))
    expected = []
    for i in range(2):
        for j in range(2):
            for k in range(3):
                expected.append(pa[16 * i : 16 * i + 16, 16 * k : 16 * k + 16].ravel())
                expected.append(pb[16 * k : 16 * k + 16, 16 * j : 16 * j + 16].ravel())
    np.testing.assert_array_equal(dst[: pairs * 512], np.concatenate(expected))
    assert (dst[pairs * 512 :] == 99).all()


def tile_pair_ranges(size, step):
    return [(lo, min(lo + step, size)) for lo in range(0, size, step)]


@given(
    st.integers(1, 70),
    st.integers(1, 90),
    st.integers(1, 70),
    st.sampled_from([16, 32, 48]),
    st.sampled_from(SOURCE_KINDS[:-1]),
    st.sampled_from(OUT_KINDS),
    st.integers(0, 2**32 - 1),
)
def test_tile_pair_path_equals_seed_wrapper(m, k, n, batch, a_kind, c_kind, seed):
    rng = np.random.default_rng(seed)
    a = make_view(rng, (m, k), np.int8, a_kind)
    b = make_view(rng, (k, n), np.int8, "c")
    _, acc = make_out((m, n), np.int32, c_kind, fill=0)
    acc[...] = 0
    for mr in tile_pair_ranges(m, batch):
        for kr in tile_pair_ranges(k, batch):
            for nr in tile_pair_ranges(n, batch):
                slot = np.empty(-((-batch // 16) ** 3) * 512, np.int8)
                pairs = packing.pack_tile_pairs(a, b, mr, kr, nr, slot)
                ins = slot[: pairs * 512].reshape(pairs, 2, 16, 16)
                outs = np.stack([reference.tile16_kernel(x[0], x[1]) for x in ins]).ravel()
                region = acc[mr[0] : mr[1], nr[0] : nr[1]]
                packing.accumulate_tile_pairs(outs, mr, kr, nr, region)
    c = np.empty((m, n), np.int8)
    packing.requantize(acc, c, 0, "floor", "saturate")
    np.testing.assert_array_equal(c, reference.seed_wrapper_matmul(a, b))


# ---------------------------------------------------------------------------
# Threads: nogil kernels from several threads at once


def test_every_kernel_is_eager_nogil_cached_and_never_parallel():
    dispatchers = [
        obj
        for _, obj in inspect.getmembers(packing)
        if isinstance(obj, numba.core.registry.CPUDispatcher)
    ]
    eager = [d for d in dispatchers if d.signatures]
    assert {d.py_func.__name__ for d in eager} == {
        "_pack_kernel",
        "_gather_kernel",
        "_pack_tile_pairs_kernel",
        "_accumulate_tile_pairs_kernel",
        "_requantize_kernel",
    }
    # The rest are helpers inlined into the kernels' numba IR, never called on their own.
    assert all(d.targetoptions.get("inline") == "always" for d in dispatchers if not d.signatures)
    for d in eager:
        assert d.targetoptions.get("nogil") is True, d
        assert not d.targetoptions.get("parallel"), d
        assert not d._can_compile, d  # eager: nothing left to compile inside a request
        assert type(d._cache).__name__ == "FunctionCache", d


def _thread_work(seed):
    rng = np.random.default_rng(seed)
    src = random_array(rng, (1100, 1300), np.int8)
    rows, cols, block = (37, 1061), (5, 1290), (1024, 1288)
    region = src[rows[0] : rows[1], cols[0] : cols[1]]
    acc = np.empty((1024, 1285), np.int32)
    for layout in packing.LAYOUTS:
        slot = np.empty(block[0] * block[1], np.int8)
        packing.pack_block(src, rows, cols, slot, block, layout, (4, 8))
        assert (slot == layout_of(padded(region, block), layout, (4, 8))).all()
        wide = slot.astype(np.int32)
        packing.accumulate_block(wide, block, layout, (4, 8), acc, first=True)
        packing.accumulate_block(wide, block, layout, (4, 8), acc, first=False)
        assert (acc == 2 * region.astype(np.int32)).all()
        out = np.empty(acc.shape, np.int8)
        packing.requantize(acc, out, 1, "half_even", "saturate")
        assert (out == region).all()
    return seed


def test_kernels_run_concurrently_from_four_threads():
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(_thread_work, range(8)))
    assert done == list(range(8))


# ---------------------------------------------------------------------------
# Bad input: typed errors with the what/expected/fix message


def _raises(error, match, fn, *args):
    """``fn(*args)`` raises ``error`` whose message names the problem (``match``)."""
    with pytest.raises(error, match=match) as info:
        fn(*args)
    assert isinstance(info.value, NpuPipelineError)
    assert "expected" in str(info.value)


def test_pack_block_refuses_bad_input():
    src = np.zeros((10, 12), np.int8)
    dst = np.zeros(16 * 16, np.int8)
    rows, cols, geometry = (0, 10), (0, 12), ((16, 16), "tile_major", (8, 8))
    packing.pack_block(src, rows, cols, dst, *geometry)  # the baseline is valid
    pack = packing.pack_block
    _raises(DTypeError, "float32", pack, src.astype(np.float32), rows, cols, dst, *geometry)
    _raises(DTypeError, "list", pack, src.tolist(), rows, cols, dst, *geometry)
    _raises(DTypeError, "dst is dtype int32", pack, src, rows, cols, dst.view(np.int32), *geometry)
    _raises(ShapeError, "1 dimension", pack, src[0], rows, cols, dst, *geometry)
    _raises(ShapeError, "rows", pack, src, (0, 11), cols, dst, *geometry)
    _raises(ShapeError, "rows", pack, src, (-1, 5), cols, dst, *geometry)
    _raises(ShapeError, "rows", pack, src, (5, 5), cols, dst, *geometry)
    _raises(ShapeError, "cols", pack, src, rows, (3, 13), dst, *geometry)
    _raises(ShapeError, "holds 100", pack, src, rows, cols, dst[:100], *geometry)
    _raises(ShapeError, "strided", pack, src, rows, cols, dst[::2], *geometry)
    _raises(ShapeError, "does not fit", pack, src, rows, cols, dst, (16, 8), "tile_major", (8, 8))
    _raises(ShapeError, "divide", pack, src, rows, cols, dst, (16, 16), "tile_major", (8, 6))
    _raises(ShapeError, "layout", pack, src, rows, cols, dst, (16, 16), "column_major", (8, 8))
    readonly = dst.copy()
    readonly.flags.writeable = False
    _raises(ShapeError, "read-only", pack, src, rows, cols, readonly, *geometry)
    shared = np.zeros(400, np.int8)
    inside = shared[:120].reshape(10, 12)
    _raises(ShapeError, "overlaps", pack, inside, rows, cols, shared[100:], *geometry)


def test_unpack_and_accumulate_refuse_bad_input():
    buf = np.zeros(64, np.int32)
    acc = np.zeros((8, 8), np.int32)
    row = ((8, 8), "row_major", (1, 1))
    accumulate, unpack = packing.accumulate_block, packing.unpack_block
    _raises(DTypeError, "int8", accumulate, buf.view(np.int8), *row, acc, True)
    _raises(DTypeError, "int64", accumulate, buf, *row, acc.astype(np.int64), True)
    _raises(ShapeError, "does not fit", accumulate, buf, (8, 4), "row_major", (1, 1), acc, True)
    _raises(ShapeError, "holds 60", accumulate, buf[:60], *row, acc, True)
    _raises(ShapeError, "overlaps", accumulate, buf, *row, buf.reshape(8, 8), True)
    unaligned = np.zeros(4 * 64 + 1, np.int8)[1:].view(np.int32)
    _raises(ShapeError, "aligned", accumulate, unaligned, *row, acc, True)
    _raises(DTypeError, "int8", unpack, buf, *row, np.zeros((8, 8), np.int8))
    _raises(ShapeError, "divide", unpack, buf, (8, 8), "tile_major", (3, 8), acc)
    unpack(buf, *row, acc[:0])  # an empty output is valid and a no-op


def test_requantize_refuses_bad_input():
    acc = np.zeros((4, 4), np.int32)
    out = np.zeros((4, 4), np.int8)
    requantize = packing.requantize
    _raises(DTypeError, "int64", requantize, acc.astype(np.int64), out, 0, "floor", "none")
    _raises(DTypeError, "uint8", requantize, acc, out.view(np.uint8), 0, "floor", "none")
    _raises(ShapeError, "out is", requantize, acc, out[:3], 0, "floor", "none")
    _raises(ShapeError, "overlaps", requantize, acc, acc.view(np.int8)[:, :4], 0, "floor", "none")
    bad_modes = ((32, "floor", "none"), (-1, "floor", "none"), (1.0, "floor", "none"))
    bad_modes += ((1, "round", "none"), (1, "floor", "clip"))
    for bad in bad_modes:
        with pytest.raises(ValueError, match="expected"):
            requantize(acc, out, *bad)


def test_tile_pairs_refuse_bad_input():
    a = np.zeros((32, 32), np.int8)
    b = np.zeros((32, 32), np.int8)
    dst = np.zeros(8 * 512, np.int8)
    full = ((0, 32), (0, 32), (0, 32))
    pack, accumulate = packing.pack_tile_pairs, packing.accumulate_tile_pairs
    _raises(DTypeError, "int32", pack, a.astype(np.int32), b, *full, dst)
    _raises(ShapeError, "inner dimensions", pack, a, b[:16], *full, dst)
    _raises(ShapeError, "m_range", pack, a, b, (8, 32), (0, 32), (0, 32), dst)
    _raises(ShapeError, "m_range", pack, a, b, (0, 33), (0, 32), (0, 32), dst)
    _raises(ShapeError, "holds 4095", pack, a, b, *full, dst[:-1])
    src = np.zeros(8 * 256, np.int8)
    acc = np.zeros((32, 32), np.int32)
    _raises(ShapeError, "acc has shape", accumulate, src, (0, 32), (0, 32), (0, 16), acc)
    _raises(ShapeError, "holds 2047", accumulate, src[:-1], *full, acc)
    _raises(DTypeError, "int8", accumulate, src, *full, acc.astype(np.int8))
