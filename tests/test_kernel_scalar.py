"""Host tests of the NPU side of ``gemm_i8_i32`` (kernels/gemm_i8_i32/).

No NPU and no mlir-aie here, so three things are checked that can be checked:

1. mm.cc's scalar path (built with ``-DNPU_HOST_SCALAR``), against
   ``A.astype(int64) @ B.astype(int64)`` on tile-major tiles laid out in numpy,
   for both micro-tile geometries (npu1 4x8x8, npu2 8x8x8).
2. mm.cc's vectorised path, built on the host against ``host_mock/``, a
   stand-in for the few AIE API calls it makes. This checks the path's
   addressing and accumulation, not that Peano accepts it.
3. design.py's data movement: a block pushed through a numpy model of the shim
   transfers, the memory-tile re-tiling and the 4-row join, with the
   host-built kernel doing each core's work, must come out as ``A @ B``.

Tests that need the kernel are skipped, with the reason, when g++ is missing;
the design-only tests still run.
"""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import exact, random_int8

KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels" / "gemm_i8_i32"
CXX = shutil.which("g++")

MICRO_TILES = {"npu1": (4, 8, 8), "npu2": (8, 8, 8)}
CORE = 64  # kernel.json core_tile, all three dimensions


# ---------------------------------------------------------------------------
# Building and calling the kernel


def _build(out_dir: Path, name: str, *flags: str) -> ctypes.CDLL:
    library = out_dir / f"lib{name}.so"
    command = [CXX, "-std=c++17", "-O2", "-Wall", "-Wextra", "-shared", "-fPIC"]
    command += [*flags, "-o", str(library), str(KERNEL_DIR / "mm.cc")]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    lib = ctypes.CDLL(str(library))
    i8p, i32p, c_int = ctypes.POINTER(ctypes.c_int8), ctypes.POINTER(ctypes.c_int32), ctypes.c_int
    lib.zero_i32.argtypes = [i32p, c_int, c_int]
    lib.zero_i32.restype = None
    lib.matmul_i8_i32.argtypes = [i8p, i8p, i32p] + [c_int] * 6
    lib.matmul_i8_i32.restype = None
    lib.gemm_tile_geometry_ok.argtypes = [c_int] * 6
    lib.gemm_tile_geometry_ok.restype = c_int
    return lib


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> dict[str, ctypes.CDLL]:
    """The scalar build, and the vector path on the host mock for each generation."""
    if CXX is None:
        pytest.skip("g++ not found on PATH: cannot build mm.cc's host paths")
    out = tmp_path_factory.mktemp("mm_build")
    mock = f"-I{KERNEL_DIR / 'host_mock'}"
    return {
        "scalar": _build(out, "mm_scalar", "-DNPU_HOST_SCALAR"),
        "npu1": _build(out, "mm_mock_npu1", mock),
        "npu2": _build(out, "mm_mock_npu2", mock, "-DGEMM_NPU2"),
    }


def _ptr(array: np.ndarray, ctype):
    assert array.flags.c_contiguous
    return array.ctypes.data_as(ctypes.POINTER(ctype))


def zero(lib, c: np.ndarray, m: int, n: int) -> None:
    lib.zero_i32(_ptr(c, ctypes.c_int32), m, n)


def matmul(lib, a, b, c, m, k, n, micro) -> None:
    """c += a @ b on tile-major flat tiles (c is updated in place)."""
    assert a.dtype == np.int8 and b.dtype == np.int8 and c.dtype == np.int32
    lib.matmul_i8_i32(
        _ptr(a, ctypes.c_int8), _ptr(b, ctypes.c_int8), _ptr(c, ctypes.c_int32), m, k, n, *micro
    )


# ---------------------------------------------------------------------------
# Tile-major layout, written independently of mm.cc with reshape/transpose


def to_tiles(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Row-major matrix -> flat tile-major: (rows x cols) tiles, tiles and insides row-major."""
    h, w = x.shape
    return np.ascontiguousarray(
        x.reshape(h // rows, rows, w // cols, cols).transpose(0, 2, 1, 3)
    ).reshape(-1)


def from_tiles(flat: np.ndarray, h: int, w: int, rows: int, cols: int) -> np.ndarray:
    return flat.reshape(h // rows, w // cols, rows, cols).transpose(0, 2, 1, 3).reshape(h, w)


def tile_product(lib, a: np.ndarray, b: np.ndarray, micro, k_tile: int | None = None):
    """A @ B through the kernel: zero once, then one call per k-tile, like a core does."""
    (m, big_k), n = a.shape, b.shape[1]
    r, s, t = micro
    k_tile = k_tile or big_k
    c = np.empty(m * n, dtype=np.int32)
    zero(lib, c, m, n)
    for k0 in range(0, big_k, k_tile):
        a_tm = to_tiles(a[:, k0 : k0 + k_tile], r, s)
        b_tm = to_tiles(b[k0 : k0 + k_tile], s, t)
        matmul(lib, a_tm, b_tm, c, m, k_tile, n, micro)
    return from_tiles(c, m, n, r, t)


# ---------------------------------------------------------------------------
# 1. Scalar path


def test_layout_helpers_round_trip_and_place_tiles(rng):
    x = np.arange(8 * 16).reshape(8, 16)
    flat = to_tiles(x, 4, 8)
    assert np.array_equal(from_tiles(flat, 8, 16, 4, 8), x)
    # Second micro-tile of the first tile row starts at column 8; inside a
    # tile the second row starts s=8 elements in.
    assert flat[32] == x[0, 8] and flat[8] == x[1, 0]


@pytest.mark.parametrize("generation", ["npu1", "npu2"])
def test_core_tile_product_is_exact(libs, rng, generation):
    micro = MICRO_TILES[generation]
    a = random_int8(rng, (CORE, CORE))
    b = random_int8(rng, (CORE, CORE))
    assert np.array_equal(tile_product(libs["scalar"], a, b, micro), exact(a, b))


@pytest.mark.parametrize("generation", ["npu1", "npu2"])
def test_accumulates_over_k_tiles_into_existing_c(libs, rng, generation):
    micro = MICRO_TILES[generation]
    r, s, t = micro
    a = random_int8(rng, (CORE, 5 * CORE))
    b = random_int8(rng, (5 * CORE, CORE))
    assert np.array_equal(tile_product(libs["scalar"], a, b, micro, CORE), exact(a, b))

    # matmul adds to whatever C holds: it must not zero it itself.
    start = rng.integers(-(2**20), 2**20, size=(CORE, CORE), dtype=np.int32)
    c = to_tiles(start, r, t)
    matmul(libs["scalar"], to_tiles(a[:, :CORE], r, s), to_tiles(b[:CORE], s, t), c,
           CORE, CORE, CORE, micro)  # fmt: skip
    assert np.array_equal(from_tiles(c, CORE, CORE, r, t), start + exact(a[:, :CORE], b[:CORE]))


@pytest.mark.parametrize("generation", ["npu1", "npu2"])
@pytest.mark.parametrize(
    ("a_value", "b_value", "big_k"),
    [(-128, -128, 64), (-128, -128, 4096), (-128, 127, 4096), (127, 127, 1024)],
)
def test_extremes_stay_exact_int32(libs, generation, a_value, b_value, big_k):
    # -128 * -128 = 16384 summed over K: 1,048,576 at K=64 and 67,108,864 at
    # K=4096 (the contract's max). Any int8/int16 narrowing on the way, like
    # the seed's clamp(>> 7) per tile, would break these by orders of magnitude.
    micro = MICRO_TILES[generation]
    a = np.full((CORE, big_k), a_value, dtype=np.int8)
    b = np.full((big_k, CORE), b_value, dtype=np.int8)
    got = tile_product(libs["scalar"], a, b, micro, CORE)
    assert np.all(got == a_value * b_value * big_k)
    assert np.array_equal(got, exact(a, b))


@pytest.mark.parametrize(
    ("shape", "micro"),
    [((4, 8, 8), (4, 8, 8)), ((8, 24, 16), (4, 8, 8)), ((32, 16, 48), (8, 8, 8)),
     ((16, 64, 128), (8, 8, 8)), ((12, 40, 24), (4, 8, 8))],
)  # fmt: skip
def test_other_tile_shapes_random(libs, rng, shape, micro):
    m, k, n = shape
    a = random_int8(rng, (m, k))
    b = random_int8(rng, (k, n))
    assert np.array_equal(tile_product(libs["scalar"], a, b, micro), exact(a, b))


def test_zero_clears_every_element(libs):
    c = np.full(CORE * CORE, -7, dtype=np.int32)
    zero(libs["scalar"], c, CORE, CORE)
    assert not c.any()


def test_bad_geometry_is_reported_and_leaves_c_untouched(libs, rng):
    lib = libs["scalar"]
    assert lib.gemm_tile_geometry_ok(64, 64, 64, 4, 8, 8) == 1
    for bad in [(63, 64, 64, 4, 8, 8), (64, 60, 64, 4, 8, 8), (64, 64, 0, 8, 8, 8),
                (64, 64, 64, 0, 8, 8)]:  # fmt: skip
        assert lib.gemm_tile_geometry_ok(*bad) == 0
    a = random_int8(rng, CORE * CORE)
    b = random_int8(rng, CORE * CORE)
    c = np.full(CORE * CORE, 5, dtype=np.int32)
    matmul(lib, a, b, c, 63, 64, 64, (4, 8, 8))
    assert np.all(c == 5)


# ---------------------------------------------------------------------------
# 2. Vector path (on the host stand-in of the AIE API)


@pytest.mark.parametrize("generation", ["npu1", "npu2"])
def test_vector_path_matches_exact(libs, rng, generation):
    micro = MICRO_TILES[generation]
    a = random_int8(rng, (CORE, 3 * CORE))
    b = random_int8(rng, (3 * CORE, CORE))
    a[:3], b[:, :5] = -128, -128  # extremes in some lanes of every micro-tile row
    assert np.array_equal(tile_product(libs[generation], a, b, micro, CORE), exact(a, b))


def test_vector_build_falls_back_to_scalar_for_other_shapes(libs, rng):
    # npu1 build asked for the npu2 micro-tile and a smaller tile: still exact.
    a = random_int8(rng, (32, 64))
    b = random_int8(rng, (64, 48))
    assert np.array_equal(tile_product(libs["npu1"], a, b, (8, 8, 8)), exact(a, b))


# ---------------------------------------------------------------------------
# 3. design.py: data movement of a whole block


@pytest.fixture(scope="module")
def design():
    spec = importlib.util.spec_from_file_location("gemm_i8_i32_design", KERNEL_DIR / "design.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def simulate_block(design, lib, g, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Run one block through the design's data movement, cores doing real kernel calls."""
    m, k, n = g.m, g.k, g.n
    rows, cols, micro = g.rows, g.columns, g.micro_tile
    transfers = [tr for group in design.runtime_plan(g) for tr in group]
    a_flat, b_flat = a.reshape(-1), b.reshape(-1)

    def objects(operand, fifo, source, size, dims):
        """Shim stream of one FIFO, cut into memory-tile objects, re-tiled for the cores."""
        parts = [
            source[tr.indices()] for tr in transfers if (tr.operand, tr.fifo) == (operand, fifo)
        ]
        stream = np.concatenate(parts)
        assert stream.size % size == 0
        order = design.pattern_indices(0, [d[0] for d in dims], [d[1] for d in dims])
        assert np.array_equal(np.sort(order), np.arange(size))  # a permutation
        return np.ascontiguousarray(stream.reshape(-1, size)[:, order])

    a_objs = {
        row: objects("A", row, a_flat, m * k, design.a_to_core_dims(g)) for row in range(rows)
    }
    b_objs = {
        col: objects("B", col, b_flat, k * n, design.b_to_core_dims(g)) for col in range(cols)
    }

    params = design.runtime_parameters(g)
    tiles, k_steps = params[design.RTP_TILES], params[design.RTP_K_STEPS]
    c_tiles = {}
    for row in range(rows):
        for col in range(cols):
            # Broadcast FIFOs: every core of a row sees every A object, every
            # core of a column every B object, in order.
            assert len(a_objs[row]) == len(b_objs[col]) == tiles * k_steps
            out = []
            for tile in range(tiles):
                acc = np.empty(m * n, dtype=np.int32)
                zero(lib, acc, m, n)
                for step in range(tile * k_steps, (tile + 1) * k_steps):
                    matmul(lib, a_objs[row][step], b_objs[col][step], acc, m, k, n, micro)
                out.append(acc)
            c_tiles[row, col] = out

    c_dims = design.c_to_shim_dims(g)
    c_order = design.pattern_indices(0, [d[0] for d in c_dims], [d[1] for d in c_dims])
    c = np.zeros(g.M * g.N, dtype=np.int64)
    written = np.zeros(g.M * g.N, dtype=np.int64)
    for col in range(cols):
        joined = [
            np.concatenate([c_tiles[row, col][q] for row in range(rows)]) for q in range(tiles)
        ]
        stream = np.concatenate([obj[c_order] for obj in joined])
        pos = 0
        for tr in (tr for tr in transfers if (tr.operand, tr.fifo) == ("C", col)):
            idx = tr.indices()
            c[idx] = stream[pos : pos + idx.size]
            np.add.at(written, idx, 1)
            pos += idx.size
        assert pos == stream.size  # the drains take exactly what the column produces
    assert np.all(written == 1)  # every output element written once
    return c.reshape(g.M, g.N)


@pytest.mark.parametrize(
    ("generation", "shape", "kernel"),
    [
        ("npu1", (256, 64, 256), "npu1"),  # smallest block: one tile per core
        ("npu1", (768, 128, 512), "npu1"),  # 3 row blocks: a full and a partial task group
        ("npu1", (512, 192, 256), "scalar"),  # the scalar build inside the design
        ("npu2", (256, 192, 1024), "npu2"),
    ],
)
def test_block_moves_through_design_exactly(libs, rng, design, generation, shape, kernel):
    g = design.Geometry(generation, *shape)
    g.check()
    a = random_int8(rng, (g.M, g.K))
    b = random_int8(rng, (g.K, g.N))
    a[0, :], b[:, -1] = -128, -128  # a corner at the extreme
    assert np.array_equal(simulate_block(design, libs[kernel], g, a, b), exact(a, b))


@pytest.mark.parametrize("generation", ["npu1", "npu2"])
def test_max_block_fits_shim_dma_limits(design, generation):
    g = design.Geometry(generation, *design.MAX_BLOCK)
    assert g.problems() == []
    transfers = [tr for group in design.runtime_plan(g) for tr in group]
    assert all(tr.sizes[0] <= 64 and tr.sizes[2] <= 1023 for tr in transfers)
    assert all(tr.sizes[3] * tr.itemsize // 4 <= 1023 for tr in transfers)
    # BD budget: two task groups in flight on a shim, 16 BDs per shim tile.
    per_shim = {}
    for tr in design.runtime_plan(g)[0]:
        per_shim[tr.column] = per_shim.get(tr.column, 0) + 1
    assert 2 * max(per_shim.values()) <= 16


def test_geometry_refuses_blocks_off_its_grid(design):
    with pytest.raises(ValueError, match=r"M=100 is not a positive multiple of 256"):
        design.Geometry("npu1", 100, 64, 256).check()
    with pytest.raises(ValueError, match=r"N=256 is not a positive multiple of 512"):
        design.Geometry("npu2", 256, 64, 256).check()
    with pytest.raises(ValueError, match=r"K=8192 exceeds the compiled maximum 4096"):
        design.Geometry("npu1", 256, 8192, 256).check()


def test_array_fingerprint_ignores_only_the_runtime_sequence(design):
    def module(sizes, core="%c = aie.core(%t) {\n  aie.end\n}"):
        return (
            "module {\n  aie.device(npu1_4col) {\n"
            f"    {core}\n"
            f"    aiex.runtime_sequence(%arg0: memref<{sizes}xi8>) {{\n"
            "      aiex.npu.dma_memcpy_nd {x} \n    }\n  }\n}"
        )

    small, big = module(65536), module(8388608)
    assert design.array_fingerprint(small) == design.array_fingerprint(big)
    assert "runtime_sequence" not in design.array_fingerprint(small)
    other = module(65536, core="%c = aie.core(%t2) {\n  aie.end\n}")
    assert design.array_fingerprint(other) != design.array_fingerprint(small)
