// CPU reference implementations of the ops declared in ops.hpp. GEMMs go through core/blas;
// the loops here are elementwise, row reductions, or index bookkeeping.
#include "nn/ops.hpp"

#include <cmath>
#include <limits>
#include <numbers>
#include <type_traits>
#include <vector>

#include "core/blas.hpp"
#include "core/small_gemm.hpp"
#include "nn/dropout.hpp"
#include "nn/elementwise_math.hpp"
#include "nn/gaussian_router.hpp"
#include "nn/lanes.hpp"
#include "nn/topk.hpp"

namespace hyperrnn::nn {

template <class T>
void embedding_forward(T* out, const int32_t* inp, const T* wte, const T* wpe, int B, int Tn, int C) {
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t) {
      T* o = out + (static_cast<int64_t>(b) * Tn + t) * C;
      const T* we = wte + static_cast<int64_t>(inp[b * Tn + t]) * C;
      const T* pe = wpe + static_cast<int64_t>(t) * C;
      for (int i = 0; i < C; ++i) o[i] = we[i] + pe[i];
    }
}

template <class T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int32_t* inp, int B, int Tn, int C) {
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t) {
      const T* d = dout + (static_cast<int64_t>(b) * Tn + t) * C;
      T* dwe = dwte + static_cast<int64_t>(inp[b * Tn + t]) * C;
      T* dpe = dwpe + static_cast<int64_t>(t) * C;
      for (int i = 0; i < C; ++i) {
        dwe[i] += d[i];
        dpe[i] += d[i];
      }
    }
}

// Row statistics in double, summed in lanes.hpp's fixed lane order (vectorised; the same bits on
// every ISA clone).
template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void layernorm_forward(
    T* __restrict out, T* __restrict mean, T* __restrict rstd, const T* __restrict inp,
    const T* __restrict weight, const T* __restrict bias, int N, int C) {
  constexpr double eps = 1e-5;
  for (int n = 0; n < N; ++n) {
    const T* x = inp + static_cast<int64_t>(n) * C;
    const double m = lane_sum(C, [&](int i) { return static_cast<double>(x[i]); }) / C;
    const double v = lane_sum(C, [&](int i) { return (x[i] - m) * (x[i] - m); });
    const double r = 1.0 / std::sqrt(v / C + eps);
    T* o = out + static_cast<int64_t>(n) * C;
    for (int i = 0; i < C; ++i) o[i] = static_cast<T>((x[i] - m) * r) * weight[i] + bias[i];
    mean[n] = static_cast<T>(m);
    rstd[n] = static_cast<T>(r);
  }
}

// xhat = (x - mean) * rstd in T (mean and rstd are stored in T), the row means of the normalised
// gradient in double (fixed lane order).
template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void layernorm_backward(
    T* __restrict dinp, T* __restrict dweight, T* __restrict dbias, const T* __restrict dout,
    const T* __restrict inp, const T* __restrict weight, const T* __restrict mean,
    const T* __restrict rstd, int N, int C) {
  for (int n = 0; n < N; ++n) {
    const T* x = inp + static_cast<int64_t>(n) * C;
    const T* d = dout + static_cast<int64_t>(n) * C;
    const T mn = mean[n], rs = rstd[n];
    const double mdn = lane_sum(C, [&](int i) { return static_cast<double>(weight[i]) * d[i]; }) / C;
    const double mdnx =
        lane_sum(C, [&](int i) { return static_cast<double>(weight[i]) * d[i] * static_cast<double>((x[i] - mn) * rs); }) / C;
    T* dx = dinp + static_cast<int64_t>(n) * C;
    for (int i = 0; i < C; ++i) {
      const double xhat = (x[i] - mn) * rs;
      const double dn = static_cast<double>(weight[i]) * d[i];
      dx[i] += static_cast<T>(rs * (dn - mdn - xhat * mdnx));
    }
    if (dweight)  // parameter gradients wanted (both or neither)
      for (int i = 0; i < C; ++i) {
        const double xhat = (x[i] - mn) * rs;
        dbias[i] += d[i];
        dweight[i] += static_cast<T>(xhat * d[i]);
      }
  }
}

template <class T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int IC, int OC) {
  if (bias) {
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < OC; ++o) out[static_cast<int64_t>(n) * OC + o] = bias[o];
  }
  gemm<T>(false, true, N, OC, IC, T(1), inp, IC, weight, IC, bias ? T(1) : T(0), out, OC);
}

template <class T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int N, int IC, int OC) {
  if (dinp) gemm<T>(false, false, N, IC, OC, T(1), dout, OC, weight, IC, T(0), dinp, IC);
  if (dweight) gemm<T>(true, false, OC, IC, N, T(1), dout, OC, inp, IC, T(1), dweight, IC);
  if (dbias)
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < OC; ++o) dbias[o] += dout[static_cast<int64_t>(n) * OC + o];
}

// GELU is evaluated in the precision of T with elementwise_math.hpp's erf/exp (vectorisable in
// float; libm in double).
template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void gelu_forward(T* out, const T* inp, int64_t n) {
  const T inv_sqrt2 = static_cast<T>(1.0 / std::numbers::sqrt2);
  for (int64_t i = 0; i < n; ++i) {
    const T x = inp[i];
    out[i] = T(0.5) * x * (T(1) + erf_elementwise(x * inv_sqrt2));
  }
}

template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void gelu_backward(T* dinp, const T* dout, const T* inp, int64_t n) {
  const T inv_sqrt2 = static_cast<T>(1.0 / std::numbers::sqrt2);
  const T inv_sqrt2pi = static_cast<T>(1.0 / std::sqrt(2.0 * std::numbers::pi));
  for (int64_t i = 0; i < n; ++i) {
    const T x = inp[i];
    const T g = T(0.5) * (T(1) + erf_elementwise(x * inv_sqrt2)) + x * inv_sqrt2pi * exp_elementwise(T(-0.5) * x * x);
    dinp[i] = g * dout[i];
  }
}

// GELU that also leaves GELU'(x) in grad, evaluated with the erf it already has (grad may alias
// inp: each element is read before it is written). The same expressions as gelu_forward and
// gelu_backward, so the bits are theirs; the backward is then gelu_backward_cached's product.
template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void gelu_forward_grad(T* out, T* grad, const T* inp, int64_t n) {
  const T inv_sqrt2 = static_cast<T>(1.0 / std::numbers::sqrt2);
  const T inv_sqrt2pi = static_cast<T>(1.0 / std::sqrt(2.0 * std::numbers::pi));
  for (int64_t i = 0; i < n; ++i) {
    const T x = inp[i];
    const T e = erf_elementwise(x * inv_sqrt2);
    out[i] = T(0.5) * x * (T(1) + e);
    grad[i] = T(0.5) * (T(1) + e) + x * inv_sqrt2pi * exp_elementwise(T(-0.5) * x * x);
  }
}

template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void gelu_backward_cached(T* __restrict dinp, const T* __restrict dout,
                                                                           const T* __restrict grad, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dinp[i] = grad[i] * dout[i];
}

template <class T>
void residual_forward(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// The attention's row softmax over one (Tn, Tn) block of scores, in place; causal rows stop at the
// diagonal and are zero beyond it. Row sums in double in lanes.hpp's fixed order.
template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) static void softmax_block(T* __restrict p, int Tn, bool causal) {
  for (int i = 0; i < Tn; ++i) {
    T* row = p + static_cast<int64_t>(i) * Tn;
    const int jmax = causal ? i + 1 : Tn;
    const T mx = lane_max(row, jmax);
    // exp over whole vectors (up to 16 columns past the diagonal, never past the row): the
    // columns beyond jmax hold finite scores or last step's zeros, their exps are discarded
    // below, and each element's exp is the same expression in a vector lane as in the scalar
    // tail it replaces, so the bits are unchanged; it spares the scalar tail's exps.
    const int jexp = causal ? std::min(Tn, (jmax + 15) & ~15) : Tn;
    for (int j = 0; j < jexp; ++j) row[j] = exp_elementwise(row[j] - mx);
    const T inv = static_cast<T>(1.0 / lane_sum(jmax, [&](int j) { return static_cast<double>(row[j]); }));
    for (int j = 0; j < Tn; ++j) row[j] = j < jmax ? row[j] * inv : T(0);
  }
}

// Softmax backward in place over one block: dZ = P (dP - rowsum(P dP)).
template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) static void softmax_backward_block(T* __restrict dp, const T* __restrict p, int Tn, bool causal) {
  for (int i = 0; i < Tn; ++i) {
    const T* pr = p + static_cast<int64_t>(i) * Tn;
    T* dr = dp + static_cast<int64_t>(i) * Tn;
    const int jmax = causal ? i + 1 : Tn;
    const double s = lane_sum(jmax, [&](int j) { return static_cast<double>(pr[j]) * dr[j]; });
    for (int j = 0; j < jmax; ++j) dr[j] = static_cast<T>(pr[j] * (dr[j] - s));
    for (int j = jmax; j < Tn; ++j) dr[j] = T(0);
  }
}

// float on a CPU with AVX2 and FMA: core/small_gemm's register tiles (one call per product and
// head; the causal triangle skipped by row tile; the NT products take K^T and V^T as exact
// transposed copies in a thread's scratch). double (the gradient checks and oracles), and float on
// an older CPU, where small_gemm's only path is scalar std::fma (a libm call per multiply-add,
// about 100x slower): the BLAS, with the causal block skipped.
namespace {
template <class T>
bool own_products() {
  if constexpr (std::is_same_v<T, float>) {
    static const bool vector = small_gemm_available(SmallGemmPath::avx2);
    return vector;
  } else {
    return false;
  }
}
// x (T rows of hs, leading dimension ld) transposed into t (hs rows of T)
void transpose_head(float* __restrict t, const float* __restrict x, int Tn, int hs, int ld) {
  for (int j = 0; j < Tn; ++j)
    for (int d = 0; d < hs; ++d) t[static_cast<int64_t>(d) * Tn + j] = x[static_cast<int64_t>(j) * ld + d];
}
float* head_scratch(int64_t n) {
  thread_local std::vector<float> s;
  if (static_cast<int64_t>(s.size()) < n) s.resize(static_cast<size_t>(n));
  return s.data();
}
}  // namespace

template <class T>
void attention_forward(T* out, T* att, const T* qkv, int B, int Tn, int C, int H, bool causal, const AttnDropout<T>* drop) {
  const int hs = C / H;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hs)));
  const int ld = 3 * C;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const T* q = qkv + static_cast<int64_t>(b) * Tn * ld + h * hs;
      const T* k = q + C;
      const T* v = q + 2 * C;
      T* p = att + (static_cast<int64_t>(b) * H + h) * Tn * Tn;
      T* o = out + static_cast<int64_t>(b) * Tn * C + h * hs;
      const int m = causal ? Tn / 2 : 0;  // double, causal: rows [0, m) see only columns [0, m)
      const bool own = own_products<T>();
      if constexpr (std::is_same_v<T, float>) {
        if (own) {
          float* kt = head_scratch(static_cast<int64_t>(hs) * Tn);
          transpose_head(kt, k, Tn, hs, ld);
          small_gemm({Tn, Tn, hs, scale, q, ld, 1, kt, Tn, p, Tn, causal ? Tri::cols_to_row_end : Tri::none});
        }
      }
      if (!own) {
        if (m > 0) gemm<T>(false, true, m, m, hs, scale, q, ld, k, ld, T(0), p, Tn);
        gemm<T>(false, true, Tn - m, Tn, hs, scale, q + static_cast<int64_t>(m) * ld, ld, k, ld, T(0),
                p + static_cast<int64_t>(m) * Tn, Tn);
      }
      softmax_block(p, Tn, causal);  // writes the zeros above the diagonal
      const T* pv = p;
      if (drop) {
        const int64_t oa = (static_cast<int64_t>(b) * H + h) * Tn * Tn;
        dropout_forward<T>(drop->att + oa, p, drop->keep + oa, drop->scale, static_cast<int64_t>(Tn) * Tn);
        pv = drop->att + oa;
      }
      if constexpr (std::is_same_v<T, float>) {
        if (own) small_gemm({Tn, hs, Tn, 1.f, pv, Tn, 1, v, ld, o, C, causal ? Tri::k_to_row_end : Tri::none});
      }
      if (!own) {
        if (m > 0) gemm<T>(false, false, m, hs, m, T(1), pv, Tn, v, ld, T(0), o, C);
        gemm<T>(false, false, Tn - m, hs, Tn, T(1), pv + static_cast<int64_t>(m) * Tn, Tn, v, ld, T(0),
                o + static_cast<int64_t>(m) * C, C);
      }
    }
}

template <class T>
void attention_backward(T* dqkv, T* datt, const T* dout, const T* qkv, const T* att, int B, int Tn,
                        int C, int H, bool causal, const AttnDropout<T>* drop) {
  const int hs = C / H;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hs)));
  const int ld = 3 * C;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int64_t base = static_cast<int64_t>(b) * Tn * ld + h * hs;
      const T* q = qkv + base;
      const T* k = q + C;
      const T* v = q + 2 * C;
      T* dq = dqkv + base;
      T* dk = dq + C;
      T* dv = dq + 2 * C;
      const T* p = att + (static_cast<int64_t>(b) * H + h) * Tn * Tn;
      T* dp = datt + (static_cast<int64_t>(b) * H + h) * Tn * Tn;
      const T* d = dout + static_cast<int64_t>(b) * Tn * C + h * hs;
      const int64_t o = (static_cast<int64_t>(b) * H + h) * Tn * Tn;
      const T* pd = drop ? drop->att + o : p;
      // Causal: P and dZ are zero above the diagonal, so those terms are skipped in every product
      // (exact zeros). dP above the diagonal is never read: softmax_backward_block stops at the
      // diagonal and writes zeros beyond it (the dropout pass before it reads and rewrites it).
      const bool own = own_products<T>();
      // the BLAS path: the block of rows [0, m) and columns [m, Tn), m = Tn / 2, skipped (3/4 of the work)
      const int m = causal ? Tn / 2 : 0;
      const int64_t mT = static_cast<int64_t>(m) * Tn, mC = static_cast<int64_t>(m) * C, mL = static_cast<int64_t>(m) * ld;
      const Tri upper = causal ? Tri::cols_to_row_end : Tri::none, kto = causal ? Tri::k_to_row_end : Tri::none,
                kfrom = causal ? Tri::k_from_row_begin : Tri::none;
      if constexpr (std::is_same_v<T, float>) {
        if (own) {
          float* vt = head_scratch(static_cast<int64_t>(hs) * Tn);
          transpose_head(vt, v, Tn, hs, ld);
          small_gemm({Tn, Tn, hs, 1.f, d, C, 1, vt, Tn, dp, Tn, upper});  // dP = dO V^T
          small_gemm({Tn, hs, Tn, 1.f, pd, 1, Tn, d, C, dv, ld, kfrom});  // dV = P^T dO
        }
      }
      if (!own) {
        if (m > 0) gemm<T>(false, true, m, m, hs, T(1), d, C, v, ld, T(0), dp, Tn);           // dP = dO V^T
        gemm<T>(false, true, Tn - m, Tn, hs, T(1), d + mC, C, v, ld, T(0), dp + mT, Tn);
        gemm<T>(true, false, Tn - m, hs, Tn - m, T(1), pd + mT + m, Tn, d + mC, C, T(0), dv + mL, ld);  // dV = P^T dO
        if (m > 0) gemm<T>(true, false, m, hs, Tn, T(1), pd, Tn, d, C, T(0), dv, ld);
      }
      if (drop) dropout_backward<T>(dp, dp, drop->keep + o, drop->scale, static_cast<int64_t>(Tn) * Tn);
      softmax_backward_block(dp, p, Tn, causal);
      if constexpr (std::is_same_v<T, float>) {
        if (own) {
          small_gemm({Tn, hs, Tn, scale, dp, Tn, 1, k, ld, dq, ld, kto});    // dQ = s dZ K
          small_gemm({Tn, hs, Tn, scale, dp, 1, Tn, q, ld, dk, ld, kfrom});  // dK = s dZ^T Q
        }
      }
      if (!own) {
        if (m > 0) gemm<T>(false, false, m, hs, m, scale, dp, Tn, k, ld, T(0), dq, ld);       // dQ = s dZ K
        gemm<T>(false, false, Tn - m, hs, Tn, scale, dp + mT, Tn, k, ld, T(0), dq + mL, ld);
        gemm<T>(true, false, Tn - m, hs, Tn - m, scale, dp + mT + m, Tn, q + mL, ld, T(0), dk + mL, ld);  // dK = s dZ^T Q
        if (m > 0) gemm<T>(true, false, m, hs, Tn, scale, dp, Tn, q, ld, T(0), dk, ld);
      }
    }
}

template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) double crossentropy_forward(T* losses, T* probs, const T* logits, const int32_t* targets, int N, int V) {
  double total = 0.0;
  for (int n = 0; n < N; ++n) {
    const T* l = logits + static_cast<int64_t>(n) * V;
    T* p = probs + static_cast<int64_t>(n) * V;
    const T mx = lane_max(l, V);
    for (int v = 0; v < V; ++v) p[v] = exp_elementwise(l[v] - mx);  // vectorised
    const double s = lane_sum(V, [&](int v) { return static_cast<double>(p[v]); });
    const T inv = static_cast<T>(1.0 / s);
    for (int v = 0; v < V; ++v) p[v] *= inv;
    const double loss = std::log(s) + static_cast<double>(mx) - static_cast<double>(l[targets[n]]);
    losses[n] = static_cast<T>(loss);
    total += loss;
  }
  return total;
}

template <class T>
double row_entropy(const T* p, int V) {
  double h = 0.0;  // the reference's PICalculator: -sum p log(p + 1e-9)
  for (int v = 0; v < V; ++v)
    if (p[v] > T(0)) h -= static_cast<double>(p[v]) * std::log(static_cast<double>(p[v]) + 1e-9);
  return h;
}

template <class T>
void crossentropy_backward(T* dlogits, const T* probs, const int32_t* targets, T scale, int N, int V) {
  for (int n = 0; n < N; ++n) {
    const T* p = probs + static_cast<int64_t>(n) * V;
    T* d = dlogits + static_cast<int64_t>(n) * V;
    for (int v = 0; v < V; ++v) d[v] = scale * p[v];
    d[targets[n]] -= scale;
  }
}

template <class T>
void topk_softmax_forward(int32_t* idx, T* gates, const T* scores, int N, int E, int K) {
  for (int n = 0; n < N; ++n)
    topk_softmax_row(idx + static_cast<int64_t>(n) * K, gates + static_cast<int64_t>(n) * K,
                     scores + static_cast<int64_t>(n) * E, E, K);
}

template <class T>
void topk_softmax_backward(T* dscores, const T* dgates, const T* gates, const int32_t* idx, int N,
                           int E, int K) {
  for (int n = 0; n < N; ++n)
    topk_softmax_backward_row(dscores + static_cast<int64_t>(n) * E, dgates + static_cast<int64_t>(n) * K,
                              gates + static_cast<int64_t>(n) * K, idx + static_cast<int64_t>(n) * K, E, K);
}

template <class T>
void gaussian_scores_forward(T* scores, T* w, T* m, T* c, T* inp_sq, const T* inp, const T* mu,
                             const T* log_sigma, int N, int C, int E) {
  for (int e = 0; e < E; ++e) {
    const int64_t o = static_cast<int64_t>(e) * C;
    c[e] = gaussian_expert_wmc(w + o, m + o, mu + o, log_sigma + o, C);
  }
  for (int64_t i = 0; i < static_cast<int64_t>(N) * C; ++i) inp_sq[i] = inp[i] * inp[i];
  for (int n = 0; n < N; ++n)
    for (int e = 0; e < E; ++e) scores[static_cast<int64_t>(n) * E + e] = c[e];
  gemm<T>(false, true, N, E, C, T(-0.5), inp_sq, C, w, C, T(1), scores, E);
  gemm<T>(false, true, N, E, C, T(1), inp, C, m, C, T(1), scores, E);
}

template <class T>
void gaussian_scores_backward(T* dinp, T* dmu, T* dlog_sigma, T* scratch_ec, const T* dscores,
                              const T* inp, const T* inp_sq, const T* mu, const T* w, const T* m,
                              int N, int C, int E) {
  T* gx = scratch_ec;                            // (E,C) G^T x
  T* gx2 = gx + static_cast<int64_t>(E) * C;     // (E,C) G^T x^2
  T* gw = gx2 + static_cast<int64_t>(E) * C;     // (E,C) scratch row block for dinp
  T* gs = gw + static_cast<int64_t>(E) * C;      // (E) column sums of G
  gemm<T>(true, false, E, C, N, T(1), dscores, E, inp, C, T(0), gx, C);
  gemm<T>(true, false, E, C, N, T(1), dscores, E, inp_sq, C, T(0), gx2, C);
  for (int e = 0; e < E; ++e) {
    double s = 0.0;
    for (int n = 0; n < N; ++n) s += dscores[static_cast<int64_t>(n) * E + e];
    gs[e] = static_cast<T>(s);
  }
  for (int e = 0; e < E; ++e)
    for (int i = 0; i < C; ++i) {
      const int64_t k = static_cast<int64_t>(e) * C + i;
      gaussian_param_grad(dmu[k], dlog_sigma[k], w[k], mu[k], gx[k], gx2[k], gs[e]);
    }
  // dx = G m - x * (G w), the second product taken one row block of E rows at a time so that the
  // scratch stays (E,C): rows [n0, n0+E) of G w land in gw.
  gemm<T>(false, false, N, C, E, T(1), dscores, E, m, C, T(0), dinp, C);
  for (int n0 = 0; n0 < N; n0 += E) {
    const int rows = (N - n0) < E ? (N - n0) : E;
    gemm<T>(false, false, rows, C, E, T(1), dscores + static_cast<int64_t>(n0) * E, E, w, C, T(0), gw, C);
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < C; ++i) {
        const int64_t k = static_cast<int64_t>(n0 + r) * C + i;
        dinp[k] -= inp[k] * gw[static_cast<int64_t>(r) * C + i];
      }
  }
}

template <class T>
void image_to_patches(T* out, const T* images, int B, int H, int W, int p) {
  const int gh = H / p, gw = W / p, pp = p * p;
  for (int b = 0; b < B; ++b)
    for (int gy = 0; gy < gh; ++gy)
      for (int gx = 0; gx < gw; ++gx) {
        T* o = out + ((static_cast<int64_t>(b) * gh + gy) * gw + gx) * pp;
        for (int y = 0; y < p; ++y)
          for (int x = 0; x < p; ++x)
            o[y * p + x] = images[(static_cast<int64_t>(b) * H + gy * p + y) * W + gx * p + x];
      }
}

template <class T>
void meanpool_forward(T* out, const T* inp, int B, int Tn, int C) {
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < C; ++i) {
      double s = 0.0;
      for (int t = 0; t < Tn; ++t) s += inp[(static_cast<int64_t>(b) * Tn + t) * C + i];
      out[static_cast<int64_t>(b) * C + i] = static_cast<T>(s / Tn);
    }
}

template <class T>
void meanpool_backward(T* dinp, const T* dout, int B, int Tn, int C) {
  const T inv = static_cast<T>(1.0 / Tn);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < Tn; ++t)
      for (int i = 0; i < C; ++i) dinp[(static_cast<int64_t>(b) * Tn + t) * C + i] += dout[static_cast<int64_t>(b) * C + i] * inv;
}


template <class T>
void cross_attention_forward(T* out, T* att, const T* q, const T* kv, int B, int Tq, int Tk, int C, int H,
                             const AttnDropout<T>* drop) {
  const int hs = C / H;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hs)));
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const T* qb = q + static_cast<int64_t>(b) * Tq * C + h * hs;
      const T* k = kv + static_cast<int64_t>(b) * Tk * 2 * C + h * hs;
      const T* v = k + C;
      T* p = att + (static_cast<int64_t>(b) * H + h) * Tq * Tk;
      gemm<T>(false, true, Tq, Tk, hs, scale, qb, C, k, 2 * C, T(0), p, Tk);
      for (int i = 0; i < Tq; ++i) {
        T* row = p + static_cast<int64_t>(i) * Tk;
        T mx = row[0];
        for (int j = 1; j < Tk; ++j) mx = row[j] > mx ? row[j] : mx;
        double s = 0.0;
        for (int j = 0; j < Tk; ++j) {
          row[j] = static_cast<T>(std::exp(static_cast<double>(row[j] - mx)));
          s += row[j];
        }
        const T inv = static_cast<T>(1.0 / s);
        for (int j = 0; j < Tk; ++j) row[j] *= inv;
      }
      const T* pv = p;
      if (drop) {
        const int64_t o = (static_cast<int64_t>(b) * H + h) * Tq * Tk;
        dropout_forward<T>(drop->att + o, p, drop->keep + o, drop->scale, static_cast<int64_t>(Tq) * Tk);
        pv = drop->att + o;
      }
      gemm<T>(false, false, Tq, hs, Tk, T(1), pv, Tk, v, 2 * C, T(0), out + static_cast<int64_t>(b) * Tq * C + h * hs, C);
    }
}

template <class T>
void cross_attention_backward(T* dq, T* dkv, T* datt, const T* dout, const T* q, const T* kv, const T* att, int B,
                              int Tq, int Tk, int C, int H, const AttnDropout<T>* drop) {
  const int hs = C / H;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hs)));
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int64_t qo = static_cast<int64_t>(b) * Tq * C + h * hs;
      const int64_t ko = static_cast<int64_t>(b) * Tk * 2 * C + h * hs;
      const T* k = kv + ko;
      const T* v = k + C;
      T* dk = dkv + ko;
      T* dv = dk + C;
      const T* p = att + (static_cast<int64_t>(b) * H + h) * Tq * Tk;
      T* dp = datt + (static_cast<int64_t>(b) * H + h) * Tq * Tk;
      const T* d = dout + qo;
      const int64_t o = (static_cast<int64_t>(b) * H + h) * Tq * Tk;
      gemm<T>(false, true, Tq, Tk, hs, T(1), d, C, v, 2 * C, T(0), dp, Tk);   // dP = dO V^T
      gemm<T>(true, false, Tk, hs, Tq, T(1), drop ? drop->att + o : p, Tk, d, C, T(0), dv, 2 * C);   // dV = P^T dO
      if (drop) dropout_backward<T>(dp, dp, drop->keep + o, drop->scale, static_cast<int64_t>(Tq) * Tk);
      for (int i = 0; i < Tq; ++i) {
        const T* pr = p + static_cast<int64_t>(i) * Tk;
        T* dr = dp + static_cast<int64_t>(i) * Tk;
        double s = 0.0;
        for (int j = 0; j < Tk; ++j) s += static_cast<double>(pr[j]) * dr[j];
        for (int j = 0; j < Tk; ++j) dr[j] = static_cast<T>(pr[j] * (dr[j] - s));
      }
      gemm<T>(false, false, Tq, hs, Tk, scale, dp, Tk, k, 2 * C, T(0), dq + qo, C);  // dQ = s dZ K
      gemm<T>(true, false, Tk, hs, Tq, scale, dp, Tk, q + qo, C, T(0), dk, 2 * C);   // dK = s dZ^T Q
    }
}

template <class T>
void relu_forward(T* out, const T* inp, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = inp[i] > T(0) ? inp[i] : T(0);
}

template <class T>
void relu_backward(T* dinp, const T* dout, const T* inp, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dinp[i] = inp[i] > T(0) ? dout[i] : T(0);
}

#define HYPERRNN_INSTANTIATE_OPS(T)                                                               \
  template void embedding_forward<T>(T*, const int32_t*, const T*, const T*, int, int, int);      \
  template void embedding_backward<T>(T*, T*, const T*, const int32_t*, int, int, int);           \
  template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int, int);         \
  template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,          \
                                      const T*, int, int);                                        \
  template void linear_forward<T>(T*, const T*, const T*, const T*, int, int, int);               \
  template void linear_backward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, int);      \
  template void gelu_forward<T>(T*, const T*, int64_t);                                           \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t);                                \
  template void gelu_forward_grad<T>(T*, T*, const T*, int64_t);                                  \
  template void gelu_backward_cached<T>(T*, const T*, const T*, int64_t);                         \
  template void residual_forward<T>(T*, const T*, const T*, int64_t);                             \
  template void attention_forward<T>(T*, T*, const T*, int, int, int, int, bool, const AttnDropout<T>*); \
  template void attention_backward<T>(T*, T*, const T*, const T*, const T*, int, int, int, int,   \
                                      bool, const AttnDropout<T>*);                               \
  template double crossentropy_forward<T>(T*, T*, const T*, const int32_t*, int, int);            \
  template void crossentropy_backward<T>(T*, const T*, const int32_t*, T, int, int);              \
  template double row_entropy<T>(const T*, int);                                                   \
  template void topk_softmax_forward<T>(int32_t*, T*, const T*, int, int, int);                   \
  template void topk_softmax_backward<T>(T*, const T*, const T*, const int32_t*, int, int, int);  \
  template void gaussian_scores_forward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*, int, \
                                           int, int);                                             \
  template void gaussian_scores_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*,          \
                                            const T*, const T*, const T*, int, int, int);          \
  template void image_to_patches<T>(T*, const T*, int, int, int, int);                             \
  template void meanpool_forward<T>(T*, const T*, int, int, int);                                  \
  template void meanpool_backward<T>(T*, const T*, int, int, int);                                 \
  template void cross_attention_forward<T>(T*, T*, const T*, const T*, int, int, int, int, int,    \
                                           const AttnDropout<T>*);                               \
  template void cross_attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,   \
                                            int, int, int, int, int, const AttnDropout<T>*);     \
  template void relu_forward<T>(T*, const T*, int64_t);                                             \
  template void relu_backward<T>(T*, const T*, const T*, int64_t);

HYPERRNN_INSTANTIATE_OPS(float)
HYPERRNN_INSTANTIATE_OPS(double)

}  // namespace hyperrnn::nn
