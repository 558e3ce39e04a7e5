// A host-side stand-in for the few AIE API pieces mm.cc's vector path uses.
//
// NOT the AIE API and not cycle- or register-accurate: it exists only so the
// host tests can compile mm.cc's vectorised path with g++ and check its
// addressing (2x2 blocking, micro-tile strides, accumulate-into-C) against
// numpy. It implements the documented semantics of aie::mmul: the A, B and C
// vectors are r x s, s x t and r x t matrices in row-major order, and
// mac() adds A @ B into the accumulator. Whether the real compiler accepts
// mm.cc is only known after a Peano build on a machine with mlir-aie.
#pragma once

#include <stdint.h>

using int8 = int8_t;
using int32 = int32_t;

struct acc32 {};

namespace aie {

template <typename T, unsigned N> struct vector {
  T data[N];
};

template <unsigned N, typename T> vector<T, N> load_v(const T *p) {
  vector<T, N> v;
  for (unsigned i = 0; i < N; ++i)
    v.data[i] = p[i];
  return v;
}

template <typename T, unsigned N> void store_v(T *p, const vector<T, N> &v) {
  for (unsigned i = 0; i < N; ++i)
    p[i] = v.data[i];
}

template <typename T, unsigned N> vector<T, N> zeros() {
  vector<T, N> v;
  for (unsigned i = 0; i < N; ++i)
    v.data[i] = 0;
  return v;
}

template <unsigned R, unsigned S, unsigned T, typename TA, typename TB,
          typename Acc>
struct mmul {
  static constexpr unsigned size_A = R * S;
  static constexpr unsigned size_B = S * T;
  static constexpr unsigned size_C = R * T;

  // Wrapping uint32 lanes: a 32-bit accumulator, without signed-overflow UB.
  uint32_t lanes[size_C];

  explicit mmul(const vector<int32, size_C> &c) {
    for (unsigned i = 0; i < size_C; ++i)
      lanes[i] = (uint32_t)c.data[i];
  }

  void mac(const vector<TA, size_A> &a, const vector<TB, size_B> &b) {
    for (unsigned i = 0; i < R; ++i)
      for (unsigned j = 0; j < T; ++j)
        for (unsigned p = 0; p < S; ++p)
          lanes[i * T + j] +=
              (uint32_t)((int32_t)a.data[i * S + p] * (int32_t)b.data[p * T + j]);
  }

  template <typename Out> vector<Out, size_C> to_vector(int shift = 0) const {
    vector<Out, size_C> v;
    for (unsigned i = 0; i < size_C; ++i)
      v.data[i] = (Out)((int32_t)lanes[i] >> shift);
    return v;
  }
};

} // namespace aie
