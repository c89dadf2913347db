// Shared by the CPU kernels of lpmnet (lpmnet/ops/csrc/*.cpp, lpmnet/methods/*/csrc/*.cpp), which
// lpmnet/ops/build.py compiles into one extension module: the SIMD vectors and their math (VT<T>:
// exp, log, softplus, sigmoid for float32 and float64), denormal flushing, and the registry through
// which each source adds its functions to the module (bindings.cpp defines the module).
//
// The helpers live in an unnamed namespace, as they did when all kernels were one source: each
// translation unit gets its own internal copy, so the compiler inlines and contracts them exactly as
// before (the kernels' numbers do not depend on how the sources are split).
#pragma once

// ATen and torch's pybind11 casters only: <torch/extension.h> would add the C++ frontend (nn, optim,
// data) to every source (a module's build: 60 s instead of 36 s on 2 cores).
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define LPM_X86 1
#endif

namespace lpmnet_kernels {

// A function that adds an operation's functions to the extension module.
using Registrar = void (*)(pybind11::module&);

// Every registrar of the module, in the order of registration (bindings.cpp: a function-local static,
// so that it exists before the first static Register of any source is constructed).
std::vector<Registrar>& registrars();

// `const lpmnet_kernels::Register kRegister(&define);` at namespace scope of an op's source adds
// `define` to the module (called once, from the module's init function).
struct Register {
  explicit Register(Registrar define) { registrars().push_back(define); }
};

}  // namespace lpmnet_kernels

namespace {

// Lanes of one state vector / one time vector: the native SIMD width for float32 (8 with AVX,
// 4 with SSE2/NEON). Wider generic vectors would be split and spilled by the compiler.
#if defined(__AVX__)
constexpr int64_t W = 8;
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
typedef double vd __attribute__((vector_size(64)));
#else
constexpr int64_t W = 4;
typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
typedef double vd __attribute__((vector_size(32)));
#endif
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

template <typename V, typename T>
inline V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename T, typename V>
inline void vstore(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

inline float hsum(vf v) {
#if defined(__AVX__)
  v4f lo, hi;
  std::memcpy(&lo, &v, 16);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + 16, 16);
  v4f s = lo + hi;
#else
  v4f s = v;
#endif
#if defined(__clang__)
  s = s + __builtin_shufflevector(s, s, 2, 3, 0, 1);
  s = s + __builtin_shufflevector(s, s, 1, 0, 3, 2);
#else
  s = s + __builtin_shuffle(s, v4i{2, 3, 0, 1});
  s = s + __builtin_shuffle(s, v4i{1, 0, 3, 2});
#endif
  return s[0];
}

inline double hsum(vd v) {
  double s = 0;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}

// W vectors p[0..W) -> one vector of their lane sums (a transpose-and-add: far cheaper than W
// horizontal sums).
inline vf sum_lanes_block(const vf* p) {
#if defined(__clang__)
#define LPM_SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define LPM_SHUF(a, b, ...) __builtin_shuffle(a, b, vi{__VA_ARGS__})
#endif
#if defined(__AVX__)
  const vf a01 = LPM_SHUF(p[0], p[1], 0, 8, 2, 10, 4, 12, 6, 14) + LPM_SHUF(p[0], p[1], 1, 9, 3, 11, 5, 13, 7, 15);
  const vf a23 = LPM_SHUF(p[2], p[3], 0, 8, 2, 10, 4, 12, 6, 14) + LPM_SHUF(p[2], p[3], 1, 9, 3, 11, 5, 13, 7, 15);
  const vf a45 = LPM_SHUF(p[4], p[5], 0, 8, 2, 10, 4, 12, 6, 14) + LPM_SHUF(p[4], p[5], 1, 9, 3, 11, 5, 13, 7, 15);
  const vf a67 = LPM_SHUF(p[6], p[7], 0, 8, 2, 10, 4, 12, 6, 14) + LPM_SHUF(p[6], p[7], 1, 9, 3, 11, 5, 13, 7, 15);
  const vf b0 = LPM_SHUF(a01, a23, 0, 1, 8, 9, 4, 5, 12, 13) + LPM_SHUF(a01, a23, 2, 3, 10, 11, 6, 7, 14, 15);
  const vf b1 = LPM_SHUF(a45, a67, 0, 1, 8, 9, 4, 5, 12, 13) + LPM_SHUF(a45, a67, 2, 3, 10, 11, 6, 7, 14, 15);
  return LPM_SHUF(b0, b1, 0, 1, 2, 3, 8, 9, 10, 11) + LPM_SHUF(b0, b1, 4, 5, 6, 7, 12, 13, 14, 15);
#else
  const vf a01 = LPM_SHUF(p[0], p[1], 0, 4, 2, 6) + LPM_SHUF(p[0], p[1], 1, 5, 3, 7);
  const vf a23 = LPM_SHUF(p[2], p[3], 0, 4, 2, 6) + LPM_SHUF(p[2], p[3], 1, 5, 3, 7);
  return LPM_SHUF(a01, a23, 0, 1, 4, 5) + LPM_SHUF(a01, a23, 2, 3, 6, 7);
#endif
#undef LPM_SHUF
}

inline vd sum_lanes_block(const vd* p) {
  vd r;
  for (int k = 0; k < W; ++k) r[k] = hsum(p[k]);
  return r;
}

template <typename T>
struct VT;

template <>
struct VT<float> {
  using V = vf;
  using M = vi;

  static inline V bc(float x) { return V{} + x; }
  static inline V sel(M m, V a, V b) { return m ? a : b; }

  // exp with Cody-Waite reduction and a degree-6 polynomial (relative error ~1e-7). Arguments are
  // clamped to [-87.3, 88.3]: below, the result is exp(-87.3) ~ 1e-38 (smallest normal range, no
  // denormals; treated as zero by the flush-to-zero mode of the kernels), above it saturates at
  // exp(88.3) (never inf).
  static inline V exp(V x) {
    x = vmax(bc(-87.3f), x);
    x = vmin(bc(88.3f), x);
    const V magic = bc(12582912.0f);  // 1.5 * 2^23: round to nearest integer
    V k = (x * 1.44269504088896341f + magic) - magic;
    V r = x - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    V p = bc(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    M ki = __builtin_convertvector(k, M);
    M bits = (ki + 127) << 23;
    V scale;
    std::memcpy(&scale, &bits, sizeof(V));
    return p * scale;
  }

  // log1p(e) for e in [0, 1].
  static inline V log1p_unit(V e) {
    V u = e + 1.0f;
    M big = u > 1.41421356237f;
    V m = sel(big, u * 0.5f, u);
    V ef = sel(big, bc(1.0f), V{});
    V x = m - 1.0f;
    V z = x * x;
    V p = bc(7.0376836292e-2f);
    p = p * x - 1.1514610310e-1f;
    p = p * x + 1.1676998740e-1f;
    p = p * x - 1.2420140846e-1f;
    p = p * x + 1.4249322787e-1f;
    p = p * x - 1.6668057665e-1f;
    p = p * x + 2.0000714765e-1f;
    p = p * x - 2.4999993993e-1f;
    p = p * x + 3.3333331174e-1f;
    V y = p * x * z;
    y = y - ef * 2.12194440e-4f;
    y = y - 0.5f * z;
    V r = x + y + ef * 0.693359375f;
    return r + (e - (u - 1.0f)) / u;  // rounding of 1 + e
  }

  static inline V softplus(V x) {
    V ax = sel(x < 0.0f, -x, x);
    V pos = sel(x > 0.0f, x, V{});
    return pos + log1p_unit(exp(-ax));
  }

  static inline V sigmoid(V x) { return 1.0f / (exp(-x) + 1.0f); }

  // 2^y for the scan's decays exp(dt A) = 2^(dt A log2(e)), with A log2(e) scaled once per call (as
  // the CUDA kernel's exp2f does): round-to-nearest by the 1.5 * 2^23 trick, whose low mantissa
  // bits are the integer part (so the scale 2^k is two integer ops), then a degree-6 minimax
  // polynomial on [-1/2, 1/2] (relative error ~1e-7). 14 vector ops against exp's 20, in the
  // kernels' hottest loop. Clamped to [-126, 127]: 2^-126 is the smallest normal (flushed to zero
  // downstream), NaN propagates.
  static inline V exp2(V y) {
    y = vmax(bc(-126.0f), y);
    y = vmin(bc(127.0f), y);
    const V magic = bc(12582912.0f);
    const V shifted = y + magic;
    const V f = y - (shifted - magic);
    V p = bc(1.534582261228934e-4f);
    p = p * f + 1.3399930903688073e-3f;
    p = p * f + 9.618489071726799e-3f;
    p = p * f + 5.550328642129898e-2f;
    p = p * f + 2.4022646248340607e-1f;
    p = p * f + 6.931471824645996e-1f;
    p = p * f + 1.0f;
    M bits;
    std::memcpy(&bits, &shifted, sizeof(V));
    bits = (bits + (127 - 0x4B400000)) << 23;  // 0x4B400000: the bits of 1.5 * 2^23
    V scale;
    std::memcpy(&scale, &bits, sizeof(V));
    return p * scale;
  }

 private:
  // The clamps of exp and exp2: max/min that return y when it is NaN (vmaxps returns its second
  // operand then); the generic vector select compiles to a compare and a blend.
  static inline V vmax(V lo, V y) {
#if defined(__AVX__)
    return _mm256_max_ps(lo, y);
#else
    return sel(y < lo, lo, y);
#endif
  }
  static inline V vmin(V hi, V y) {
#if defined(__AVX__)
    return _mm256_min_ps(hi, y);
#else
    return sel(y > hi, hi, y);
#endif
  }
};

template <>
struct VT<double> {
  using V = vd;

  static inline V bc(double x) { return V{} + x; }

  static inline V exp(V x) {
    V r;
    for (int i = 0; i < W; ++i) r[i] = std::exp(x[i]);
    return r;
  }

  static inline V softplus(V x) {
    V r;
    for (int i = 0; i < W; ++i) {
      const double v = x[i];
      r[i] = v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v));
    }
    return r;
  }

  static inline V sigmoid(V x) {
    V r;
    for (int i = 0; i < W; ++i) {
      const double v = x[i];
      if (v >= 0) {
        r[i] = 1.0 / (1.0 + std::exp(-v));
      } else {
        const double e = std::exp(v);
        r[i] = e / (1.0 + e);
      }
    }
    return r;
  }

  static inline V exp2(V y) {
    V r;
    for (int i = 0; i < W; ++i) r[i] = std::exp2(y[i]);
    return r;
  }
};

// Flush denormals to zero while a task runs (decaying states would otherwise hit slow paths).
struct DenormalGuard {
#ifdef LPM_X86
  unsigned int saved;
  DenormalGuard() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~DenormalGuard() { _mm_setcsr(saved); }
#endif
};

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace
