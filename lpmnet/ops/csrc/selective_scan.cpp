// Selective scan (Mamba-1, real A, input-dependent B/C shared across channels) on the CPU.
//
// Forward and backward for float32 and float64, compiled with the other kernels into one module by
// lpmnet/ops/build.py; its pure-PyTorch reference is lpmnet.ops.selective_scan.selective_scan_ref.
// Semantics follow mamba-ssm's selective_scan_fn:
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

#include "common.h"

namespace {


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


void define_selective_scan(py::module& m) {
  m.def("fwd", &selective_scan_fwd, "selective scan forward", py::arg("u"), py::arg("delta"),
        py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"),
        py::arg("delta_bias"), py::arg("delta_softplus"),
        py::call_guard<py::gil_scoped_release>());
  m.def("bwd", &selective_scan_bwd, "selective scan backward", py::arg("u"), py::arg("delta"),
        py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"),
        py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("dy"),
        py::call_guard<py::gil_scoped_release>());
}

const lpmnet_kernels::Register kRegister(&define_selective_scan);

}  // namespace
