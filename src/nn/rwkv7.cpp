// RWKV-7 time mix and channel mix: forward and backward (see rwkv7.hpp).
#include "nn/rwkv7.hpp"

#include <algorithm>
#include <cmath>

#include "core/blas.hpp"
#include "nn/ops.hpp"
#include "nn/wkv7.hpp"

namespace hyperrnn::nn {

namespace {

template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// out_t = x_t + (x_{t-1} - x_t) * mu, per sequence (x_{-1} = prev row or 0).
template <class T>
void shift_mix(T* out, const T* x, const T* prev, const T* mu, int nb, int Tn, int C) {
  for (int b = 0; b < nb; ++b)
    for (int t = 0; t < Tn; ++t) {
      const int64_t o = (static_cast<int64_t>(b) * Tn + t) * C;
      const T* xp = t > 0 ? x + o - C : prev ? prev + static_cast<int64_t>(b) * C : nullptr;
      for (int i = 0; i < C; ++i) {
        const T xm = xp ? xp[i] : T(0);
        out[o + i] = x[o + i] + (xm - x[o + i]) * mu[i];
      }
    }
}

// dx += d(out)/dx^T dout; dmu += sum_t dout_t (x_{t-1} - x_t). (The gradient into prev is not kept.)
template <class T>
void shift_mix_backward(T* dx, T* dmu, const T* dout, const T* x, const T* prev, const T* mu, int nb, int Tn, int C) {
  for (int b = 0; b < nb; ++b)
    for (int t = 0; t < Tn; ++t) {
      const int64_t o = (static_cast<int64_t>(b) * Tn + t) * C;
      const T* xp = t > 0 ? x + o - C : prev ? prev + static_cast<int64_t>(b) * C : nullptr;
      const T* dn = t + 1 < Tn ? dout + o + C : nullptr;
      for (int i = 0; i < C; ++i) {
        const T xm = xp ? xp[i] : T(0);
        dx[o + i] += dout[o + i] * (T(1) - mu[i]) + (dn ? dn[i] * mu[i] : T(0));
        dmu[i] += dout[o + i] * (xm - x[o + i]);
      }
    }
}

// out (n,D) = x (n,K) W (K,D)
template <class T>
void mm(T* out, const T* x, const T* W, int n, int K, int D) {
  gemm<T>(false, false, n, D, K, T(1), x, K, W, D, T(0), out, D);
}
// dW (K,D) += x^T dout; dx (n,K) = dout W^T (+ beta dx)
template <class T>
void mm_backward(T* dx, T beta, T* dW, const T* dout, const T* x, const T* W, int n, int K, int D) {
  gemm<T>(true, false, K, D, n, T(1), x, K, dout, D, T(1), dW, D);
  if (dx) gemm<T>(false, true, n, K, D, T(1), dout, D, W, D, beta, dx, K);
}

template <class T>
void colsum_add(T* dst, const T* src, int64_t rows, int C) {
  for (int64_t n = 0; n < rows; ++n)
    for (int i = 0; i < C; ++i) dst[i] += src[n * C + i];
}

}  // namespace

template <class T>
Rwkv7AttCache<T> rwkv7_att_bind(Carver<T>& f, int64_t rows, int nb, const Rwkv7Dims& d) {
  Rwkv7AttCache<T> c{};
  const int64_t RC = rows * d.C, RH = rows * d.H;
  for (T** p : {&c.xr, &c.xw, &c.xk, &c.xv, &c.xa, &c.xg, &c.r, &c.k, &c.vraw, &c.v, &c.u, &c.a, &c.vg, &c.g, &c.kk, &c.kp,
                &c.aa, &c.bb, &c.y, &c.yb, &c.og})
    *p = f.take(RC);
  c.wt = f.take(rows * d.Dw);
  c.alr = f.take(rows * d.Da);
  c.vlr = f.take(rows * d.Dv);
  c.glr = f.take(rows * d.Dg);
  c.kn = f.take(RH);
  c.gmean = f.take(RH);
  c.grstd = f.take(RH);
  const Wkv7Dims wd{d.T, d.H, d.N, d.chunk};
  c.ckpt = f.take(static_cast<int64_t>(nb) * wd.checkpoints() * wd.state_size());
  return c;
}

template <class T>
Rwkv7FfnCache<T> rwkv7_ffn_bind(Carver<T>& f, int64_t rows, const Rwkv7Dims& d) {
  Rwkv7FfnCache<T> c{};
  c.kx = f.take(rows * d.C);
  c.z = f.take(rows * d.F);
  c.h = f.take(rows * d.F);
  return c;
}

template <class T>
Rwkv7Scratch<T> rwkv7_scratch_bind(Carver<T>& f, int64_t rows, const Rwkv7Dims& d) {
  Rwkv7Scratch<T> s{};
  for (T** p : {&s.dog, &s.dg, &s.dv, &s.dr, &s.dkp, &s.dy, &s.du, &s.daa, &s.dbb, &s.wr, &s.wkp, &s.wv}) *p = f.take(rows * d.C);
  s.dlr = f.take(rows * std::max({d.Dw, d.Da, d.Dv, d.Dg, 1}));
  s.dF = f.take(rows * std::max(d.F, 1));
  s.wkv = f.take(wkv7_scratch_size(Wkv7Dims{d.T, d.H, d.N, d.chunk}));
  return s;
}

template <class T>
Rwkv7AttCache<T> rwkv7_att_at(const Rwkv7AttCache<T>& c, int64_t r0, int b0, const Rwkv7Dims& d) {
  Rwkv7AttCache<T> o = c;
  for (T** p : {&o.xr, &o.xw, &o.xk, &o.xv, &o.xa, &o.xg, &o.r, &o.k, &o.vraw, &o.v, &o.u, &o.a, &o.vg, &o.g, &o.kk, &o.kp,
                &o.aa, &o.bb, &o.y, &o.yb, &o.og})
    *p += r0 * d.C;
  o.wt += r0 * d.Dw;
  o.alr += r0 * d.Da;
  o.vlr += r0 * d.Dv;
  o.glr += r0 * d.Dg;
  o.kn += r0 * d.H;
  o.gmean += r0 * d.H;
  o.grstd += r0 * d.H;
  const Wkv7Dims wd{d.T, d.H, d.N, d.chunk};
  o.ckpt += static_cast<int64_t>(b0) * wd.checkpoints() * wd.state_size();
  return o;
}

template <class T>
Rwkv7FfnCache<T> rwkv7_ffn_at(const Rwkv7FfnCache<T>& c, int64_t r0, const Rwkv7Dims& d) {
  return {c.kx + r0 * d.C, c.z + r0 * d.F, c.h + r0 * d.F};
}

template <class T>
void rwkv7_att_forward(T* out, Rwkv7AttCache<T>& c, T* vfirst, const T* xa, const Rwkv7AttW<T>& w, const Rwkv7Dims& d,
                       int nb, const T* prev, const T* state0, T* state_out, bool first_layer) {
  const int Tn = d.T, C = d.C, H = d.H, N = d.N;
  const int rows = nb * Tn;
  const int64_t RC = static_cast<int64_t>(rows) * C;
  shift_mix(c.xr, xa, prev, w.x_r, nb, Tn, C);
  shift_mix(c.xw, xa, prev, w.x_w, nb, Tn, C);
  shift_mix(c.xk, xa, prev, w.x_k, nb, Tn, C);
  shift_mix(c.xv, xa, prev, w.x_v, nb, Tn, C);
  shift_mix(c.xa, xa, prev, w.x_a, nb, Tn, C);
  if (d.gate) shift_mix(c.xg, xa, prev, w.x_g, nb, Tn, C);
  linear_forward<T>(c.r, c.xr, w.Wr, nullptr, rows, C, C);
  linear_forward<T>(c.k, c.xk, w.Wk, nullptr, rows, C, C);
  linear_forward<T>(c.vraw, c.xv, w.Wv, nullptr, rows, C, C);
  // decay pre-activation u = w0 + tanh(x_w w1) w2
  mm(c.wt, c.xw, w.w1, rows, C, d.Dw);
  for (int64_t i = 0; i < static_cast<int64_t>(rows) * d.Dw; ++i) c.wt[i] = std::tanh(c.wt[i]);
  mm(c.u, c.wt, w.w2, rows, d.Dw, C);
  // in-context learning rate a = sigmoid(a0 + (x_a a1) a2)
  mm(c.alr, c.xa, w.a1, rows, C, d.Da);
  mm(c.a, c.alr, w.a2, rows, d.Da, C);
  for (int64_t n = 0; n < rows; ++n)
    for (int i = 0; i < C; ++i) {
      c.u[n * C + i] += w.w0[i];
      c.a[n * C + i] = sigmoid(c.a[n * C + i] + w.a0[i]);
    }
  if (d.value_residual) {
    mm(c.vlr, c.xv, w.v1, rows, C, d.Dv);
    mm(c.vg, c.vlr, w.v2, rows, d.Dv, C);
    for (int64_t n = 0; n < rows; ++n)
      for (int i = 0; i < C; ++i) {
        const int64_t j = n * C + i;
        c.vg[j] = sigmoid(c.vg[j] + w.v0[i]);
        c.v[j] = c.vraw[j] + (vfirst[j] - c.vraw[j]) * c.vg[j];
      }
  } else {
    std::copy(c.vraw, c.vraw + RC, c.v);
  }
  if (first_layer && vfirst) std::copy(c.v, c.v + RC, vfirst);
  if (d.gate) {
    mm(c.glr, c.xg, w.g1, rows, C, d.Dg);
    for (int64_t i = 0; i < static_cast<int64_t>(rows) * d.Dg; ++i) c.glr[i] = sigmoid(c.glr[i]);
    mm(c.g, c.glr, w.g2, rows, d.Dg, C);
  }
  // removal key kk = normalize(k * k_k) per head; replacement key k' = k (1 + (a - 1) k_a)
  for (int64_t n = 0; n < rows; ++n)
    for (int h = 0; h < H; ++h) {
      const int64_t o = n * C + static_cast<int64_t>(h) * N;
      T ss = 0;
      for (int j = 0; j < N; ++j) {
        const T x = c.k[o + j] * w.k_k[h * N + j];
        ss += x * x;
      }
      const T nrm = std::sqrt(ss), den = std::max(nrm, static_cast<T>(1e-12));
      c.kn[n * H + h] = nrm;
      for (int j = 0; j < N; ++j) {
        const int64_t q = o + j;
        const int i = h * N + j;
        const T kk = c.k[q] * w.k_k[i] / den;
        c.kk[q] = kk;
        c.aa[q] = -kk;
        c.bb[q] = kk * c.a[q];
        c.kp[q] = c.k[q] * (T(1) + (c.a[q] - T(1)) * w.k_a[i]);
      }
    }
  const Wkv7Dims wd{Tn, H, N, d.chunk};
  const int64_t SS = wd.state_size(), seq = static_cast<int64_t>(Tn) * C;
  {
    const PhaseScope ph(Phase::Recurrence);
    for (int b = 0; b < nb; ++b) {
      const int64_t o = b * seq;
      wkv7_forward<T>(c.y + o, c.ckpt + b * wd.checkpoints() * SS, c.r + o, c.u + o, c.kp + o, c.v + o, c.aa + o, c.bb + o,
                      wd, state0 ? state0 + b * SS : nullptr, state_out ? state_out + b * SS : nullptr);
    }
  }
  // GroupNorm per head, then the bonus (sum_j r_j k'_j r_k_j) v
  const T eps = static_cast<T>(kRwkvGroupNormEps);
  for (int64_t n = 0; n < rows; ++n)
    for (int h = 0; h < H; ++h) {
      const int64_t o = n * C + static_cast<int64_t>(h) * N;
      T m = 0;
      for (int j = 0; j < N; ++j) m += c.y[o + j];
      m /= N;
      T var = 0;
      for (int j = 0; j < N; ++j) var += (c.y[o + j] - m) * (c.y[o + j] - m);
      var /= N;
      const T rs = T(1) / std::sqrt(var + eps);
      c.gmean[n * H + h] = m;
      c.grstd[n * H + h] = rs;
      T bonus = 0;
      for (int j = 0; j < N; ++j) bonus += c.r[o + j] * c.kp[o + j] * w.r_k[h * N + j];
      for (int j = 0; j < N; ++j) {
        const int i = h * N + j;
        c.yb[o + j] = (c.y[o + j] - m) * rs * w.lnx_w[i] + w.lnx_b[i] + bonus * c.v[o + j];
      }
    }
  for (int64_t i = 0; i < RC; ++i) c.og[i] = d.gate ? c.yb[i] * c.g[i] : c.yb[i];
  linear_forward<T>(out, c.og, w.Wo, nullptr, rows, C, C);
}

template <class T>
void rwkv7_att_backward(T* dxa, T* dvfirst, const Rwkv7AttW<T>& dw, const T* dout, const Rwkv7AttCache<T>& c,
                        const T* vfirst, const T* xa, const Rwkv7AttW<T>& w, const Rwkv7Dims& d, int nb,
                        Rwkv7Scratch<T>& s, bool first_layer) {
  const int Tn = d.T, C = d.C, H = d.H, N = d.N;
  const int rows = nb * Tn;
  const int64_t RC = static_cast<int64_t>(rows) * C;
  std::fill(dxa, dxa + RC, T(0));
  // out = W_o og, og = yb * g
  linear_backward<T>(s.dog, dw.Wo, nullptr, dout, c.og, w.Wo, rows, C, C);
  T* dyb = s.dog;
  if (d.gate) {
    for (int64_t i = 0; i < RC; ++i) {
      s.dg[i] = s.dog[i] * c.yb[i];
      dyb[i] = s.dog[i] * c.g[i];
    }
    // g = glr g2, glr = sigmoid(x_g g1)
    mm_backward<T>(s.dlr, T(0), dw.g2, s.dg, c.glr, w.g2, rows, d.Dg, C);
    for (int64_t i = 0; i < static_cast<int64_t>(rows) * d.Dg; ++i) s.dlr[i] *= c.glr[i] * (T(1) - c.glr[i]);
    mm_backward<T>(s.dg, T(0), dw.g1, s.dlr, c.xg, w.g1, rows, C, d.Dg);  // s.dg = d x_g
    shift_mix_backward(dxa, dw.x_g, s.dg, xa, static_cast<const T*>(nullptr), w.x_g, nb, Tn, C);
  }
  // bonus and GroupNorm
  for (int64_t n = 0; n < rows; ++n)
    for (int h = 0; h < H; ++h) {
      const int64_t o = n * C + static_cast<int64_t>(h) * N;
      const T m = c.gmean[n * H + h], rs = c.grstd[n * H + h];
      T bonus = 0, dc = 0, s1 = 0, s2 = 0;
      for (int j = 0; j < N; ++j) {
        const int i = h * N + j;
        bonus += c.r[o + j] * c.kp[o + j] * w.r_k[i];
        dc += dyb[o + j] * c.v[o + j];
        const T xh = (c.y[o + j] - m) * rs, dxh = dyb[o + j] * w.lnx_w[i];
        dw.lnx_w[i] += dyb[o + j] * xh;
        dw.lnx_b[i] += dyb[o + j];
        s1 += dxh;
        s2 += dxh * xh;
      }
      s1 /= N;
      s2 /= N;
      for (int j = 0; j < N; ++j) {
        const int i = h * N + j;
        const T xh = (c.y[o + j] - m) * rs, dxh = dyb[o + j] * w.lnx_w[i];
        s.dy[o + j] = rs * (dxh - s1 - xh * s2);
        s.dv[o + j] = bonus * dyb[o + j];
        s.dr[o + j] = dc * w.r_k[i] * c.kp[o + j];
        s.dkp[o + j] = dc * w.r_k[i] * c.r[o + j];
        dw.r_k[i] += dc * c.r[o + j] * c.kp[o + j];
      }
    }
  // the recurrence
  const Wkv7Dims wd{Tn, H, N, d.chunk};
  const int64_t SS = wd.state_size(), seq = static_cast<int64_t>(Tn) * C;
  {
    const PhaseScope ph(Phase::Recurrence);
    for (int b = 0; b < nb; ++b) {
      const int64_t o = b * seq;
      wkv7_backward<T>(s.wr + o, s.du + o, s.wkp + o, s.wv + o, s.daa + o, s.dbb + o, nullptr, s.dy + o,
                       c.ckpt + b * wd.checkpoints() * SS, c.r + o, c.u + o, c.kp + o, c.v + o, c.aa + o, c.bb + o, wd, s.wkv);
    }
  }
  // aa = -kk, bb = kk a, kp = k (1 + (a - 1) k_a): s.daa becomes d kk, s.dbb d a, s.dkp d k
  for (int64_t n = 0; n < rows; ++n)
    for (int i = 0; i < C; ++i) {
      const int64_t q = n * C + i;
      s.dr[q] += s.wr[q];
      s.dv[q] += s.wv[q];
      const T dkp = s.dkp[q] + s.wkp[q], dbb = s.dbb[q];
      s.daa[q] = -s.daa[q] + dbb * c.a[q];
      s.dbb[q] = dbb * c.kk[q] + dkp * c.k[q] * w.k_a[i];
      dw.k_a[i] += dkp * c.k[q] * (c.a[q] - T(1));
      s.dkp[q] = dkp * (T(1) + (c.a[q] - T(1)) * w.k_a[i]);
    }
  // kk = (k k_k) / max(|k k_k|, eps)
  for (int64_t n = 0; n < rows; ++n)
    for (int h = 0; h < H; ++h) {
      const int64_t o = n * C + static_cast<int64_t>(h) * N;
      const T nrm = c.kn[n * H + h];
      T dot = 0;
      for (int j = 0; j < N; ++j) dot += c.kk[o + j] * s.daa[o + j];
      for (int j = 0; j < N; ++j) {
        const int i = h * N + j;
        const T dx = nrm > static_cast<T>(1e-12) ? (s.daa[o + j] - c.kk[o + j] * dot) / nrm : s.daa[o + j] / static_cast<T>(1e-12);
        s.dkp[o + j] += dx * w.k_k[i];
        dw.k_k[i] += dx * c.k[o + j];
      }
    }
  // a = sigmoid(a0 + alr a2), alr = x_a a1
  for (int64_t q = 0; q < RC; ++q) s.dbb[q] *= c.a[q] * (T(1) - c.a[q]);
  colsum_add(dw.a0, s.dbb, rows, C);
  mm_backward<T>(s.dlr, T(0), dw.a2, s.dbb, c.alr, w.a2, rows, d.Da, C);
  mm_backward<T>(s.dbb, T(0), dw.a1, s.dlr, c.xa, w.a1, rows, C, d.Da);
  shift_mix_backward(dxa, dw.x_a, s.dbb, xa, static_cast<const T*>(nullptr), w.x_a, nb, Tn, C);
  // value residual: v = vraw + (v_first - vraw) vg, vg = sigmoid(v0 + (x_v v1) v2)
  T* dvraw = s.dv;
  bool have_dxv = false;
  if (d.value_residual) {
    for (int64_t n = 0; n < rows; ++n)
      for (int i = 0; i < C; ++i) {
        const int64_t q = n * C + i;
        const T dv = s.dv[q], vg = c.vg[q];
        dvfirst[q] += dv * vg;
        s.wv[q] = dv * (vfirst[q] - c.vraw[q]) * vg * (T(1) - vg);  // d of the gate's pre-activation
        dvraw[q] = dv * (T(1) - vg);
      }
    colsum_add(dw.v0, s.wv, rows, C);
    mm_backward<T>(s.dlr, T(0), dw.v2, s.wv, c.vlr, w.v2, rows, d.Dv, C);
    mm_backward<T>(s.wr, T(0), dw.v1, s.dlr, c.xv, w.v1, rows, C, d.Dv);  // s.wr: d x_v so far
    have_dxv = true;
  } else if (first_layer && dvfirst) {
    for (int64_t q = 0; q < RC; ++q) dvraw[q] += dvfirst[q];  // the later layers' v_first = this v
  }
  linear_backward<T>(have_dxv ? s.wv : s.wr, dw.Wv, nullptr, dvraw, c.xv, w.Wv, rows, C, C);
  if (have_dxv)
    for (int64_t q = 0; q < RC; ++q) s.wr[q] += s.wv[q];
  shift_mix_backward(dxa, dw.x_v, s.wr, xa, static_cast<const T*>(nullptr), w.x_v, nb, Tn, C);
  // k = W_k x_k
  linear_backward<T>(s.wkp, dw.Wk, nullptr, s.dkp, c.xk, w.Wk, rows, C, C);
  shift_mix_backward(dxa, dw.x_k, s.wkp, xa, static_cast<const T*>(nullptr), w.x_k, nb, Tn, C);
  // r = W_r x_r
  linear_backward<T>(s.wkp, dw.Wr, nullptr, s.dr, c.xr, w.Wr, rows, C, C);
  shift_mix_backward(dxa, dw.x_r, s.wkp, xa, static_cast<const T*>(nullptr), w.x_r, nb, Tn, C);
  // u = w0 + wt w2, wt = tanh(x_w w1)
  colsum_add(dw.w0, s.du, rows, C);
  mm_backward<T>(s.dlr, T(0), dw.w2, s.du, c.wt, w.w2, rows, d.Dw, C);
  for (int64_t i = 0; i < static_cast<int64_t>(rows) * d.Dw; ++i) s.dlr[i] *= T(1) - c.wt[i] * c.wt[i];
  mm_backward<T>(s.wkp, T(0), dw.w1, s.dlr, c.xw, w.w1, rows, C, d.Dw);
  shift_mix_backward(dxa, dw.x_w, s.wkp, xa, static_cast<const T*>(nullptr), w.x_w, nb, Tn, C);
}

template <class T>
void rwkv7_ffn_forward(T* out, Rwkv7FfnCache<T>& c, const T* xb, const Rwkv7FfnW<T>& w, const Rwkv7Dims& d, int nb,
                       const T* prev) {
  const int rows = nb * d.T;
  shift_mix(c.kx, xb, prev, w.x_k, nb, d.T, d.C);
  linear_forward<T>(c.z, c.kx, w.Wk, nullptr, rows, d.C, d.F);
  for (int64_t i = 0; i < static_cast<int64_t>(rows) * d.F; ++i) {
    const T r = std::max(c.z[i], T(0));
    c.h[i] = r * r;
  }
  linear_forward<T>(out, c.h, w.Wv, nullptr, rows, d.F, d.C);
}

template <class T>
void rwkv7_ffn_backward(T* dxb, const Rwkv7FfnW<T>& dw, const T* dout, const Rwkv7FfnCache<T>& c, const T* xb,
                        const Rwkv7FfnW<T>& w, const Rwkv7Dims& d, int nb, Rwkv7Scratch<T>& s) {
  const int rows = nb * d.T;
  linear_backward<T>(s.dF, dw.Wv, nullptr, dout, c.h, w.Wv, rows, d.F, d.C);
  for (int64_t i = 0; i < static_cast<int64_t>(rows) * d.F; ++i) s.dF[i] *= T(2) * std::max(c.z[i], T(0));
  linear_backward<T>(s.dog, dw.Wk, nullptr, s.dF, c.kx, w.Wk, rows, d.C, d.F);
  std::fill(dxb, dxb + static_cast<int64_t>(rows) * d.C, T(0));
  shift_mix_backward(dxb, dw.x_k, s.dog, xb, static_cast<const T*>(nullptr), w.x_k, nb, d.T, d.C);
}

double rwkv7_layer_flops(const Rwkv7Dims& d, bool channel_mix) {
  const double C = d.C, N = d.N;
  double f = 2.0 * 4 * C * C;                                        // r k v o
  f += 2.0 * 2 * C * (d.Dw + d.Da + (d.value_residual ? d.Dv : 0) + (d.gate ? d.Dg : 0));  // low-rank pairs
  f += 9.0 * C * N;  // wkv, per state entry: S a (2), S w + sa b + v k (5), S r (2); H N^2 = C N entries
  if (channel_mix) f += 2.0 * 2 * C * d.F;
  return f;
}

#define HYPERRNN_RWKV7(T)                                                                                             \
  template Rwkv7AttCache<T> rwkv7_att_bind<T>(Carver<T>&, int64_t, int, const Rwkv7Dims&);                           \
  template Rwkv7FfnCache<T> rwkv7_ffn_bind<T>(Carver<T>&, int64_t, const Rwkv7Dims&);                                               \
  template Rwkv7AttCache<T> rwkv7_att_at<T>(const Rwkv7AttCache<T>&, int64_t, int, const Rwkv7Dims&);               \
  template Rwkv7FfnCache<T> rwkv7_ffn_at<T>(const Rwkv7FfnCache<T>&, int64_t, const Rwkv7Dims&);                     \
  template Rwkv7Scratch<T> rwkv7_scratch_bind<T>(Carver<T>&, int64_t, const Rwkv7Dims&);                             \
  template void rwkv7_att_forward<T>(T*, Rwkv7AttCache<T>&, T*, const T*, const Rwkv7AttW<T>&, const Rwkv7Dims&, int, \
                                     const T*, const T*, T*, bool);                                                  \
  template void rwkv7_att_backward<T>(T*, T*, const Rwkv7AttW<T>&, const T*, const Rwkv7AttCache<T>&, const T*,      \
                                      const T*, const Rwkv7AttW<T>&, const Rwkv7Dims&, int, Rwkv7Scratch<T>&, bool); \
  template void rwkv7_ffn_forward<T>(T*, Rwkv7FfnCache<T>&, const T*, const Rwkv7FfnW<T>&, const Rwkv7Dims&, int,    \
                                     const T*);                                                                      \
  template void rwkv7_ffn_backward<T>(T*, const Rwkv7FfnW<T>&, const T*, const Rwkv7FfnCache<T>&, const T*,          \
                                      const Rwkv7FfnW<T>&, const Rwkv7Dims&, int, Rwkv7Scratch<T>&);
HYPERRNN_RWKV7(float)
HYPERRNN_RWKV7(double)

}  // namespace hyperrnn::nn
