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

// Compiled with the other kernels into one module (lpmnet/ops/build.py); its pure-PyTorch reference:
// lpmnet.ops.causal_conv1d.causal_conv1d_ref.

#include "common.h"

namespace {

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

void define_causal_conv1d(py::module& m) {
  m.def("conv_fwd", &causal_conv1d_fwd, "causal depthwise conv1d (+ SiLU) forward", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("silu"), py::call_guard<py::gil_scoped_release>());
  m.def("conv_bwd", &causal_conv1d_bwd, "causal depthwise conv1d (+ SiLU) backward", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("silu"), py::arg("dy"),
        py::call_guard<py::gil_scoped_release>());
}

const lpmnet_kernels::Register kRegister(&define_causal_conv1d);

}  // namespace
