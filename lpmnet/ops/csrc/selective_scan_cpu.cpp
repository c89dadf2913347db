// Selective scan (Mamba-1, real A, input-dependent B/C shared across channels) and Mamba's causal
// depthwise conv1d on the CPU; further down, LPM-Net's windowed Mamba layer, the merge of its views
// and its CfC head as fused kernels (each with its own comment).
//
// Forward and backward for float32 and float64, built just in time by lpmnet/ops/build.py with
// torch.utils.cpp_extension.load. Semantics follow mamba-ssm's selective_scan_fn:
//
//   dt_t   = softplus(delta_t + delta_bias)        (or delta_t + delta_bias without softplus)
//   h_t[n] = exp(dt_t * A[n]) * h_{t-1}[n] + dt_t * B_t[n] * u_t      (h_{-1} = 0)
//   out_t  = sum_n C_t[n] * h_t[n] + D * u_t
//   y_t    = out_t * silu(z_t)                     (when z is given)
//
// Layouts: u, delta, z, dy: (batch, d, L) with any strides; A: (d, N); B, C: (batch, N, L) with
// any strides; D, delta_bias: (d,). Outputs are contiguous.
//
// Design: one task = one batch element (all d channels), so B_t/C_t are transposed once per batch
// element into a small (L, Np) buffer (Np = N rounded up to the SIMD width W, zero padded) and
// dB/dC need no atomics. W states of one channel live in one vector (GCC/Clang vector extensions,
// W = 8 floats with AVX/AVX-512, 4 with SSE2/NEON; the compiler flags of the build pick the
// instructions); the recurrence runs over time with one fused multiply-add on its dependency
// chain. Element-wise work along time (softplus, D skip, silu gate, sigmoid) is vectorised over W
// time steps. float32 uses a Cephes-style exp/log (relative error ~1e-7, no libm calls, exp
// arguments clamped so nothing overflows); float64 uses libm lane by lane (reference accuracy).
// The backward recomputes the states of one channel into thread-local buffers (L x Np) and runs
// the reverse scan; reductions over the batch (dA, dD, d delta_bias) go to per-chunk partial sums
// in double, summed in a fixed order, so results do not depend on the number of threads.
// Parallelism: at::parallel_for over the batch (respects torch.set_num_threads).

#include <torch/extension.h>
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

// A (batch, d, L) operand read with its own strides.
template <typename T>
struct Rows {
  const T* p = nullptr;
  int64_t sb = 0, sd = 0, sl = 0;
  Rows() = default;
  explicit Rows(const at::Tensor& t)
      : p(t.data_ptr<T>()), sb(t.stride(0)), sd(t.stride(1)), sl(t.stride(2)) {}
  // Copies row (b, d) into dst[0:L]; dst[L:] is left untouched.
  inline void load(int64_t b, int64_t d, int64_t L, T* dst) const {
    const T* s = p + b * sb + d * sd;
    if (sl == 1) {
      std::memcpy(dst, s, sizeof(T) * L);
    } else {
      for (int64_t t = 0; t < L; ++t) dst[t] = s[t * sl];
    }
  }
};

// (batch, N, L) operand -> (L, Np) buffer of one batch element (columns n >= N stay zero).
template <typename T>
inline void transpose_in(const T* p, int64_t sb, int64_t sn, int64_t sl, int64_t b, int64_t N,
                         int64_t L, int64_t Np, T* dst) {
  const T* base = p + b * sb;
  for (int64_t n = 0; n < N; ++n) {
    const T* s = base + n * sn;
    for (int64_t t = 0; t < L; ++t) dst[t * Np + n] = s[t * sl];
  }
}

template <typename T>
inline void transpose_out(const T* src, int64_t N, int64_t L, int64_t Np, T* dst) {
  for (int64_t n = 0; n < N; ++n) {
    T* o = dst + n * L;
    for (int64_t t = 0; t < L; ++t) o[t] = src[t * Np + n];
  }
}

struct Problem {
  int64_t batch, dim, L, N, G, Np, Lp;
};

Problem make_problem(const at::Tensor& u, const at::Tensor& A) {
  Problem p;
  p.batch = u.size(0);
  p.dim = u.size(1);
  p.L = u.size(2);
  p.N = A.size(1);
  p.G = (p.N + W - 1) / W;
  p.Np = p.G * W;
  p.Lp = round_up(std::max<int64_t>(p.L, 1), W);
  return p;
}

template <typename T>
std::vector<T> pad_A(const at::Tensor& A, const Problem& P) {
  std::vector<T> Ap(P.dim * P.Np, T(0));
  const T* a = A.data_ptr<T>();
  for (int64_t d = 0; d < P.dim; ++d)
    for (int64_t n = 0; n < P.N; ++n) Ap[d * P.Np + n] = a[d * P.N + n];
  return Ap;
}

// dt = softplus(delta + bias) (or delta + bias) in place; dtu = dt * u.
template <typename T>
inline void prepare_dt(T* dtb, const T* ub, T* dtub, T bias, bool softplus, int64_t Lp) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  for (int64_t t = 0; t < Lp; t += W) {
    V x = vload<V>(dtb + t) + bias;
    V dt = softplus ? Tr::softplus(x) : x;
    vstore(dtb + t, dt);
    vstore(dtub + t, dt * vload<V>(ub + t));
  }
}

// Scan of one channel over all state groups. yb[0:L] receives sum_n C h.
// If kStore, the states and decays are stored in hb/dAb (layout (L, Np)).
template <typename T, bool kStore>
inline void scan_channel(const T* a_row, const T* Bt, const T* Ct, const T* dtb, const T* dtub,
                         T* yb, T* hb, T* dAb, const Problem& P) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  const int64_t L = P.L, Np = P.Np;
  for (int64_t g = 0; g < P.G; ++g) {
    const int64_t off = g * W;
    const V a = vload<V>(a_row + off);
    V h = V{};
    auto step = [&](int64_t t) -> V {  // advances h to time t, returns C_t * h_t
      const int64_t i = t * Np + off;
      const V dA = Tr::exp(a * dtb[t]);
      h = dA * h + vload<V>(Bt + i) * dtub[t];
      if (kStore) {
        vstore(hb + i, h);
        vstore(dAb + i, dA);
      }
      return vload<V>(Ct + i) * h;
    };
    int64_t t = 0;
    for (; t + W <= L; t += W) {  // blocks of W steps: one transpose-and-add for W outputs
      V pb[W];
      for (int64_t k = 0; k < W; ++k) pb[k] = step(t + k);
      V s = sum_lanes_block(pb);
      if (g) s += vload<V>(yb + t);
      vstore(yb + t, s);
    }
    for (; t < L; ++t) {
      const T s = hsum(step(t));
      yb[t] = g ? yb[t] + s : s;
    }
  }
}

struct Opt {
  const at::Tensor* D = nullptr;
  const at::Tensor* z = nullptr;
  const at::Tensor* bias = nullptr;
};

template <typename T>
void fwd_impl(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
              const at::Tensor& B, const at::Tensor& C, const Opt& o, bool softplus,
              at::Tensor& y) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  const Problem P = make_problem(u, A);
  const std::vector<T> Ap = pad_A<T>(A, P);
  const Rows<T> ur(u), dr(delta);
  Rows<T> zr;
  if (o.z) zr = Rows<T>(*o.z);
  const T* Dp = o.D ? o.D->data_ptr<T>() : nullptr;
  const T* biasp = o.bias ? o.bias->data_ptr<T>() : nullptr;
  const T* Bp = B.data_ptr<T>();
  const T* Cp = C.data_ptr<T>();
  const int64_t Bsb = B.stride(0), Bsn = B.stride(1), Bsl = B.stride(2);
  const int64_t Csb = C.stride(0), Csn = C.stride(1), Csl = C.stride(2);
  T* yp = y.data_ptr<T>();
  const int64_t L = P.L, Lp = P.Lp, Np = P.Np;

  at::parallel_for(0, P.batch, 1, [&](int64_t b0, int64_t b1) {
    DenormalGuard guard;
    std::vector<T> Bt(L * Np, T(0)), Ct(L * Np, T(0));
    std::vector<T> ub(Lp, T(0)), dtb(Lp, T(0)), dtub(Lp, T(0)), yb(Lp, T(0)), zb(Lp, T(0));
    for (int64_t b = b0; b < b1; ++b) {
      transpose_in(Bp, Bsb, Bsn, Bsl, b, P.N, L, Np, Bt.data());
      transpose_in(Cp, Csb, Csn, Csl, b, P.N, L, Np, Ct.data());
      for (int64_t d = 0; d < P.dim; ++d) {
        ur.load(b, d, L, ub.data());
        dr.load(b, d, L, dtb.data());
        prepare_dt(dtb.data(), ub.data(), dtub.data(), biasp ? biasp[d] : T(0), softplus, Lp);
        scan_channel<T, false>(Ap.data() + d * Np, Bt.data(), Ct.data(), dtb.data(),
                               dtub.data(), yb.data(), nullptr, nullptr, P);
        const T Dd = Dp ? Dp[d] : T(0);
        if (o.z) zr.load(b, d, L, zb.data());
        for (int64_t t = 0; t < Lp; t += W) {
          V out = vload<V>(yb.data() + t) + vload<V>(ub.data() + t) * Dd;
          if (o.z) {
            const V zv = vload<V>(zb.data() + t);
            out = out * zv * Tr::sigmoid(zv);
          }
          vstore(yb.data() + t, out);
        }
        std::memcpy(yp + (b * P.dim + d) * L, yb.data(), sizeof(T) * L);
      }
    }
  });
}

template <typename T>
void bwd_impl(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
              const at::Tensor& B, const at::Tensor& C, const Opt& o, bool softplus,
              const at::Tensor& dy, at::Tensor& du, at::Tensor& ddelta, at::Tensor& dA,
              at::Tensor& dB, at::Tensor& dC, at::Tensor* dD, at::Tensor* dz,
              at::Tensor* dbias) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  const Problem P = make_problem(u, A);
  const std::vector<T> Ap = pad_A<T>(A, P);
  const Rows<T> ur(u), dr(delta), gr(dy);
  Rows<T> zr;
  if (o.z) zr = Rows<T>(*o.z);
  const T* Dp = o.D ? o.D->data_ptr<T>() : nullptr;
  const T* biasp = o.bias ? o.bias->data_ptr<T>() : nullptr;
  const T* Bp = B.data_ptr<T>();
  const T* Cp = C.data_ptr<T>();
  const int64_t Bsb = B.stride(0), Bsn = B.stride(1), Bsl = B.stride(2);
  const int64_t Csb = C.stride(0), Csn = C.stride(1), Csl = C.stride(2);
  T* dup = du.data_ptr<T>();
  T* ddp = ddelta.data_ptr<T>();
  T* dBp = dB.data_ptr<T>();
  T* dCp = dC.data_ptr<T>();
  T* dzp = dz ? dz->data_ptr<T>() : nullptr;
  const int64_t L = P.L, Lp = P.Lp, Np = P.Np, dim = P.dim;

  // Fixed chunking of the batch: reductions are summed per chunk, then over chunks in order.
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(P.batch, 256));
  const int64_t per = (P.batch + nchunks - 1) / std::max<int64_t>(nchunks, 1);
  std::vector<double> pdA(nchunks * dim * Np, 0.0), pdD(nchunks * dim, 0.0),
      pdb(nchunks * dim, 0.0);

  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    DenormalGuard guard;
    std::vector<T> Bt(L * Np, T(0)), Ct(L * Np, T(0)), dBt(L * Np), dCt(L * Np);
    std::vector<T> hb(L * Np), dAb(L * Np);
    std::vector<T> ub(Lp, T(0)), xb(Lp, T(0)), dtb(Lp, T(0)), dtub(Lp, T(0)), yb(Lp, T(0)),
        zb(Lp, T(0)), gb(Lp, T(0)), doutb(Lp, T(0)), dub(Lp, T(0)), ddtb(Lp, T(0));
    const V zero = V{};
    for (int64_t c = c0; c < c1; ++c) {
      double* cdA = pdA.data() + c * dim * Np;
      double* cdD = pdD.data() + c * dim;
      double* cdb = pdb.data() + c * dim;
      const int64_t bs = c * per, be = std::min(P.batch, bs + per);
      for (int64_t b = bs; b < be; ++b) {
        transpose_in(Bp, Bsb, Bsn, Bsl, b, P.N, L, Np, Bt.data());
        transpose_in(Cp, Csb, Csn, Csl, b, P.N, L, Np, Ct.data());
        std::fill(dBt.begin(), dBt.end(), T(0));
        std::fill(dCt.begin(), dCt.end(), T(0));
        for (int64_t d = 0; d < dim; ++d) {
          const T* a_row = Ap.data() + d * Np;
          ur.load(b, d, L, ub.data());
          dr.load(b, d, L, xb.data());
          gr.load(b, d, L, gb.data());
          const T bias = biasp ? biasp[d] : T(0);
          for (int64_t t = 0; t < Lp; t += W) {
            const V x = vload<V>(xb.data() + t) + bias;
            vstore(xb.data() + t, x);
            const V dt = softplus ? Tr::softplus(x) : x;
            vstore(dtb.data() + t, dt);
            vstore(dtub.data() + t, dt * vload<V>(ub.data() + t));
          }
          scan_channel<T, true>(a_row, Bt.data(), Ct.data(), dtb.data(), dtub.data(), yb.data(),
                                hb.data(), dAb.data(), P);
          const T Dd = Dp ? Dp[d] : T(0);
          if (o.z) zr.load(b, d, L, zb.data());
          V accD = zero;
          for (int64_t t = 0; t < Lp; t += W) {
            const V uv = vload<V>(ub.data() + t);
            V dout = vload<V>(gb.data() + t);
            if (o.z) {
              const V zv = vload<V>(zb.data() + t);
              const V out = vload<V>(yb.data() + t) + uv * Dd;
              const V s = Tr::sigmoid(zv);
              const V dzv = dout * out * s * (zv * (T(1) - s) + T(1));
              vstore(zb.data() + t, dzv);
              dout = dout * zv * s;
            }
            if (t + W > L) {  // keep the padded tail out of the sums
              for (int64_t i = L - t; i < W; ++i) dout[i] = 0;
            }
            vstore(doutb.data() + t, dout);
            accD += dout * uv;
            vstore(dub.data() + t, dout * Dd);
            vstore(ddtb.data() + t, zero);
          }
          if (o.z) std::memcpy(dzp + (b * dim + d) * L, zb.data(), sizeof(T) * L);
          cdD[d] += static_cast<double>(hsum(accD));

          for (int64_t g = 0; g < P.G; ++g) {
            const V a = vload<V>(a_row + g * W);
            const int64_t off = g * W;
            V gv = zero, dAn = zero, dAacc = zero;
            // One reverse step at time t: gv = dL/dh_t; returns g*B (-> du, ddelta) and
            // g*dA*h_{t-1}*A (-> ddelta) whose lane sums are taken by the caller.
            auto step = [&](int64_t t, V& gB, V& wA) {
              const int64_t i = t * Np + off;
              const T dout = doutb[t], dt = dtb[t];
              gv = dAn * gv + vload<V>(Ct.data() + i) * dout;
              const V hp = t > 0 ? vload<V>(hb.data() + i - Np) : zero;
              const V dAt = vload<V>(dAb.data() + i);
              vstore(dCt.data() + i, vload<V>(dCt.data() + i) + vload<V>(hb.data() + i) * dout);
              vstore(dBt.data() + i, vload<V>(dBt.data() + i) + gv * dtub[t]);
              const V w = gv * dAt * hp;
              dAacc += w * dt;
              gB = gv * vload<V>(Bt.data() + i);
              wA = w * a;
              dAn = dAt;
            };
            const int64_t Lb = L / W * W;
            for (int64_t t = L - 1; t >= Lb; --t) {
              V gB, wA;
              step(t, gB, wA);
              const T s1 = hsum(gB), s2 = hsum(wA);
              dub[t] += s1 * dtb[t];
              ddtb[t] += s2 + s1 * ub[t];
            }
            for (int64_t t0 = Lb - W; t0 >= 0; t0 -= W) {
              V pg[W], pw[W];
              for (int64_t k = W - 1; k >= 0; --k) step(t0 + k, pg[k], pw[k]);
              const V s1 = sum_lanes_block(pg), s2 = sum_lanes_block(pw);
              vstore(dub.data() + t0, vload<V>(dub.data() + t0) + s1 * vload<V>(dtb.data() + t0));
              vstore(ddtb.data() + t0,
                     vload<V>(ddtb.data() + t0) + s2 + s1 * vload<V>(ub.data() + t0));
            }
            for (int64_t k = 0; k < W; ++k) cdA[d * Np + off + k] += static_cast<double>(dAacc[k]);
          }

          V accb = zero;
          for (int64_t t = 0; t < Lp; t += W) {
            V g = vload<V>(ddtb.data() + t);
            if (softplus) g = g * Tr::sigmoid(vload<V>(xb.data() + t));
            vstore(ddtb.data() + t, g);
            accb += g;  // tail is zero
          }
          cdb[d] += static_cast<double>(hsum(accb));
          std::memcpy(dup + (b * dim + d) * L, dub.data(), sizeof(T) * L);
          std::memcpy(ddp + (b * dim + d) * L, ddtb.data(), sizeof(T) * L);
        }
        transpose_out(dBt.data(), P.N, L, Np, dBp + b * P.N * L);
        transpose_out(dCt.data(), P.N, L, Np, dCp + b * P.N * L);
      }
    }
  });

  T* dAp = dA.data_ptr<T>();
  for (int64_t d = 0; d < dim; ++d) {
    for (int64_t n = 0; n < P.N; ++n) {
      double s = 0;
      for (int64_t c = 0; c < nchunks; ++c) s += pdA[(c * dim + d) * Np + n];
      dAp[d * P.N + n] = static_cast<T>(s);
    }
    double sD = 0, sb = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      sD += pdD[c * dim + d];
      sb += pdb[c * dim + d];
    }
    if (dD) dD->data_ptr<T>()[d] = static_cast<T>(sD);
    if (dbias) dbias->data_ptr<T>()[d] = static_cast<T>(sb);
  }
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                  const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                  const std::optional<at::Tensor>& z,
                  const std::optional<at::Tensor>& delta_bias) {
  TORCH_CHECK(u.device().is_cpu(), "selective_scan_cpu: tensors must be on the CPU");
  const auto st = u.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble,
              "selective_scan_cpu: dtype must be float32 or float64, got ", st);
  TORCH_CHECK(u.dim() == 3, "u must be (batch, d, L)");
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2);
  TORCH_CHECK(delta.sizes() == u.sizes(), "delta must have u's shape");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim && A.is_contiguous(), "A must be contiguous (d, N)");
  const int64_t N = A.size(1);
  TORCH_CHECK(B.dim() == 3 && B.size(0) == batch && B.size(1) == N && B.size(2) == L,
              "B must be (batch, N, L)");
  TORCH_CHECK(C.dim() == 3 && C.size(0) == batch && C.size(1) == N && C.size(2) == L,
              "C must be (batch, N, L)");
  for (const at::Tensor* t : {&delta, &A, &B, &C})
    TORCH_CHECK(t->scalar_type() == st && t->device().is_cpu(), "all tensors must share u's dtype and be on the CPU");
  if (D) TORCH_CHECK(D->dim() == 1 && D->size(0) == dim && D->is_contiguous() && D->scalar_type() == st, "D must be contiguous (d,) of u's dtype");
  if (delta_bias) TORCH_CHECK(delta_bias->dim() == 1 && delta_bias->size(0) == dim && delta_bias->is_contiguous() && delta_bias->scalar_type() == st, "delta_bias must be contiguous (d,) of u's dtype");
  if (z) TORCH_CHECK(z->sizes() == u.sizes() && z->scalar_type() == st, "z must have u's shape and dtype");
}

at::Tensor selective_scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                              const at::Tensor& B, const at::Tensor& C,
                              const std::optional<at::Tensor>& D,
                              const std::optional<at::Tensor>& z,
                              const std::optional<at::Tensor>& delta_bias, bool softplus) {
  check_inputs(u, delta, A, B, C, D, z, delta_bias);
  at::Tensor y = at::empty(u.sizes(), u.options());
  if (y.numel() == 0) return y;
  Opt o;
  if (D) o.D = &*D;
  if (z) o.z = &*z;
  if (delta_bias) o.bias = &*delta_bias;
  if (u.scalar_type() == at::kFloat)
    fwd_impl<float>(u, delta, A, B, C, o, softplus, y);
  else
    fwd_impl<double>(u, delta, A, B, C, o, softplus, y);
  return y;
}

// Every element of du, ddelta, dz, dB and dC is written by bwd_impl (per batch element and
// channel), and dA, dD, ddelta_bias after its loop: no zero-filling needed.
// Returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias (undefined tensors for absent inputs).
std::vector<at::Tensor> selective_scan_bwd(const at::Tensor& u, const at::Tensor& delta,
                                           const at::Tensor& A, const at::Tensor& B,
                                           const at::Tensor& C,
                                           const std::optional<at::Tensor>& D,
                                           const std::optional<at::Tensor>& z,
                                           const std::optional<at::Tensor>& delta_bias,
                                           bool softplus, const at::Tensor& dy) {
  check_inputs(u, delta, A, B, C, D, z, delta_bias);
  TORCH_CHECK(dy.sizes() == u.sizes() && dy.scalar_type() == u.scalar_type(),
              "dy must have u's shape and dtype");
  at::Tensor du = at::empty(u.sizes(), u.options());
  at::Tensor ddelta = at::empty(u.sizes(), u.options());
  at::Tensor dA = at::zeros(A.sizes(), A.options());
  at::Tensor dB = at::empty(B.sizes(), B.options());
  at::Tensor dC = at::empty(C.sizes(), C.options());
  at::Tensor dD, dz, dbias;
  if (D) dD = at::zeros(D->sizes(), D->options());
  if (z) dz = at::empty(u.sizes(), u.options());
  if (delta_bias) dbias = at::zeros(delta_bias->sizes(), delta_bias->options());
  if (u.numel() > 0) {
    Opt o;
    if (D) o.D = &*D;
    if (z) o.z = &*z;
    if (delta_bias) o.bias = &*delta_bias;
    at::Tensor* pD = D ? &dD : nullptr;
    at::Tensor* pz = z ? &dz : nullptr;
    at::Tensor* pb = delta_bias ? &dbias : nullptr;
    if (u.scalar_type() == at::kFloat)
      bwd_impl<float>(u, delta, A, B, C, o, softplus, dy, du, ddelta, dA, dB, dC, pD, pz, pb);
    else
      bwd_impl<double>(u, delta, A, B, C, o, softplus, dy, du, ddelta, dA, dB, dC, pD, pz, pb);
  }
  return {du, ddelta, dA, dB, dC, dD, dz, dbias};
}

// ------------------------------------------------------------------------------------------------
// Mamba's depthwise causal conv1d with the optional SiLU:
//   a[b, c, t] = bias[c] + sum_k w[c, k] * x[b, c, t - (K - 1) + k]   (x = 0 before t = 0)
//   y = silu(a) (or a)
// x and dy may have any strides; the outputs y and dx are (batch, d, L) tensors laid out as
// (batch, L, d) in memory, the layout of the in_proj output that x is a view of and the one the
// x_proj that follows reads: no transposing copies on either side. The inner loop runs over the
// channels (contiguous in that layout, vectorised by the compiler). The backward recomputes a
// (cheaper than saving it); dw and dbias are summed per batch element in double and then over
// the batch in order, so they do not depend on the number of threads.

// sig[i] = sigmoid(a[i]) for i < n, W lanes at a time with the kernels' exp (scalar tail).
template <typename T>
inline void sigmoid_row(const T* a, T* sig, int64_t n) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(sig + i, Tr::sigmoid(vload<V>(a + i)));
  for (; i < n; ++i) sig[i] = T(1) / (T(1) + std::exp(-a[i]));
}

// The taps as (K, d): the channel loops then read them contiguously.
template <typename T>
std::vector<T> taps_by_channel(const at::Tensor& w) {
  const int64_t dim = w.size(0), K = w.size(1);
  const T* wp = w.data_ptr<T>();
  std::vector<T> wt(K * dim);
  for (int64_t c = 0; c < dim; ++c)
    for (int64_t k = 0; k < K; ++k) wt[k * dim + c] = wp[c * K + k];
  return wt;
}

// acc[c] = a[c, t] of one batch element (x_b: its first element; wt: taps as (K, d)).
template <typename T, bool CL>
inline void conv_at(const T* x_b, int64_t sc, int64_t st, const T* wt, const T* bias, int64_t dim, int64_t K,
                    int64_t t, T* acc) {
  if (CL) sc = 1;
  for (int64_t c = 0; c < dim; ++c) acc[c] = bias ? bias[c] : T(0);
  for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k) {
    const T* xt = x_b + (t - (K - 1) + k) * st;
    const T* wk = wt + k * dim;
    for (int64_t c = 0; c < dim; ++c) acc[c] += wk[c] * xt[c * sc];
  }
}

// CL: the channels of x (and dy) are contiguous (stride 1), the layout of Mamba's in_proj output;
// a compile-time stride lets the compiler vectorise the channel loops.
template <typename T, bool CL>
void conv_fwd_impl(const at::Tensor& x, const at::Tensor& w, const T* bias, bool silu, at::Tensor& y) {
  const int64_t batch = x.size(0), dim = x.size(1), L = x.size(2), K = w.size(1);
  const int64_t sb = x.stride(0), sc = CL ? 1 : x.stride(1), st = x.stride(2);
  const T* xp = x.data_ptr<T>();
  const std::vector<T> wt = taps_by_channel<T>(w);
  const T* wp = wt.data();
  T* yp = y.data_ptr<T>();
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> acc(dim), sig(dim);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t t = 0; t < L; ++t) {
        conv_at<T, CL>(xp + b * sb, sc, st, wp, bias, dim, K, t, acc.data());
        T* yt = yp + (b * L + t) * dim;
        if (silu) {
          sigmoid_row(acc.data(), sig.data(), dim);
          for (int64_t c = 0; c < dim; ++c) yt[c] = acc[c] * sig[c];
        } else {
          for (int64_t c = 0; c < dim; ++c) yt[c] = acc[c];
        }
      }
    }
  });
}

template <typename T, bool CL>
void conv_bwd_impl(const at::Tensor& x, const at::Tensor& w, const T* bias, bool silu, const at::Tensor& dy,
                   at::Tensor& dx, at::Tensor& dw, at::Tensor* dbias) {
  const int64_t batch = x.size(0), dim = x.size(1), L = x.size(2), K = w.size(1);
  const int64_t sb = x.stride(0), sc = CL ? 1 : x.stride(1), st = x.stride(2);
  const int64_t gb = dy.stride(0), gc = CL ? 1 : dy.stride(1), gt = dy.stride(2);
  const T* xp = x.data_ptr<T>();
  const std::vector<T> wt = taps_by_channel<T>(w);
  const T* wp = wt.data();
  const T* gp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  std::vector<double> pdw(batch * K * dim, 0.0), pdb(batch * dim, 0.0);  // dw as (K, d) per batch element
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> da(L * dim), acc(dim), sig(dim), sw(dim * K), sbias(dim);
    for (int64_t b = b0; b < b1; ++b) {
      // da = dy * silu'(a), with a recomputed.
      for (int64_t t = 0; t < L; ++t) {
        conv_at<T, CL>(xp + b * sb, sc, st, wp, bias, dim, K, t, acc.data());
        const T* gt_ = gp + b * gb + t * gt;
        T* dat = da.data() + t * dim;
        if (silu) {
          sigmoid_row(acc.data(), sig.data(), dim);
          for (int64_t c = 0; c < dim; ++c) dat[c] = gt_[c * gc] * sig[c] * (T(1) + acc[c] * (T(1) - sig[c]));
        } else {
          for (int64_t c = 0; c < dim; ++c) dat[c] = gt_[c * gc];
        }
      }
      // dx[s] = sum_k w[k] * da[s + (K - 1) - k]; dw[k] = sum_t da[t] * x[t - (K - 1) + k].
      std::fill(sw.begin(), sw.end(), T(0));
      std::fill(sbias.begin(), sbias.end(), T(0));
      for (int64_t s = 0; s < L; ++s) {
        for (int64_t c = 0; c < dim; ++c) acc[c] = T(0);
        for (int64_t k = 0; k < K; ++k) {
          const int64_t t = s + (K - 1) - k;
          if (t >= L) continue;
          const T* dat = da.data() + t * dim;
          const T* wk = wp + k * dim;
          for (int64_t c = 0; c < dim; ++c) acc[c] += wk[c] * dat[c];
        }
        T* dxs = dxp + (b * L + s) * dim;
        const T* xs = xp + b * sb + s * st;
        const T* das = da.data() + s * dim;
        for (int64_t c = 0; c < dim; ++c) {
          dxs[c] = acc[c];
          sbias[c] += das[c];
        }
        // x[s] meets da[t] with tap k = s - t + (K - 1), for t = s .. s + K - 1.
        for (int64_t k = 0; k < K; ++k) {
          const int64_t t = s + (K - 1) - k;
          if (t >= L) continue;
          const T* dat = da.data() + t * dim;
          T* swk = sw.data() + k * dim;
          for (int64_t c = 0; c < dim; ++c) swk[c] += dat[c] * xs[c * sc];
        }
      }
      for (int64_t i = 0; i < dim * K; ++i) pdw[b * dim * K + i] = sw[i];
      for (int64_t c = 0; c < dim; ++c) pdb[b * dim + c] = sbias[c];
    }
  });
  T* dwp = dw.data_ptr<T>();
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t c = 0; c < dim; ++c) {
      double s = 0;
      for (int64_t b = 0; b < batch; ++b) s += pdw[b * dim * K + k * dim + c];
      dwp[c * K + k] = static_cast<T>(s);
    }
  }
  if (dbias) {
    T* dbp = dbias->data_ptr<T>();
    for (int64_t c = 0; c < dim; ++c) {
      double s = 0;
      for (int64_t b = 0; b < batch; ++b) s += pdb[b * dim + c];
      dbp[c] = static_cast<T>(s);
    }
  }
}

void check_conv(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "causal_conv1d_cpu: tensors must be on the CPU");
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble, "causal_conv1d_cpu: dtype must be float32 or float64, got ", st);
  TORCH_CHECK(x.dim() == 3, "x must be (batch, d, L)");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(1) && w.is_contiguous() && w.scalar_type() == st,
              "weight must be contiguous (d, width) of x's dtype");
  if (bias) TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1) && bias->is_contiguous() && bias->scalar_type() == st,
                        "bias must be contiguous (d,) of x's dtype");
}

// A (batch, d, L) tensor stored as (batch, L, d).
at::Tensor channels_last_like(const at::Tensor& x) {
  return at::empty({x.size(0), x.size(2), x.size(1)}, x.options()).transpose(1, 2);
}

at::Tensor causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                             bool silu) {
  check_conv(x, w, bias);
  at::Tensor y = channels_last_like(x);
  if (y.numel() == 0) return y;
  const bool cl = x.stride(1) == 1;
  if (x.scalar_type() == at::kFloat) {
    const float* bp = bias ? bias->data_ptr<float>() : nullptr;
    cl ? conv_fwd_impl<float, true>(x, w, bp, silu, y) : conv_fwd_impl<float, false>(x, w, bp, silu, y);
  } else {
    const double* bp = bias ? bias->data_ptr<double>() : nullptr;
    cl ? conv_fwd_impl<double, true>(x, w, bp, silu, y) : conv_fwd_impl<double, false>(x, w, bp, silu, y);
  }
  return y;
}

// Returns dx, dweight, dbias (undefined without bias).
std::vector<at::Tensor> causal_conv1d_bwd(const at::Tensor& x, const at::Tensor& w,
                                          const std::optional<at::Tensor>& bias, bool silu, const at::Tensor& dy) {
  check_conv(x, w, bias);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "dy must have x's shape and dtype");
  at::Tensor dx = channels_last_like(x);
  at::Tensor dw = at::zeros(w.sizes(), w.options());
  at::Tensor db;
  if (bias) db = at::zeros(bias->sizes(), bias->options());
  if (x.numel() > 0) {
    const bool cl = x.stride(1) == 1 && dy.stride(1) == 1;
    at::Tensor* pdb = bias ? &db : nullptr;
    if (x.scalar_type() == at::kFloat) {
      const float* bp = bias ? bias->data_ptr<float>() : nullptr;
      cl ? conv_bwd_impl<float, true>(x, w, bp, silu, dy, dx, dw, pdb)
         : conv_bwd_impl<float, false>(x, w, bp, silu, dy, dx, dw, pdb);
    } else {
      const double* bp = bias ? bias->data_ptr<double>() : nullptr;
      cl ? conv_bwd_impl<double, true>(x, w, bp, silu, dy, dx, dw, pdb)
         : conv_bwd_impl<double, false>(x, w, bp, silu, dy, dx, dw, pdb);
    }
  }
  return {dx, dw, db};
}


// ------------------------------------------------------------------------------------------------
// One windowed Mamba layer of LPM-Net, fused (LayerNorm -> in_proj -> causal conv1d + SiLU ->
// x_proj -> dt_proj + softplus -> selective scan with D skip and SiLU(z) gate -> out_proj), one
// window of L tokens at a time, with the window partition (and the Swin shift) as a gather by
// `order` on the way in and a scatter on the way out.
//
// Why: in the composed layer every step is a pass over the whole (tokens x channels) tensor, and
// at LPM-Net's widths (24 channels, 8 states) each step does a few flops per byte: training spent
// most of its time moving those tensors (projections, transposing copies, gathers, LayerNorm) and
// keeping them for the backward. Here one window's intermediates (a few hundred KB with the
// states of the scan) stay in the core's L2 cache; only the layer's input and output touch
// memory. The backward recomputes the window's forward (nothing but the input is saved) and runs
// the chain rule step by step backwards; the parameter gradients of each window are summed in T
// and added to per-chunk double accumulators (fixed chunks of windows, summed in order), so the
// result does not depend on the number of threads.
//
// Layouts: x and out are (slices, h*w, C) with any strides (the first layer reads the dense
// module's (N, C, H, W) output, the last writes it); order: (h*w,) int64, the flat pixel index
// of each token, window after window. Channel rows of the buffers are padded to multiples of W
// lanes with zeros (Cp, Dp, Ep), so every channel loop is whole vectors.
// ------------------------------------------------------------------------------------------------

constexpr int64_t kWindowsPerChunk = 8;

struct LayerShape {
  int64_t slices, hw, L, windows, C, Cp, Di, Dp, N, R, E, Ep, K;
};

// The layer's weights, transposed and zero padded once per call for the window loops: "_t"
// layouts are (input, padded output) for the forward products, "_n" (output, padded input) for
// the input gradients.
template <typename T>
struct LayerWeights {
  std::vector<T> ln_g, ln_b, ln_mask, win_t, win_n, b_in, conv_w, conv_b, wx_t, wx_n, wdt_t, wdt_n, dt_b, a,
      a_log2e, d, wout_t, wout_n, b_out;
};

template <typename T>
LayerWeights<T> pack_layer(const LayerShape& S, const at::Tensor& ln_g, const at::Tensor& ln_b,
                           const at::Tensor& w_in, const std::optional<at::Tensor>& b_in,
                           const at::Tensor& conv_w, const std::optional<at::Tensor>& conv_b,
                           const at::Tensor& w_x, const at::Tensor& w_dt, const at::Tensor& b_dt,
                           const at::Tensor& A, const at::Tensor& D, const at::Tensor& w_out,
                           const std::optional<at::Tensor>& b_out) {
  const int64_t C = S.C, Cp = S.Cp, Di = S.Di, Dp = S.Dp, N = S.N, R = S.R, E = S.E, Ep = S.Ep;
  LayerWeights<T> P;
  auto vec = [](int64_t n) { return std::vector<T>(n, T(0)); };
  P.ln_g = vec(Cp); P.ln_b = vec(Cp); P.ln_mask = vec(Cp);
  P.win_t = vec(C * 2 * Dp); P.win_n = vec(2 * Dp * Cp); P.b_in = vec(2 * Dp);
  P.conv_w = vec(S.K * Dp); P.conv_b = vec(Dp);
  P.wx_t = vec(Di * Ep); P.wx_n = vec(E * Dp);
  P.wdt_t = vec(R * Dp); P.wdt_n = vec(Dp * R); P.dt_b = vec(Dp);
  P.a = vec(N * Dp); P.a_log2e = vec(N * Dp); P.d = vec(Dp);
  P.wout_t = vec(Di * Cp); P.wout_n = vec(C * Dp); P.b_out = vec(Cp);
  const T* g = ln_g.data_ptr<T>(); const T* b = ln_b.data_ptr<T>();
  for (int64_t c = 0; c < C; ++c) { P.ln_g[c] = g[c]; P.ln_b[c] = b[c]; P.ln_mask[c] = T(1); }
  const T* wi = w_in.data_ptr<T>();  // (2 Di, C)
  for (int64_t o = 0; o < 2 * Di; ++o) {
    const int64_t po = o < Di ? o : Dp + (o - Di);  // x part then z part, each padded to Dp
    for (int64_t k = 0; k < C; ++k) {
      P.win_t[k * 2 * Dp + po] = wi[o * C + k];
      P.win_n[po * Cp + k] = wi[o * C + k];
    }
    if (b_in) P.b_in[po] = b_in->data_ptr<T>()[o];
  }
  const T* cw = conv_w.data_ptr<T>();  // (Di, K)
  for (int64_t c = 0; c < Di; ++c) {
    for (int64_t k = 0; k < S.K; ++k) P.conv_w[k * Dp + c] = cw[c * S.K + k];
    if (conv_b) P.conv_b[c] = conv_b->data_ptr<T>()[c];
  }
  const T* wx = w_x.data_ptr<T>();  // (E, Di)
  for (int64_t j = 0; j < E; ++j)
    for (int64_t k = 0; k < Di; ++k) {
      P.wx_t[k * Ep + j] = wx[j * Di + k];
      P.wx_n[j * Dp + k] = wx[j * Di + k];
    }
  const T* wd = w_dt.data_ptr<T>();  // (Di, R)
  for (int64_t c = 0; c < Di; ++c) {
    for (int64_t r = 0; r < R; ++r) {
      P.wdt_t[r * Dp + c] = wd[c * R + r];
      P.wdt_n[c * R + r] = wd[c * R + r];
    }
    P.dt_b[c] = b_dt.data_ptr<T>()[c];
    P.d[c] = D.data_ptr<T>()[c];
    for (int64_t n = 0; n < N; ++n) {
      const T a = A.data_ptr<T>()[c * N + n];
      P.a[n * Dp + c] = a;
      P.a_log2e[n * Dp + c] = T(double(a) * 1.4426950408889634);
    }
  }
  const T* wo = w_out.data_ptr<T>();  // (C, Di)
  for (int64_t o = 0; o < C; ++o) {
    for (int64_t k = 0; k < Di; ++k) {
      P.wout_t[k * Cp + o] = wo[o * Di + k];
      P.wout_n[o * Dp + k] = wo[o * Di + k];
    }
    if (b_out) P.b_out[o] = b_out->data_ptr<T>()[o];
  }
  return P;
}

// The small products of a window: the widths (a few vectors) are compile-time block sizes NV, so
// the accumulators stay in registers.
template <typename T, int NV>
inline void rows_times_block(const T* a, int64_t lda, int64_t rows, int64_t K, const T* bt, int64_t width,
                             const T* bias, T* out, int64_t ldo) {
  using V = typename VT<T>::V;
  int64_t t = 0;
  for (; t + 2 <= rows; t += 2) {  // two rows share each weight load
    V acc0[NV], acc1[NV];
    for (int q = 0; q < NV; ++q) acc0[q] = acc1[q] = bias ? vload<V>(bias + q * W) : V{};
    const T* a0 = a + t * lda;
    const T* a1 = a0 + lda;
    for (int64_t k = 0; k < K; ++k) {
      const V s0 = VT<T>::bc(a0[k]), s1 = VT<T>::bc(a1[k]);
      const T* bk = bt + k * width;
      for (int q = 0; q < NV; ++q) {
        const V b = vload<V>(bk + q * W);
        acc0[q] += s0 * b;
        acc1[q] += s1 * b;
      }
    }
    for (int q = 0; q < NV; ++q) {
      vstore(out + t * ldo + q * W, acc0[q]);
      vstore(out + (t + 1) * ldo + q * W, acc1[q]);
    }
  }
  for (; t < rows; ++t) {
    V acc[NV];
    for (int q = 0; q < NV; ++q) acc[q] = bias ? vload<V>(bias + q * W) : V{};
    for (int64_t k = 0; k < K; ++k) {
      const V s = VT<T>::bc(a[t * lda + k]);
      for (int q = 0; q < NV; ++q) acc[q] += s * vload<V>(bt + k * width + q * W);
    }
    for (int q = 0; q < NV; ++q) vstore(out + t * ldo + q * W, acc[q]);
  }
}

// out[t, :] = bias + sum_{k < K} a[t, k] * bt[k, :] for t < rows; widths are whole vectors.
template <typename T>
inline void rows_times(const T* a, int64_t lda, int64_t rows, int64_t K, const T* bt, int64_t width,
                       const T* bias, T* out, int64_t ldo) {
  for (int64_t j0 = 0; j0 < width; j0 += 4 * W) {
    const T* b = bias ? bias + j0 : nullptr;
    switch (std::min<int64_t>(4, (width - j0) / W)) {
      case 4: rows_times_block<T, 4>(a, lda, rows, K, bt + j0, width, b, out + j0, ldo); break;
      case 3: rows_times_block<T, 3>(a, lda, rows, K, bt + j0, width, b, out + j0, ldo); break;
      case 2: rows_times_block<T, 2>(a, lda, rows, K, bt + j0, width, b, out + j0, ldo); break;
      default: rows_times_block<T, 1>(a, lda, rows, K, bt + j0, width, b, out + j0, ldo); break;
    }
  }
}

template <typename T, int NV>
inline void add_rows_outer_block(const T* a, int64_t lda, int64_t K, const T* b, int64_t ldb, int64_t rows,
                                 int64_t width, T* acc) {
  using V = typename VT<T>::V;
  int64_t k = 0;
  for (; k + 2 <= K; k += 2) {  // two weight rows share each load of b
    V s0[NV], s1[NV];
    for (int q = 0; q < NV; ++q) {
      s0[q] = vload<V>(acc + k * width + q * W);
      s1[q] = vload<V>(acc + (k + 1) * width + q * W);
    }
    for (int64_t t = 0; t < rows; ++t) {
      const V x0 = VT<T>::bc(a[t * lda + k]), x1 = VT<T>::bc(a[t * lda + k + 1]);
      for (int q = 0; q < NV; ++q) {
        const V v = vload<V>(b + t * ldb + q * W);
        s0[q] += x0 * v;
        s1[q] += x1 * v;
      }
    }
    for (int q = 0; q < NV; ++q) {
      vstore(acc + k * width + q * W, s0[q]);
      vstore(acc + (k + 1) * width + q * W, s1[q]);
    }
  }
  for (; k < K; ++k) {
    V s[NV];
    for (int q = 0; q < NV; ++q) s[q] = vload<V>(acc + k * width + q * W);
    for (int64_t t = 0; t < rows; ++t) {
      const V x = VT<T>::bc(a[t * lda + k]);
      for (int q = 0; q < NV; ++q) s[q] += x * vload<V>(b + t * ldb + q * W);
    }
    for (int q = 0; q < NV; ++q) vstore(acc + k * width + q * W, s[q]);
  }
}

// acc[k, :] += sum_{t < rows} a[t, k] * b[t, :] for k < K (a weight gradient of one window).
template <typename T>
inline void add_rows_outer(const T* a, int64_t lda, int64_t K, const T* b, int64_t ldb, int64_t rows,
                           int64_t width, T* acc) {
  for (int64_t j0 = 0; j0 < width; j0 += 4 * W) {
    switch (std::min<int64_t>(4, (width - j0) / W)) {
      case 4: add_rows_outer_block<T, 4>(a, lda, K, b + j0, ldb, rows, width, acc + j0); break;
      case 3: add_rows_outer_block<T, 3>(a, lda, K, b + j0, ldb, rows, width, acc + j0); break;
      case 2: add_rows_outer_block<T, 2>(a, lda, K, b + j0, ldb, rows, width, acc + j0); break;
      default: add_rows_outer_block<T, 1>(a, lda, K, b + j0, ldb, rows, width, acc + j0); break;
    }
  }
}

template <typename T>
inline typename VT<T>::V silu_v(typename VT<T>::V x) { return x * VT<T>::sigmoid(x); }

// d silu(x) / dx = s (1 + x (1 - s)), s = sigmoid(x).
template <typename T>
inline typename VT<T>::V dsilu_v(typename VT<T>::V x) {
  const auto s = VT<T>::sigmoid(x);
  return s * (x * (T(1) - s) + T(1));
}

// One window's forward intermediates, rows of padded widths.
template <typename T>
struct WindowBuffers {
  std::vector<T> xhat, rstd, xn, xz, xs, e, draw, dts, hs, decays, y, g;
  WindowBuffers(const LayerShape& S, bool store_states)
      : xhat(S.L * S.Cp), rstd(S.L), xn(S.L * S.Cp), xz(S.L * 2 * S.Dp), xs(S.L * S.Dp),
        e(S.L * S.Ep), draw(S.L * S.Dp), dts(S.L * S.Dp),
        hs(store_states ? S.L * S.N * S.Dp : 0), decays(store_states ? S.L * S.N * S.Dp : 0),
        y(S.L * S.Dp), g(S.L * S.Dp) {}
};

// Gathers window `wi` of x into rows u[t, 0:C) (the rest of each Cp row zero).
template <typename T>
inline void gather_window(const T* x, int64_t sn, int64_t sp, int64_t sc, const int64_t* order,
                          const LayerShape& S, int64_t wi, T* u) {
  const int64_t slice = wi / (S.hw / S.L), first = (wi % (S.hw / S.L)) * S.L;
  const T* base = x + slice * sn;
  const int64_t* tokens = order + first;
  if (sc == 1) {
    for (int64_t t = 0; t < S.L; ++t) std::memcpy(u + t * S.Cp, base + tokens[t] * sp, sizeof(T) * S.C);
  } else {  // channel planes ((N, C, H, W) layouts): channel by channel, each plane's tokens in runs
    for (int64_t c = 0; c < S.C; ++c) {
      const T* plane = base + c * sc;
      for (int64_t t = 0; t < S.L; ++t) u[t * S.Cp + c] = plane[tokens[t] * sp];
    }
  }
  for (int64_t t = 0; t < S.L; ++t)
    for (int64_t c = S.C; c < S.Cp; ++c) u[t * S.Cp + c] = T(0);
}

template <typename T>
inline void scatter_window(const T* rows, int64_t ld, T* out, int64_t sn, int64_t sp, int64_t sc,
                           const int64_t* order, const LayerShape& S, int64_t wi) {
  const int64_t slice = wi / (S.hw / S.L), first = (wi % (S.hw / S.L)) * S.L;
  T* base = out + slice * sn;
  const int64_t* tokens = order + first;
  if (sc == 1) {
    for (int64_t t = 0; t < S.L; ++t) std::memcpy(base + tokens[t] * sp, rows + t * ld, sizeof(T) * S.C);
  } else {
    for (int64_t c = 0; c < S.C; ++c) {
      T* plane = base + c * sc;
      for (int64_t t = 0; t < S.L; ++t) plane[tokens[t] * sp] = rows[t * ld + c];
    }
  }
}

// The scan of one window into B.y (sum_n C h + D x), W channels at a time over all steps, their
// states in registers (NS states; NS = 0: any N, states in a buffer). With kStore the states and
// decays of every step go to B.hs / B.decays for the backward.
template <typename T, bool kStore, int NS>
void scan_window(const LayerShape& S, const LayerWeights<T>& P, WindowBuffers<T>& B) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  const int64_t L = S.L, Dp = S.Dp, R = S.R, Ep = S.Ep;
  const int64_t N = NS ? NS : S.N;
  constexpr int kRegs = NS ? NS : 1;
  V h_regs[kRegs];
  std::vector<V> h_heap(NS ? 0 : N);
  V* h = NS ? h_regs : h_heap.data();
  for (int64_t c = 0; c < Dp; c += W) {
    for (int64_t n = 0; n < N; ++n) h[n] = V{};
    const V d = vload<V>(P.d.data() + c);
    for (int64_t t = 0; t < L; ++t) {
      const T* et = B.e.data() + t * Ep;
      const V dt = vload<V>(B.dts.data() + t * Dp + c);
      const V xs = vload<V>(B.xs.data() + t * Dp + c);
      const V dtx = dt * xs;
      V y = d * xs;
#pragma GCC unroll 16
      for (int64_t n = 0; n < N; ++n) {  // unrolled: h[n] stays in a register across steps
        const V decay = Tr::exp2(dt * vload<V>(P.a_log2e.data() + n * Dp + c));
        h[n] = decay * h[n] + dtx * et[R + n];
        y += h[n] * et[R + N + n];
        if (kStore) {
          vstore(B.decays.data() + (t * N + n) * Dp + c, decay);
          vstore(B.hs.data() + (t * N + n) * Dp + c, h[n]);
        }
      }
      vstore(B.y.data() + t * Dp + c, y);
    }
  }
}

// The window's forward from its gathered input u (overwritten by xhat); with kStore the states of
// every step are kept for the backward. On return B.g holds the gated scan output (out_proj's input).
template <typename T, bool kStore>
void window_forward(const LayerShape& S, const LayerWeights<T>& P, T eps, WindowBuffers<T>& B) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  const int64_t L = S.L, C = S.C, Cp = S.Cp, Dp = S.Dp, R = S.R, Ep = S.Ep, K = S.K;
  // LayerNorm (two-pass variance, as the reference computes it), W channels at a time: sums over
  // a row in order were a chain of scalar adds, about 15% of the layer forward. The padding lanes of
  // a row are zero; the mask keeps them out of the variance and keeps xhat's and xn's zero.
  for (int64_t t = 0; t < L; ++t) {
    T* row = B.xhat.data() + t * Cp;
    V sum{};
    for (int64_t c = 0; c < Cp; c += W) sum += vload<V>(row + c);
    const V mean = Tr::bc(hsum(sum) / T(C));
    V squares{};
    for (int64_t c = 0; c < Cp; c += W) {
      const V centred = (vload<V>(row + c) - mean) * vload<V>(P.ln_mask.data() + c);
      squares += centred * centred;
    }
    const T rstd = T(1) / std::sqrt(hsum(squares) / T(C) + eps);
    B.rstd[t] = rstd;
    T* xn = B.xn.data() + t * Cp;
    for (int64_t c = 0; c < Cp; c += W) {
      const V xhat = (vload<V>(row + c) - mean) * Tr::bc(rstd) * vload<V>(P.ln_mask.data() + c);
      vstore(row + c, xhat);
      vstore(xn + c, xhat * vload<V>(P.ln_g.data() + c) + vload<V>(P.ln_b.data() + c));
    }
  }
  rows_times(B.xn.data(), Cp, L, C, P.win_t.data(), 2 * Dp, P.b_in.data(), B.xz.data(), 2 * Dp);
  // Causal depthwise conv over the window's tokens + SiLU (x part of xz: columns [0, Dp)).
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t c = 0; c < Dp; c += W) {
      V acc = vload<V>(P.conv_b.data() + c);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t src = t - (K - 1) + k;
        if (src >= 0) acc += vload<V>(P.conv_w.data() + k * Dp + c) * vload<V>(B.xz.data() + src * 2 * Dp + c);
      }
      vstore(B.xs.data() + t * Dp + c, silu_v<T>(acc));
    }
  }
  rows_times(B.xs.data(), Dp, L, S.Di, P.wx_t.data(), Ep, (const T*)nullptr, B.e.data(), Ep);
  // delta = dt_proj(dt) + bias, dt = softplus(delta).
  for (int64_t t = 0; t < L; ++t) {
    const T* et = B.e.data() + t * Ep;
    for (int64_t c = 0; c < Dp; c += W) {
      V acc = vload<V>(P.dt_b.data() + c);
      for (int64_t r = 0; r < R; ++r) acc += Tr::bc(et[r]) * vload<V>(P.wdt_t.data() + r * Dp + c);
      vstore(B.draw.data() + t * Dp + c, acc);
      vstore(B.dts.data() + t * Dp + c, Tr::softplus(acc));
    }
  }
  // Selective scan with the D skip, then the z gate.
  switch (S.N) {  // the states of W channels live in registers for LPM-Net's sizes
    case 8: scan_window<T, kStore, 8>(S, P, B); break;
    case 16: scan_window<T, kStore, 16>(S, P, B); break;
    default: scan_window<T, kStore, 0>(S, P, B); break;
  }
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t c = 0; c < Dp; c += W) {
      const V z = vload<V>(B.xz.data() + t * 2 * Dp + Dp + c);
      vstore(B.g.data() + t * Dp + c, vload<V>(B.y.data() + t * Dp + c) * silu_v<T>(z));
    }
  }
}

void check_layer(const at::Tensor& x, const at::Tensor& order, int64_t window, const at::Tensor& w_in,
                 const at::Tensor& conv_w, const at::Tensor& w_x, const at::Tensor& w_dt, const at::Tensor& A,
                 const at::Tensor& w_out) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3, "x must be a (slices, h*w, C) CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x must be float32 or float64");
  TORCH_CHECK(order.dim() == 1 && order.size(0) == x.size(1) && order.scalar_type() == at::kLong &&
                  order.is_contiguous(), "order must be contiguous int64 of length h*w");
  TORCH_CHECK(window > 0 && x.size(1) % window == 0, "h*w must be a multiple of the window length");
  for (const at::Tensor* t : {&w_in, &conv_w, &w_x, &w_dt, &A, &w_out})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == x.scalar_type(), "weights must be contiguous, of x's dtype");
}

LayerShape layer_shape(const at::Tensor& x, int64_t window, const at::Tensor& w_in, const at::Tensor& conv_w,
                       const at::Tensor& w_dt, const at::Tensor& A) {
  LayerShape S;
  S.slices = x.size(0); S.hw = x.size(1); S.L = window; S.windows = S.slices * (S.hw / window);
  S.C = x.size(2); S.Cp = round_up(S.C, W);
  S.Di = w_in.size(0) / 2; S.Dp = round_up(S.Di, W);
  S.N = A.size(1); S.R = w_dt.size(1); S.E = S.R + 2 * S.N; S.Ep = round_up(S.E, W);
  S.K = conv_w.size(1);
  return S;
}

// Forward of the layer into `out` ((slices, h*w, C), any strides).
void window_mamba_fwd(const at::Tensor& x, const at::Tensor& order, int64_t window, double eps,
                      const at::Tensor& ln_g, const at::Tensor& ln_b, const at::Tensor& w_in,
                      const std::optional<at::Tensor>& b_in, const at::Tensor& conv_w,
                      const std::optional<at::Tensor>& conv_b, const at::Tensor& w_x, const at::Tensor& w_dt,
                      const at::Tensor& b_dt, const at::Tensor& A, const at::Tensor& D, const at::Tensor& w_out,
                      const std::optional<at::Tensor>& b_out, at::Tensor& out) {
  check_layer(x, order, window, w_in, conv_w, w_x, w_dt, A, w_out);
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type(), "out must be like x");
  const LayerShape S = layer_shape(x, window, w_in, conv_w, w_dt, A);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "window_mamba_fwd", [&] {
    using T = scalar_t;
    const LayerWeights<T> P = pack_layer<T>(S, ln_g, ln_b, w_in, b_in, conv_w, conv_b, w_x, w_dt, b_dt, A, D, w_out, b_out);
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const int64_t* ord = order.data_ptr<int64_t>();
    at::parallel_for(0, S.windows, 1, [&](int64_t begin, int64_t end) {
      DenormalGuard guard;
      WindowBuffers<T> B(S, false);
      std::vector<T> o(S.L * S.Cp);
      for (int64_t wi = begin; wi < end; ++wi) {
        gather_window(xp, x.stride(0), x.stride(1), x.stride(2), ord, S, wi, B.xhat.data());
        window_forward<T, false>(S, P, T(eps), B);
        rows_times(B.g.data(), S.Dp, S.L, S.Di, P.wout_t.data(), S.Cp, P.b_out.data(), o.data(), S.Cp);
        scatter_window(o.data(), S.Cp, op, out.stride(0), out.stride(1), out.stride(2), ord, S, wi);
      }
    });
  });
}

// Offsets of the parameter gradients in one flat accumulator, in the packed layouts.
struct GradLayout {
  int64_t ln_g, ln_b, win_t, b_in, conv_w, conv_b, wx_t, wdt_t, dt_b, a, d, wout_t, b_out, size;
  explicit GradLayout(const LayerShape& S) {
    int64_t o = 0;
    auto take = [&o](int64_t n) { const int64_t at = o; o += n; return at; };
    ln_g = take(S.Cp); ln_b = take(S.Cp); win_t = take(S.C * 2 * S.Dp); b_in = take(2 * S.Dp);
    conv_w = take(S.K * S.Dp); conv_b = take(S.Dp); wx_t = take(S.Di * S.Ep); wdt_t = take(S.R * S.Dp);
    dt_b = take(S.Dp); a = take(S.N * S.Dp); d = take(S.Dp); wout_t = take(S.Di * S.Cp); b_out = take(S.Cp);
    size = o;
  }
};

template <typename T>
inline void add_column_sums(const T* rows, int64_t ld, int64_t L, int64_t width, T* acc) {
  for (int64_t t = 0; t < L; ++t)
    for (int64_t c = 0; c < width; ++c) acc[c] += rows[t * ld + c];
}

// Backward buffers of one window (beyond the forward's).
template <typename T>
struct WindowGrads {
  std::vector<T> u, dout, dg, dy, dxs, ddelta, de, dxz, dxn, dh, w;
  WindowGrads(const LayerShape& S, const GradLayout& G)
      : u(S.L * S.Cp), dout(S.L * S.Cp), dg(S.L * S.Dp), dy(S.L * S.Dp), dxs(S.L * S.Dp), ddelta(S.L * S.Dp),
        de(S.L * S.Ep), dxz(S.L * 2 * S.Dp), dxn(S.L * S.Cp), dh(S.N * S.Dp), w(G.size) {}
};

template <typename T>
void window_backward(const LayerShape& S, const LayerWeights<T>& P, const GradLayout& G, WindowBuffers<T>& B,
                     WindowGrads<T>& Q) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  const int64_t L = S.L, C = S.C, Cp = S.Cp, Di = S.Di, Dp = S.Dp, N = S.N, R = S.R, E = S.E, Ep = S.Ep, K = S.K;
  T* gw = Q.w.data();
  // out_proj
  add_rows_outer(B.g.data(), Dp, Di, Q.dout.data(), Cp, L, Cp, gw + G.wout_t);
  add_column_sums(Q.dout.data(), Cp, L, Cp, gw + G.b_out);
  rows_times(Q.dout.data(), Cp, L, C, P.wout_n.data(), Dp, (const T*)nullptr, Q.dg.data(), Dp);
  // gate y * silu(z) and the D skip
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t c = 0; c < Dp; c += W) {
      const V dg = vload<V>(Q.dg.data() + t * Dp + c);
      const V z = vload<V>(B.xz.data() + t * 2 * Dp + Dp + c);
      const V y = vload<V>(B.y.data() + t * Dp + c);
      const V xs = vload<V>(B.xs.data() + t * Dp + c);
      const V dy = dg * silu_v<T>(z);
      vstore(Q.dxz.data() + t * 2 * Dp + Dp + c, dg * y * dsilu_v<T>(z));
      vstore(Q.dy.data() + t * Dp + c, dy);
      vstore(gw + G.d + c, vload<V>(gw + G.d + c) + dy * xs);
      vstore(Q.dxs.data() + t * Dp + c, dy * vload<V>(P.d.data() + c));
    }
  }
  // Reverse scan: dh carries d loss / d h_t backwards through the decays. Per step, the lanes of
  // dy, dt, x and the sums over n stay in registers; dB and dC are sums over the channels.
  std::fill(Q.dh.begin(), Q.dh.end(), T(0));
  std::vector<V> acc_b(N), acc_c(N);
  for (int64_t t = L - 1; t >= 0; --t) {
    const T* et = B.e.data() + t * Ep;
    T* det = Q.de.data() + t * Ep;
    const T* hcur = B.hs.data() + t * N * Dp;
    const T* hprev = t > 0 ? B.hs.data() + (t - 1) * N * Dp : nullptr;
    const T* decays = B.decays.data() + t * N * Dp;
    std::fill(acc_b.begin(), acc_b.end(), V{});
    std::fill(acc_c.begin(), acc_c.end(), V{});
    for (int64_t c = 0; c < Dp; c += W) {
      const V dy = vload<V>(Q.dy.data() + t * Dp + c);
      const V dt = vload<V>(B.dts.data() + t * Dp + c);
      const V xs = vload<V>(B.xs.data() + t * Dp + c);
      const V dtx = dt * xs;
      V ddt{}, dxs = vload<V>(Q.dxs.data() + t * Dp + c);
      for (int64_t n = 0; n < N; ++n) {
        const T b_n = et[R + n], c_n = et[R + N + n];
        const V a = vload<V>(P.a.data() + n * Dp + c);
        const V dh = vload<V>(Q.dh.data() + n * Dp + c) + dy * c_n;
        acc_c[n] += vload<V>(hcur + n * Dp + c) * dy;
        const V decay = vload<V>(decays + n * Dp + c);
        const V hp = hprev ? vload<V>(hprev + n * Dp + c) : V{};
        const V dh_decay_hp = dh * decay * hp;
        ddt += dh_decay_hp * a + dh * (xs * b_n);
        vstore(gw + G.a + n * Dp + c, vload<V>(gw + G.a + n * Dp + c) + dh_decay_hp * dt);
        acc_b[n] += dh * dtx;
        dxs += dh * dt * b_n;
        vstore(Q.dh.data() + n * Dp + c, dh * decay);
      }
      vstore(Q.ddelta.data() + t * Dp + c, ddt);
      vstore(Q.dxs.data() + t * Dp + c, dxs);
    }
    for (int64_t n = 0; n < N; ++n) {
      det[R + n] = hsum(acc_b[n]);
      det[R + N + n] = hsum(acc_c[n]);
    }
  }
  // softplus and dt_proj
  for (int64_t t = 0; t < L; ++t) {
    T* dd = Q.ddelta.data() + t * Dp;
    T* det = Q.de.data() + t * Ep;
    for (int64_t c = 0; c < Dp; c += W) {
      const V v = vload<V>(dd + c) * Tr::sigmoid(vload<V>(B.draw.data() + t * Dp + c));
      vstore(dd + c, v);
      vstore(gw + G.dt_b + c, vload<V>(gw + G.dt_b + c) + v);
    }
    for (int64_t r = 0; r < R; ++r) {
      V s{};
      for (int64_t c = 0; c < Dp; c += W) s += vload<V>(dd + c) * vload<V>(P.wdt_t.data() + r * Dp + c);
      det[r] = hsum(s);
    }
    for (int64_t j = E; j < Ep; ++j) det[j] = T(0);
  }
  add_rows_outer(B.e.data(), Ep, R, Q.ddelta.data(), Dp, L, Dp, gw + G.wdt_t);
  // x_proj
  add_rows_outer(B.xs.data(), Dp, Di, Q.de.data(), Ep, L, Ep, gw + G.wx_t);
  rows_times(Q.de.data(), Ep, L, E, P.wx_n.data(), Dp, (const T*)nullptr, Q.dg.data(), Dp);
  // SiLU and the causal conv (pre-activations recomputed from the in_proj output)
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t c = 0; c < Dp; c += W) {
      V pre = vload<V>(P.conv_b.data() + c);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t src = t - (K - 1) + k;
        if (src >= 0) pre += vload<V>(P.conv_w.data() + k * Dp + c) * vload<V>(B.xz.data() + src * 2 * Dp + c);
      }
      const V dxs = vload<V>(Q.dxs.data() + t * Dp + c) + vload<V>(Q.dg.data() + t * Dp + c);
      vstore(Q.dy.data() + t * Dp + c, dxs * dsilu_v<T>(pre));  // dy now holds d pre-activation
    }
  }
  add_column_sums(Q.dy.data(), Dp, L, Dp, gw + G.conv_b);
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t c = 0; c < Dp; c += W) {
      V dx{};
      const V xp = vload<V>(B.xz.data() + t * 2 * Dp + c);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t dst = t + (K - 1) - k;  // the output step that read x[t] through tap k
        if (dst < L) {
          const V dpre = vload<V>(Q.dy.data() + dst * Dp + c);
          dx += vload<V>(P.conv_w.data() + k * Dp + c) * dpre;
          vstore(gw + G.conv_w + k * Dp + c, vload<V>(gw + G.conv_w + k * Dp + c) + dpre * xp);
        }
      }
      vstore(Q.dxz.data() + t * 2 * Dp + c, dx);
    }
  }
  // in_proj
  add_rows_outer(B.xn.data(), Cp, C, Q.dxz.data(), 2 * Dp, L, 2 * Dp, gw + G.win_t);
  add_column_sums(Q.dxz.data(), 2 * Dp, L, 2 * Dp, gw + G.b_in);
  rows_times(Q.dxz.data(), 2 * Dp, L, 2 * Dp, P.win_n.data(), Cp, (const T*)nullptr, Q.dxn.data(), Cp);
  // LayerNorm, W channels at a time (padding lanes: xhat and ln_g are zero); the input gradient
  // goes to Q.u, whose padding lanes nothing reads.
  for (int64_t t = 0; t < L; ++t) {
    const T* dxn = Q.dxn.data() + t * Cp;
    const T* xhat = B.xhat.data() + t * Cp;
    V m1{}, m2{};
    for (int64_t c = 0; c < Cp; c += W) {
      const V d = vload<V>(dxn + c), xh = vload<V>(xhat + c);
      const V gx = d * vload<V>(P.ln_g.data() + c);
      m1 += gx;
      m2 += gx * xh;
      vstore(gw + G.ln_g + c, vload<V>(gw + G.ln_g + c) + d * xh);
      vstore(gw + G.ln_b + c, vload<V>(gw + G.ln_b + c) + d);
    }
    const V mean1 = Tr::bc(hsum(m1) / T(C)), mean2 = Tr::bc(hsum(m2) / T(C));
    T* dx = Q.u.data() + t * Cp;
    for (int64_t c = 0; c < Cp; c += W) {
      const V gx = vload<V>(dxn + c) * vload<V>(P.ln_g.data() + c);
      vstore(dx + c, Tr::bc(B.rstd[t]) * (gx - mean1 - vload<V>(xhat + c) * mean2));
    }
  }
}

template <typename T>
at::Tensor unpack_grad(const std::vector<double>& g, int64_t offset, int64_t rows, int64_t cols, int64_t ld,
                       bool transpose, const at::TensorOptions& opts) {
  // packed (rows, ld) block -> a (rows, cols) tensor, or its transpose (cols, rows)
  at::Tensor out = transpose ? at::empty({cols, rows}, opts) : at::empty({rows, cols}, opts);
  T* p = out.data_ptr<T>();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) (transpose ? p[j * rows + i] : p[i * cols + j]) = T(g[offset + i * ld + j]);
  return out;
}

// Returns dx (x's layout), then the gradients of ln_g, ln_b, w_in, b_in, conv_w, conv_b, w_x, w_dt,
// b_dt, A, D, w_out, b_out (undefined tensors for absent biases).
std::vector<at::Tensor> window_mamba_bwd(
    const at::Tensor& x, const at::Tensor& order, int64_t window, double eps, const at::Tensor& ln_g,
    const at::Tensor& ln_b, const at::Tensor& w_in, const std::optional<at::Tensor>& b_in, const at::Tensor& conv_w,
    const std::optional<at::Tensor>& conv_b, const at::Tensor& w_x, const at::Tensor& w_dt, const at::Tensor& b_dt,
    const at::Tensor& A, const at::Tensor& D, const at::Tensor& w_out, const std::optional<at::Tensor>& b_out,
    const at::Tensor& dout) {
  check_layer(x, order, window, w_in, conv_w, w_x, w_dt, A, w_out);
  TORCH_CHECK(dout.sizes() == x.sizes() && dout.scalar_type() == x.scalar_type(), "dout must be like x");
  const LayerShape S = layer_shape(x, window, w_in, conv_w, w_dt, A);
  const GradLayout G(S);
  at::Tensor dx = at::empty_like(x);
  const int64_t chunks = (S.windows + kWindowsPerChunk - 1) / kWindowsPerChunk;
  std::vector<double> partial(chunks * G.size, 0.0);
  std::vector<at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "window_mamba_bwd", [&] {
    using T = scalar_t;
    const LayerWeights<T> P = pack_layer<T>(S, ln_g, ln_b, w_in, b_in, conv_w, conv_b, w_x, w_dt, b_dt, A, D, w_out, b_out);
    const T* xp = x.data_ptr<T>();
    const T* gp = dout.data_ptr<T>();
    T* dxp = dx.data_ptr<T>();
    const int64_t* ord = order.data_ptr<int64_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      DenormalGuard guard;
      WindowBuffers<T> B(S, true);
      WindowGrads<T> Q(S, G);
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        double* acc = partial.data() + chunk * G.size;
        const int64_t last = std::min(S.windows, (chunk + 1) * kWindowsPerChunk);
        for (int64_t wi = chunk * kWindowsPerChunk; wi < last; ++wi) {
          gather_window(xp, x.stride(0), x.stride(1), x.stride(2), ord, S, wi, B.xhat.data());
          gather_window(gp, dout.stride(0), dout.stride(1), dout.stride(2), ord, S, wi, Q.dout.data());
          window_forward<T, true>(S, P, T(eps), B);
          std::fill(Q.w.begin(), Q.w.end(), T(0));
          window_backward(S, P, G, B, Q);
          scatter_window(Q.u.data(), S.Cp, dxp, dx.stride(0), dx.stride(1), dx.stride(2), ord, S, wi);
          for (int64_t i = 0; i < G.size; ++i) acc[i] += Q.w[i];
        }
      }
    });
    std::vector<double> g(G.size, 0.0);
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
      for (int64_t i = 0; i < G.size; ++i) g[i] += partial[chunk * G.size + i];
    const auto opts = x.options();
    auto vector_of = [&](int64_t offset, int64_t n) { return unpack_grad<T>(g, offset, 1, n, n, false, opts).view({n}); };
    // in_proj's packed (C, 2 Dp) block: the x half then the z half, each to (Di, C)
    at::Tensor d_w_in = at::cat({unpack_grad<T>(g, G.win_t, S.C, S.Di, 2 * S.Dp, true, opts),
                                 unpack_grad<T>(g, G.win_t + S.Dp, S.C, S.Di, 2 * S.Dp, true, opts)});
    at::Tensor d_b_in;
    if (b_in) d_b_in = at::cat({vector_of(G.b_in, S.Di), vector_of(G.b_in + S.Dp, S.Di)});
    grads = {dx,
             vector_of(G.ln_g, S.C),
             vector_of(G.ln_b, S.C),
             d_w_in,
             d_b_in,
             unpack_grad<T>(g, G.conv_w, S.K, S.Di, S.Dp, true, opts),
             conv_b ? vector_of(G.conv_b, S.Di) : at::Tensor(),
             unpack_grad<T>(g, G.wx_t, S.Di, S.E, S.Ep, true, opts),
             unpack_grad<T>(g, G.wdt_t, S.R, S.Di, S.Dp, true, opts),
             vector_of(G.dt_b, S.Di),
             unpack_grad<T>(g, G.a, S.N, S.Di, S.Dp, true, opts),
             vector_of(G.d, S.Di),
             unpack_grad<T>(g, G.wout_t, S.Di, S.C, S.Cp, true, opts),
             b_out ? vector_of(G.b_out, S.C) : at::Tensor()};
  });
  return grads;
}


// ------------------------------------------------------------------------------------------------
// Voxel-wise maximum (or minimum) of LPM-Net's three views, with the index of the view that gave
// it, and the backward that routes the gradient to that view. The chain of torch.maximum calls
// spent several passes over the volume per merge on its backward (equality, masks, where);
// this is one pass each way. Ties go to the first view (torch.maximum splits them); NaN wins.
// The views are strided permutations of each other's layouts: TensorIterator walks them.
// ------------------------------------------------------------------------------------------------

std::vector<at::Tensor> merge_views_fwd(const std::vector<at::Tensor>& views, bool maximum) {
  TORCH_CHECK(views.size() >= 1 && views.size() <= 255, "between 1 and 255 views");
  // Contiguous outputs: the head reads the merged volume as (B, C, voxels) without a copy.
  at::Tensor out = at::empty(views[0].sizes(), views[0].options());
  at::Tensor which = at::empty(views[0].sizes(), views[0].options().dtype(at::kByte));
  at::TensorIteratorConfig config;
  config.add_output(out).add_output(which).check_all_same_dtype(false);
  for (const auto& v : views) {
    TORCH_CHECK(v.scalar_type() == out.scalar_type() && v.sizes() == out.sizes(), "views of one dtype and shape");
    config.add_const_input(v);
  }
  auto iter = config.build();
  const int64_t nviews = views.size();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "merge_views_fwd", [&] {
    iter.for_each([&](char** data, const int64_t* strides, int64_t n) {
      for (int64_t i = 0; i < n; ++i) {
        scalar_t best = *reinterpret_cast<const scalar_t*>(data[2] + i * strides[2]);
        int64_t chosen = 0;
        for (int64_t k = 1; k < nviews; ++k) {
          const scalar_t v = *reinterpret_cast<const scalar_t*>(data[2 + k] + i * strides[2 + k]);
          if ((maximum ? v > best : v < best) || (v != v && best == best)) {
            best = v;
            chosen = k;
          }
        }
        *reinterpret_cast<scalar_t*>(data[0] + i * strides[0]) = best;
        *reinterpret_cast<uint8_t*>(data[1] + i * strides[1]) = uint8_t(chosen);
      }
    });
  });
  return {out, which};
}

std::vector<at::Tensor> merge_views_bwd(const at::Tensor& grad, const at::Tensor& which, int64_t nviews) {
  std::vector<at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "merge_views_bwd", [&] {
    for (int64_t k = 0; k < nviews; ++k) {
      at::Tensor g = at::empty_like(grad);
      auto iter = at::TensorIteratorConfig().add_output(g).add_const_input(grad).add_const_input(which)
                      .check_all_same_dtype(false).build();
      iter.for_each([&](char** data, const int64_t* strides, int64_t n) {
        for (int64_t i = 0; i < n; ++i) {
          const uint8_t w = *reinterpret_cast<const uint8_t*>(data[2] + i * strides[2]);
          *reinterpret_cast<scalar_t*>(data[0] + i * strides[0]) =
              w == k ? *reinterpret_cast<const scalar_t*>(data[1] + i * strides[1]) : scalar_t(0);
        }
      });
      grads.push_back(g);
    }
  });
  return grads;
}


// ------------------------------------------------------------------------------------------------
// LPM-Net's CfC head, fused: for h (B, C, V) and the four 1x1x1 projections W = [ff1; ff2; time_a;
// time_b] (4C, C) and fc (O, C) + bias,
//   a = ff1 h, b = ff2 h, t = sigmoid(time_a h + time_b h), mix = a (1 - t) + t b,
//   mixed = sq(fc mix + bias), base = sq(fc a + bias), detail = sq(fc b + bias),  sq(q) = tanh(q)/2 + 1/2
// over blocks of kHeadBlock voxels whose intermediates stay in L1/L2. The composed head wrote and
// read four (C x V) products, their gradient's concatenation and the mixes once each per pass; here
// only h, the outputs and their gradients touch memory. The backward recomputes each block's forward;
// weight gradients are summed per block in T and over fixed chunks of blocks in double.
// ------------------------------------------------------------------------------------------------

constexpr int64_t kHeadBlock = 128;  // voxels per block (a multiple of W)
constexpr int64_t kHeadBlocksPerChunk = 16;

struct HeadShape {
  int64_t batch, C, V, O, blocks_per_item, blocks;
};

// out[r, :] = sum_k w[r * ldw + k] * in[k, :] for r < rows (rows of kHeadBlock voxels).
template <typename T>
inline void head_channels(const T* w, int64_t ldw, int64_t rows, int64_t K, const T* in, T* out) {
  using V = typename VT<T>::V;
  constexpr int64_t NVB = kHeadBlock / W;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    for (int64_t v = 0; v < NVB; v += 4) {  // 4 voxel vectors x 4 rows of accumulators
      V acc[4][4] = {};
      for (int64_t k = 0; k < K; ++k) {
        V x[4];
        for (int j = 0; j < 4; ++j) x[j] = vload<V>(in + k * kHeadBlock + (v + j) * W);
        for (int i = 0; i < 4; ++i) {
          const V s = VT<T>::bc(w[(r + i) * ldw + k]);
          for (int j = 0; j < 4; ++j) acc[i][j] += s * x[j];
        }
      }
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) vstore(out + (r + i) * kHeadBlock + (v + j) * W, acc[i][j]);
    }
  }
  for (; r < rows; ++r) {
    for (int64_t v = 0; v < NVB; ++v) {
      V acc{};
      for (int64_t k = 0; k < K; ++k) acc += VT<T>::bc(w[r * ldw + k]) * vload<V>(in + k * kHeadBlock + v * W);
      vstore(out + r * kHeadBlock + v * W, acc);
    }
  }
}

// acc[r * K + k] += sum_v d[r, v] * x[k, v] (a weight gradient of one block).
template <typename T>
inline void head_outer(const T* d, int64_t rows, const T* x, int64_t K, T* acc) {
  using V = typename VT<T>::V;
  constexpr int64_t NVB = kHeadBlock / W;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
      V s[4] = {};
      for (int64_t v = 0; v < NVB; ++v) {
        const V dv = vload<V>(d + r * kHeadBlock + v * W);
        for (int j = 0; j < 4; ++j) s[j] += dv * vload<V>(x + (k + j) * kHeadBlock + v * W);
      }
      for (int j = 0; j < 4; ++j) acc[r * K + k + j] += hsum(s[j]);
    }
    for (; k < K; ++k) {
      V s{};
      for (int64_t v = 0; v < NVB; ++v) s += vload<V>(d + r * kHeadBlock + v * W) * vload<V>(x + k * kHeadBlock + v * W);
      acc[r * K + k] += hsum(s);
    }
  }
}

template <typename T>
struct HeadBuffers {
  std::vector<T> h, proj, mix, q, dq, dmix, dproj, dh;
  HeadBuffers(const HeadShape& S)
      : h(S.C * kHeadBlock), proj(3 * S.C * kHeadBlock), mix(S.C * kHeadBlock), q(3 * S.O * kHeadBlock),
        dq(3 * S.O * kHeadBlock), dmix(S.C * kHeadBlock), dproj(3 * S.C * kHeadBlock), dh(S.C * kHeadBlock) {}
};

// Copies rows (C or O of them) of voxels [v0, v0 + n) of item b into a block (zero padded).
template <typename T>
inline void load_block(const T* src, int64_t rows, int64_t V, int64_t b, int64_t v0, int64_t n, T* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + (b * rows + r) * V + v0;
    std::memcpy(dst + r * kHeadBlock, s, sizeof(T) * n);
    std::fill(dst + r * kHeadBlock + n, dst + (r + 1) * kHeadBlock, T(0));
  }
}

template <typename T>
inline void store_block(const T* src, int64_t rows, int64_t V, int64_t b, int64_t v0, int64_t n, T* dst) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + (b * rows + r) * V + v0, src + r * kHeadBlock, sizeof(T) * n);
}

// Forward of one block from B.h: B.proj = [a; b; sigmoid(pre)], B.mix, B.q = the fc outputs (before sq)
// of mix, a, b (the last two only with components).
template <typename T>
void head_block_forward(const HeadShape& S, const T* w4, const T* wt, const T* fc_w, const T* fc_b,
                        bool components, HeadBuffers<T>& B) {
  using Tr = VT<T>;
  using V = typename Tr::V;
  const int64_t C = S.C, O = S.O, n = kHeadBlock;
  head_channels(w4, C, 2 * C, C, B.h.data(), B.proj.data());  // a, b
  head_channels(wt, C, C, C, B.h.data(), B.proj.data() + 2 * C * n);  // time_a + time_b
  for (int64_t i = 0; i < C * n; i += W) {
    const V a = vload<V>(B.proj.data() + i), b = vload<V>(B.proj.data() + C * n + i);
    const V t = Tr::sigmoid(vload<V>(B.proj.data() + 2 * C * n + i));
    vstore(B.proj.data() + 2 * C * n + i, t);
    vstore(B.mix.data() + i, a * (T(1) - t) + t * b);
  }
  const T* sources[3] = {B.mix.data(), B.proj.data(), B.proj.data() + C * n};
  for (int part = 0; part < (components ? 3 : 1); ++part) {
    T* q = B.q.data() + part * O * n;
    head_channels(fc_w, C, O, C, sources[part], q);
    for (int64_t o = 0; o < O; ++o)
      for (int64_t v = 0; v < n; v += W) vstore(q + o * n + v, vload<V>(q + o * n + v) + fc_b[o]);
  }
}

HeadShape head_shape(const at::Tensor& h, const at::Tensor& fc_w) {
  HeadShape S;
  S.batch = h.size(0); S.C = h.size(1); S.V = h.size(2); S.O = fc_w.size(0);
  S.blocks_per_item = (S.V + kHeadBlock - 1) / kHeadBlock;
  S.blocks = S.batch * S.blocks_per_item;
  return S;
}

void check_head(const at::Tensor& h, const at::Tensor& w4, const at::Tensor& fc_w, const at::Tensor& fc_b) {
  TORCH_CHECK(h.device().is_cpu() && h.dim() == 3 && h.is_contiguous(), "h must be a contiguous (B, C, V) CPU tensor");
  TORCH_CHECK(h.scalar_type() == at::kFloat || h.scalar_type() == at::kDouble, "h must be float32 or float64");
  const int64_t C = h.size(1);
  TORCH_CHECK(w4.dim() == 2 && w4.size(0) == 4 * C && w4.size(1) == C && w4.is_contiguous(), "w4 must be (4C, C)");
  TORCH_CHECK(fc_w.dim() == 2 && fc_w.size(1) == C && fc_w.is_contiguous() && fc_b.dim() == 1 &&
                  fc_b.size(0) == fc_w.size(0), "fc must be (O, C) with an (O,) bias");
  for (const at::Tensor* t : {&w4, &fc_w, &fc_b}) TORCH_CHECK(t->scalar_type() == h.scalar_type(), "weights of h's dtype");
}

// The summed time weights (time_a + time_b): one product for the gate instead of two.
template <typename T>
std::vector<T> time_weights(const T* w4, int64_t C) {
  std::vector<T> wt(C * C);
  for (int64_t i = 0; i < C * C; ++i) wt[i] = w4[2 * C * C + i] + w4[3 * C * C + i];
  return wt;
}

std::vector<at::Tensor> cfc_head_fwd(const at::Tensor& h, const at::Tensor& w4, const at::Tensor& fc_w,
                                     const at::Tensor& fc_b, bool components) {
  check_head(h, w4, fc_w, fc_b);
  const HeadShape S = head_shape(h, fc_w);
  std::vector<at::Tensor> outs;
  for (int i = 0; i < (components ? 3 : 1); ++i) outs.push_back(at::empty({S.batch, S.O, S.V}, h.options()));
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "cfc_head_fwd", [&] {
    using T = scalar_t;
    using Tr = VT<T>;
    using Vv = typename Tr::V;
    const std::vector<T> wt = time_weights(w4.data_ptr<T>(), S.C);
    at::parallel_for(0, S.blocks, 1, [&](int64_t begin, int64_t end) {
      DenormalGuard guard;
      HeadBuffers<T> B(S);
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t b = blk / S.blocks_per_item, v0 = (blk % S.blocks_per_item) * kHeadBlock;
        const int64_t n = std::min(kHeadBlock, S.V - v0);
        load_block(h.data_ptr<T>(), S.C, S.V, b, v0, n, B.h.data());
        head_block_forward(S, w4.data_ptr<T>(), wt.data(), fc_w.data_ptr<T>(), fc_b.data_ptr<T>(), components, B);
        for (size_t part = 0; part < outs.size(); ++part) {
          T* q = B.q.data() + part * S.O * kHeadBlock;
          for (int64_t i = 0; i < S.O * kHeadBlock; i += W) vstore(q + i, Tr::sigmoid(vload<Vv>(q + i) * T(2)));
          store_block(q, S.O, S.V, b, v0, n, outs[part].data_ptr<T>());
        }
      }
    });
  });
  return outs;
}

// Gradients of the head: returns dh, dw4, dfc_w, dfc_b. d_base/d_detail may be undefined (the outputs
// were not used, or the head ran without components).
std::vector<at::Tensor> cfc_head_bwd(const at::Tensor& h, const at::Tensor& w4, const at::Tensor& fc_w,
                                     const at::Tensor& fc_b, const at::Tensor& d_mixed,
                                     const std::optional<at::Tensor>& d_base, const std::optional<at::Tensor>& d_detail) {
  check_head(h, w4, fc_w, fc_b);
  const HeadShape S = head_shape(h, fc_w);
  const at::Tensor* grads_in[3] = {&d_mixed, d_base ? &*d_base : nullptr, d_detail ? &*d_detail : nullptr};
  for (const at::Tensor* g : grads_in)
    TORCH_CHECK(!g || (g->is_contiguous() && g->sizes() == at::IntArrayRef({S.batch, S.O, S.V}) &&
                       g->scalar_type() == h.scalar_type()), "output gradients must be contiguous (B, O, V)");
  const bool components = grads_in[1] || grads_in[2];
  const int64_t C = S.C, O = S.O, n = kHeadBlock;
  const int64_t nw = 3 * C * C + O * C + O;  // d[ff1; ff2; time], d fc_w, d fc_b
  const int64_t chunks = (S.blocks + kHeadBlocksPerChunk - 1) / kHeadBlocksPerChunk;
  std::vector<double> partial(chunks * nw, 0.0);
  at::Tensor dh = at::empty_like(h);
  std::vector<at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "cfc_head_bwd", [&] {
    using T = scalar_t;
    using Tr = VT<T>;
    using Vv = typename Tr::V;
    const T* w4p = w4.data_ptr<T>();
    const T* fcw = fc_w.data_ptr<T>();
    const std::vector<T> wt = time_weights(w4p, C);
    // Transposed weights for the input gradients: rows k, columns [ff1 | ff2 | time] and fc's.
    std::vector<T> w3t(C * 3 * C), fct(C * O);
    for (int64_t r = 0; r < C; ++r)
      for (int64_t k = 0; k < C; ++k) {
        w3t[k * 3 * C + r] = w4p[r * C + k];
        w3t[k * 3 * C + C + r] = w4p[(C + r) * C + k];
        w3t[k * 3 * C + 2 * C + r] = wt[r * C + k];
      }
    for (int64_t o = 0; o < O; ++o)
      for (int64_t c = 0; c < C; ++c) fct[c * O + o] = fcw[o * C + c];
    at::parallel_for(0, chunks, 1, [&](int64_t cbegin, int64_t cend) {
      DenormalGuard guard;
      HeadBuffers<T> B(S);
      std::vector<T> gw(nw);
      for (int64_t chunk = cbegin; chunk < cend; ++chunk) {
        double* acc = partial.data() + chunk * nw;
        const int64_t last = std::min(S.blocks, (chunk + 1) * kHeadBlocksPerChunk);
        for (int64_t blk = chunk * kHeadBlocksPerChunk; blk < last; ++blk) {
          const int64_t b = blk / S.blocks_per_item, v0 = (blk % S.blocks_per_item) * kHeadBlock;
          const int64_t cnt = std::min(kHeadBlock, S.V - v0);
          load_block(h.data_ptr<T>(), C, S.V, b, v0, cnt, B.h.data());
          head_block_forward(S, w4p, wt.data(), fcw, fc_b.data_ptr<T>(), components, B);
          std::fill(gw.begin(), gw.end(), T(0));
          // d q = d out * d sq / d q, sq(q) = sigmoid(2 q); parts without a gradient stay zero.
          for (int part = 0; part < 3; ++part) {
            T* dq = B.dq.data() + part * O * n;
            if (!grads_in[part]) {
              std::fill(dq, dq + O * n, T(0));
              continue;
            }
            load_block(grads_in[part]->data_ptr<T>(), O, S.V, b, v0, cnt, dq);
            const T* q = B.q.data() + part * O * n;
            for (int64_t i = 0; i < O * n; i += W) {
              const Vv s = Tr::sigmoid(vload<Vv>(q + i) * T(2));
              vstore(dq + i, vload<Vv>(dq + i) * (T(2) * s * (T(1) - s)));
            }
            for (int64_t o = 0; o < O; ++o) {
              Vv sum{};
              for (int64_t v = 0; v < n; v += W) sum += vload<Vv>(dq + o * n + v);
              gw[3 * C * C + O * C + o] += hsum(sum);
            }
          }
          const T* sources[3] = {B.mix.data(), B.proj.data(), B.proj.data() + C * n};
          for (int part = 0; part < 3; ++part)
            if (grads_in[part]) head_outer(B.dq.data() + part * O * n, O, sources[part], C, gw.data() + 3 * C * C);
          // d mix, d a, d b from fc (fc^T dq per part), then through the gate.
          head_channels(fct.data(), O, C, O, B.dq.data(), B.dmix.data());
          head_channels(fct.data(), O, C, O, B.dq.data() + O * n, B.dproj.data());
          head_channels(fct.data(), O, C, O, B.dq.data() + 2 * O * n, B.dproj.data() + C * n);
          for (int64_t i = 0; i < C * n; i += W) {
            const Vv dmix = vload<Vv>(B.dmix.data() + i);
            const Vv a = vload<Vv>(B.proj.data() + i), bb = vload<Vv>(B.proj.data() + C * n + i);
            const Vv t = vload<Vv>(B.proj.data() + 2 * C * n + i);
            vstore(B.dproj.data() + i, vload<Vv>(B.dproj.data() + i) + dmix * (T(1) - t));
            vstore(B.dproj.data() + C * n + i, vload<Vv>(B.dproj.data() + C * n + i) + dmix * t);
            vstore(B.dproj.data() + 2 * C * n + i, dmix * (bb - a) * t * (T(1) - t));
          }
          head_outer(B.dproj.data(), 3 * C, B.h.data(), C, gw.data());
          head_channels(w3t.data(), 3 * C, C, 3 * C, B.dproj.data(), B.dh.data());
          store_block(B.dh.data(), C, S.V, b, v0, cnt, dh.data_ptr<T>());
          for (int64_t i = 0; i < nw; ++i) acc[i] += gw[i];
        }
      }
    });
    std::vector<double> g(nw, 0.0);
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
      for (int64_t i = 0; i < nw; ++i) g[i] += partial[chunk * nw + i];
    at::Tensor dw4 = at::empty({4 * C, C}, h.options()), dfc = at::empty({O, C}, h.options()), dfcb = at::empty({O}, h.options());
    T* p = dw4.data_ptr<T>();
    for (int64_t i = 0; i < 3 * C * C; ++i) p[i] = T(g[i]);
    for (int64_t i = 0; i < C * C; ++i) p[3 * C * C + i] = p[2 * C * C + i];  // time_a and time_b: one gradient
    for (int64_t i = 0; i < O * C; ++i) dfc.data_ptr<T>()[i] = T(g[3 * C * C + i]);
    for (int64_t o = 0; o < O; ++o) dfcb.data_ptr<T>()[o] = T(g[3 * C * C + O * C + o]);
    result = {dh, dw4, dfc, dfcb};
  });
  return result;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lpmnet CPU kernels: selective scan (Mamba-1), causal conv1d, fused windowed Mamba layer";
#ifdef LPMNET_KERNEL_KEY  // what it was compiled from (lpmnet.kernels.kernel_key), a bare token of hex digits
#define LPMNET_STRING(x) #x
#define LPMNET_EXPANDED_STRING(x) LPMNET_STRING(x)
  m.attr("kernel_key") = LPMNET_EXPANDED_STRING(LPMNET_KERNEL_KEY);
#endif
  m.def("fwd", &selective_scan_fwd, "selective scan forward", py::arg("u"), py::arg("delta"),
        py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"),
        py::arg("delta_bias"), py::arg("delta_softplus"),
        py::call_guard<py::gil_scoped_release>());
  m.def("bwd", &selective_scan_bwd, "selective scan backward", py::arg("u"), py::arg("delta"),
        py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"),
        py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("dy"),
        py::call_guard<py::gil_scoped_release>());
  m.def("conv_fwd", &causal_conv1d_fwd, "causal depthwise conv1d (+ SiLU) forward", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("silu"), py::call_guard<py::gil_scoped_release>());
  m.def("conv_bwd", &causal_conv1d_bwd, "causal depthwise conv1d (+ SiLU) backward", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("silu"), py::arg("dy"),
        py::call_guard<py::gil_scoped_release>());
  m.def("window_mamba_fwd", &window_mamba_fwd, "LPM-Net windowed Mamba layer forward, fused", py::arg("x"),
        py::arg("order"), py::arg("window"), py::arg("eps"), py::arg("ln_weight"), py::arg("ln_bias"),
        py::arg("in_weight"), py::arg("in_bias"), py::arg("conv_weight"), py::arg("conv_bias"),
        py::arg("x_weight"), py::arg("dt_weight"), py::arg("dt_bias"), py::arg("A"), py::arg("D"),
        py::arg("out_weight"), py::arg("out_bias"), py::arg("out"), py::call_guard<py::gil_scoped_release>());
  m.def("window_mamba_bwd", &window_mamba_bwd, "LPM-Net windowed Mamba layer backward, fused", py::arg("x"),
        py::arg("order"), py::arg("window"), py::arg("eps"), py::arg("ln_weight"), py::arg("ln_bias"),
        py::arg("in_weight"), py::arg("in_bias"), py::arg("conv_weight"), py::arg("conv_bias"),
        py::arg("x_weight"), py::arg("dt_weight"), py::arg("dt_bias"), py::arg("A"), py::arg("D"),
        py::arg("out_weight"), py::arg("out_bias"), py::arg("dout"), py::call_guard<py::gil_scoped_release>());
  m.def("merge_views_fwd", &merge_views_fwd, "voxel-wise max/min of views and the index of the view",
        py::arg("views"), py::arg("maximum"), py::call_guard<py::gil_scoped_release>());
  m.def("merge_views_bwd", &merge_views_bwd, "gradient of merge_views_fwd, routed to the chosen views",
        py::arg("grad"), py::arg("which"), py::arg("nviews"), py::call_guard<py::gil_scoped_release>());
  m.def("cfc_head_fwd", &cfc_head_fwd, "LPM-Net CfC head forward, fused", py::arg("h"), py::arg("w4"),
        py::arg("fc_weight"), py::arg("fc_bias"), py::arg("components"), py::call_guard<py::gil_scoped_release>());
  m.def("cfc_head_bwd", &cfc_head_bwd, "LPM-Net CfC head backward, fused", py::arg("h"), py::arg("w4"),
        py::arg("fc_weight"), py::arg("fc_bias"), py::arg("d_mixed"), py::arg("d_base"), py::arg("d_detail"),
        py::call_guard<py::gil_scoped_release>());
}
