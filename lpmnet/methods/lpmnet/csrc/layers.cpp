// LPM-Net's fused CPU kernels: its windowed Mamba layer, the merge of its views and its CfC head (each
// with its own comment below). Compiled into lpmnet's one kernel module with the operations of
// lpmnet/ops/csrc (lpmnet/ops/build.py collects lpmnet/methods/*/csrc/*.cpp); the Python bindings and
// the pure-PyTorch references are in lpmnet/methods/lpmnet/layers.py.

#include "../../../ops/csrc/common.h"

namespace {

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

void define_lpmnet_layers(py::module& m) {
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

const lpmnet_kernels::Register kRegister(&define_lpmnet_layers);

}  // namespace
