//===- mm.cc - int8 x int8 -> int32 core-tile matmul for AIE-ML / AIE2P ---===//
//
// Part of npu_pipeline (MIT). Written for this project; the structure follows
// the public mlir-aie GEMM kernels (aie_kernels/aie2*/mm.cc) but shares no code.
//
// One call multiplies an m x k int8 tile of A by a k x n int8 tile of B and
// ADDS the product into an m x n int32 tile of C. The IRON design (design.py)
// zeroes C once per output tile with zero_i32() and then calls
// matmul_i8_i32() once per k-tile, so C ends up holding the exact int32 sum
// over the whole K of the block.
//
// Why int32 all the way, and requantise only once on the host:
//   The seed project's kernel narrowed every 16x16 partial product to int8
//   (clamp((A_t @ B_t) >> 7)) and its host summed those clipped partials over
//   K. Shift-truncation and saturation then compound once K exceeds one tile,
//   so the result is not (A @ B) >> 7 (docs/why.md#the-seeds-measurements).
//   Here nothing is narrowed on the NPU: partial sums stay int32
//   (exact while K < 2^31 / 2^14 = 131072, far above the contract's 4096),
//   leave the array as int32, and the host applies one shift-round-saturate
//   to the finished sum, with the rounding mode it names.
//
// Why the accumulator is a DMA buffer, not a local array:
//   The seed's 64x64 attempt kept an int32 accumulator on the core stack. A
//   64x64 int32 tile is 16 KB; the default core stack is 1 KB and the whole
//   compute tile has 64 KB of data memory, so it could not work. Here the
//   accumulator IS the output ObjectFifo buffer (c), which the compiler
//   places in data memory next to the A/B buffers: 2*(4+4+16) KB = 48 KB
//   with double buffering. These functions use no stack arrays at all.
//
// Data contract (identical for both paths below): every tile is TILE-MAJOR on
// the micro-tile grid (r, s, t) of aie::mmul:
//   A (m x k): (m/r) x (k/s) micro-tiles of r x s, micro-tiles in row-major
//              order, each micro-tile row-major and contiguous;
//   B (k x n): (k/s) x (n/t) micro-tiles of s x t, same ordering;
//   C (m x n): (m/r) x (n/t) micro-tiles of r x t, same ordering.
// The memory-tile DMAs produce this layout from the row-major block that the
// host puts in the buffer objects (see design.py), so the host never tiles.
//
// Two builds:
//   - AIE (Peano clang++ --target=aie2 / aie2p): vectorised aie::mmul path
//     for the compiled tile shape, scalar path for anything else.
//   - NPU_HOST_SCALAR defined (g++/clang on the host): no AIE headers, only
//     the scalar path. The tests load this build with ctypes, so the scalar
//     code that the AIE build falls back to is the code that is tested.
//
//===----------------------------------------------------------------------===//

#include <stdint.h>

// Micro-tile of aie::mmul for int8 x int8 with a 32-bit accumulator. AIE-ML
// (npu1: Phoenix, Hawk Point) has a 4x8x8 int8 mode; AIE2P (npu2: Strix,
// Krackan) has 8x8x8. The Makefile passes -DGEMM_NPU2 for npu2 builds; the
// host build takes r, s, t as arguments instead.
#if defined(GEMM_NPU2)
#define GEMM_MICRO_R 8
#define GEMM_MICRO_S 8
#define GEMM_MICRO_T 8
#else
#define GEMM_MICRO_R 4
#define GEMM_MICRO_S 8
#define GEMM_MICRO_T 8
#endif

// Core tile the vectorised path is compiled for (kernel.json "core_tile").
#ifndef DIM_M
#define DIM_M 64
#endif
#ifndef DIM_K
#define DIM_K 64
#endif
#ifndef DIM_N
#define DIM_N 64
#endif

// ---------------------------------------------------------------------------
// Scalar path: compiled in both builds.

namespace {

bool geometry_ok(int m, int k, int n, int r, int s, int t) {
  if (m <= 0 || k <= 0 || n <= 0 || r <= 0 || s <= 0 || t <= 0)
    return false;
  return m % r == 0 && k % s == 0 && n % t == 0;
}

// Walks the tiles in the same order as the vector path (output micro-tile,
// then k), so that both paths read the same bytes for the same result and a
// layout mistake shows up in the host test rather than on the NPU.
void matmul_scalar(const int8_t *a, const int8_t *b, int32_t *c, int m, int k,
                   int n, int r, int s, int t) {
  const int tiles_k = k / s, tiles_n = n / t;
  for (int ti = 0; ti < m / r; ++ti) {
    for (int tj = 0; tj < tiles_n; ++tj) {
      int32_t *c_tile = c + (ti * tiles_n + tj) * r * t;
      for (int tk = 0; tk < tiles_k; ++tk) {
        const int8_t *a_tile = a + (ti * tiles_k + tk) * r * s;
        const int8_t *b_tile = b + (tk * tiles_n + tj) * s * t;
        for (int i = 0; i < r; ++i) {
          for (int j = 0; j < t; ++j) {
            // uint32_t arithmetic: wraps modulo 2^32 like the hardware
            // accumulator would, instead of signed overflow (undefined
            // behaviour in C++) if a caller ever exceeded the exact range.
            uint32_t sum = 0;
            for (int p = 0; p < s; ++p)
              sum += (uint32_t)((int32_t)a_tile[i * s + p] *
                                (int32_t)b_tile[p * t + j]);
            uint32_t acc = (uint32_t)c_tile[i * t + j] + sum;
            c_tile[i * t + j] = (int32_t)acc;
          }
        }
      }
    }
  }
}

} // namespace

// ---------------------------------------------------------------------------
// Vectorised path: AIE builds only.

#ifndef NPU_HOST_SCALAR

#define NOCPP
#include <aie_api/aie.hpp>

// Chess wants a hint to software-pipeline the inner loop; Peano (clang) has
// no such keyword and pipelines on its own.
#if defined(__chess__)
#define GEMM_PIPELINE chess_prepare_for_pipelining
#else
#define GEMM_PIPELINE
#endif

namespace {

// 2x2 register blocking: each step of the k loop loads two A micro-tiles and
// two B micro-tiles and issues four mmul MACs, so every loaded vector feeds
// two MACs. Four accumulators (4x8 or 8x8 int32 lanes each) fit the
// accumulator register file of both generations.
template <unsigned m, unsigned k, unsigned n, unsigned r, unsigned s,
          unsigned t>
void matmul_vector(const int8_t *__restrict pa, const int8_t *__restrict pb,
                   int32_t *__restrict pc) {
  using MMUL = aie::mmul<r, s, t, int8, int8, acc32>;
  constexpr unsigned tiles_m = m / r, tiles_k = k / s, tiles_n = n / t;
  static_assert(m % r == 0 && k % s == 0 && n % t == 0,
                "core tile must lie on the micro-tile grid");
  static_assert(tiles_m % 2 == 0 && tiles_n % 2 == 0,
                "2x2 blocking needs an even number of micro-tiles in m and n");

  for (unsigned ti = 0; ti < tiles_m; ti += 2) {
    for (unsigned tj = 0; tj < tiles_n; tj += 2) {
      int32_t *__restrict c0 = pc + (ti * tiles_n + tj) * MMUL::size_C;
      int32_t *__restrict c1 = c0 + tiles_n * MMUL::size_C;

      // C holds the sum of earlier k-tiles: start from it, not from zero.
      MMUL acc00(aie::load_v<MMUL::size_C>(c0));
      MMUL acc01(aie::load_v<MMUL::size_C>(c0 + MMUL::size_C));
      MMUL acc10(aie::load_v<MMUL::size_C>(c1));
      MMUL acc11(aie::load_v<MMUL::size_C>(c1 + MMUL::size_C));

      const int8_t *__restrict a0 = pa + ti * tiles_k * MMUL::size_A;
      const int8_t *__restrict a1 = a0 + tiles_k * MMUL::size_A;
      const int8_t *__restrict b0 = pb + tj * MMUL::size_B;

      for (unsigned tk = 0; tk < tiles_k; ++tk) GEMM_PIPELINE {
          aie::vector<int8, MMUL::size_A> va0 = aie::load_v<MMUL::size_A>(a0);
          aie::vector<int8, MMUL::size_A> va1 = aie::load_v<MMUL::size_A>(a1);
          aie::vector<int8, MMUL::size_B> vb0 = aie::load_v<MMUL::size_B>(b0);
          aie::vector<int8, MMUL::size_B> vb1 =
              aie::load_v<MMUL::size_B>(b0 + MMUL::size_B);
          a0 += MMUL::size_A;
          a1 += MMUL::size_A;
          b0 += tiles_n * MMUL::size_B; // next micro-tile row of B
          acc00.mac(va0, vb0);
          acc01.mac(va0, vb1);
          acc10.mac(va1, vb0);
          acc11.mac(va1, vb1);
        }

      // Shift 0: int32 out of a 32-bit accumulator is the exact value; no
      // narrowing happens on the NPU (see the header comment).
      aie::store_v(c0, acc00.template to_vector<int32>());
      aie::store_v(c0 + MMUL::size_C, acc01.template to_vector<int32>());
      aie::store_v(c1, acc10.template to_vector<int32>());
      aie::store_v(c1 + MMUL::size_C, acc11.template to_vector<int32>());
    }
  }
}

template <unsigned count> void zero_vector(int32_t *__restrict c) {
  constexpr unsigned lanes = 16; // one 512-bit store
  static_assert(count % lanes == 0, "tile must be a whole number of stores");
  const aie::vector<int32, lanes> zeros = aie::zeros<int32, lanes>();
  for (unsigned i = 0; i < count; i += lanes)
    aie::store_v(c + i, zeros);
}

} // namespace

#endif // NPU_HOST_SCALAR

// ---------------------------------------------------------------------------
// Entry points. One C ABI for both builds: the IRON design passes the tile
// shape and micro-tile as constants, the host test passes any shape. The AIE
// build takes the vector path only for the shape it was compiled for, so a
// design that asks for another shape is still correct, just slow.

extern "C" {

// Non-zero when (m, k, n) lies on the (r, s, t) grid, i.e. when
// matmul_i8_i32 would do work for these arguments.
int gemm_tile_geometry_ok(int m, int k, int n, int r, int s, int t) {
  return geometry_ok(m, k, n, r, s, t) ? 1 : 0;
}

// Zero an m x n int32 accumulator tile (layout-agnostic: every element).
void zero_i32(int32_t *c, int m, int n) {
  if (m <= 0 || n <= 0)
    return;
#ifndef NPU_HOST_SCALAR
  if (m == DIM_M && n == DIM_N) {
    zero_vector<DIM_M * DIM_N>(c);
    return;
  }
#endif
  for (int i = 0; i < m * n; ++i)
    c[i] = 0;
}

// c += a @ b on tile-major tiles (see the data contract above). Leaves c
// untouched when the geometry is invalid: there is no error channel from a
// core, and writing garbage would be worse than writing nothing.
void matmul_i8_i32(const int8_t *a, const int8_t *b, int32_t *c, int m, int k,
                   int n, int r, int s, int t) {
  if (!geometry_ok(m, k, n, r, s, t))
    return;
#ifndef NPU_HOST_SCALAR
  if (m == DIM_M && k == DIM_K && n == DIM_N && r == GEMM_MICRO_R &&
      s == GEMM_MICRO_S && t == GEMM_MICRO_T) {
    matmul_vector<DIM_M, DIM_K, DIM_N, GEMM_MICRO_R, GEMM_MICRO_S,
                  GEMM_MICRO_T>(a, b, c);
    return;
  }
#endif
  matmul_scalar(a, b, c, m, k, n, r, s, t);
}

} // extern "C"
