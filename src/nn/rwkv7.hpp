// RWKV-7's time mix and channel mix for nb sequences of T tokens (one shard's rows), forward and
// backward written by hand, as the reference's training model computes them (docs/rwkv7.md:
// RWKV-LM train_temp/src/model.py). The recurrence inside the time mix is src/nn/wkv7.
//
// Time mix on xa = ln1(x) (rows (nb, T, C), C = H heads x N), per token:
//   xx = x_{t-1} - x_t (x_{-1} = prev or 0);  x_s = x + xx * mu_s,  s in r w k v a g
//   r = W_r x_r;  k = W_k x_k;  v = W_v x_v                         (W: (C, C), nn.Linear layout)
//   u = w0 + tanh(x_w w1) w2;  a = sigmoid(a0 + (x_a a1) a2)        (w1: (C, Dw), w2: (Dw, C), ...)
//   value residual (layer >= 1, optional): v += (v_first - v) * sigmoid(v0 + (x_v v1) v2);
//   layer 0 keeps v_first = v
//   gate (optional): g = sigmoid(x_g g1) g2
//   kk = per-head L2 normalise(k * k_k) (eps 1e-12);  k' = k * (1 + (a - 1) * k_a)
//   y = wkv7(r, u, k', v, -kk, kk * a);  y = GroupNorm_H(y) (eps 64e-5) * ln_x.w + ln_x.b
//   y += (sum_j r_j k'_j r_k_j) v per head;  out = W_o (y * g)
// Channel mix on xb = ln2(x): kx = xb + (xb_{t-1} - xb) * mu_k;  out = W_v relu(W_k kx)^2.
// Argument order as in ops.hpp: outputs, caches, inputs, parameters, dimensions. Input gradients
// are assigned, parameter gradients accumulate.
#pragma once
#include <cstdint>

#include "core/carver.hpp"

namespace hyperrnn::nn {

constexpr double kRwkvGroupNormEps = 64e-5;  // model.py: GroupNorm(H, C, eps=(1e-5)*(8**2)), kept for every head size

struct Rwkv7Dims {
  int T = 1, C = 0, H = 1, N = 0;
  int Dw = 0, Da = 0, Dv = 0, Dg = 0;  // low-rank sizes: decay, in-context rate, value residual, gate
  int chunk = 16;                      // wkv state checkpoint interval
  bool value_residual = true;          // this layer mixes in v_first (layer >= 1 with the option on)
  bool gate = true;
  int F = 0;                           // channel-mix hidden width
};

// Parameter pointers of one layer's time mix (the same struct addresses the gradients).
template <class T>
struct Rwkv7AttW {
  T *x_r = nullptr, *x_w = nullptr, *x_k = nullptr, *x_v = nullptr, *x_a = nullptr, *x_g = nullptr;  // (C)
  T *w0 = nullptr, *w1 = nullptr, *w2 = nullptr;  // (C) (C,Dw) (Dw,C)
  T *a0 = nullptr, *a1 = nullptr, *a2 = nullptr;  // (C) (C,Da) (Da,C)
  T *v0 = nullptr, *v1 = nullptr, *v2 = nullptr;  // value residual: (C) (C,Dv) (Dv,C)
  T *g1 = nullptr, *g2 = nullptr;                 // gate: (C,Dg) (Dg,C)
  T *k_k = nullptr, *k_a = nullptr, *r_k = nullptr;  // (C) (C) (H,N)
  T *Wr = nullptr, *Wk = nullptr, *Wv = nullptr, *Wo = nullptr;  // (C,C)
  T *lnx_w = nullptr, *lnx_b = nullptr;           // (C)
};

template <class T>
struct Rwkv7FfnW {
  T *x_k = nullptr, *Wk = nullptr, *Wv = nullptr;  // (C) (F,C) (C,F)
};

// Activations the time-mix backward reads, for `rows` = nb x T rows.
template <class T>
struct Rwkv7AttCache {
  T *xr, *xw, *xk, *xv, *xa, *xg;      // (rows,C) the token-shift mixes
  T *r, *k, *vraw, *v, *u, *a, *vg, *g;  // (rows,C) v: after the value residual; vg: its sigmoid
  T *wt, *alr, *vlr, *glr;             // (rows,Dw) tanh; (rows,Da) (rows,Dv) (rows,Dg): first low-rank outputs (glr: sigmoid)
  T *kn, *gmean, *grstd;               // (rows,H) |k * k_k|, GroupNorm mean and 1/std per head
  T *kk, *kp, *aa, *bb, *y, *yb, *og;  // (rows,C) removal key, replaced key, -kk, kk*a, wkv out, after norm+bonus, yb*g
  T* ckpt;                             // (nb, ceil(T/chunk), H, N, N) wkv state checkpoints
};
template <class T>
Rwkv7AttCache<T> rwkv7_att_bind(Carver<T>& f, int64_t rows, int nb, const Rwkv7Dims& d);

template <class T>
struct Rwkv7FfnCache {
  T *kx, *z, *h;  // (rows,C) (rows,F) (rows,F): the mix, W_k kx, relu(z)^2
};
template <class T>
Rwkv7FfnCache<T> rwkv7_ffn_bind(Carver<T>& f, int64_t rows, const Rwkv7Dims& d);

// Backward scratch, per work item: 12 x (rows, C), (rows, max low-rank), (rows, F) and the wkv7
// scratch of one sequence.
template <class T>
struct Rwkv7Scratch {
  T *dog, *dg, *dv, *dr, *dkp, *dy, *du, *daa, *dbb, *wr, *wkp, *wv;  // (rows,C)
  T *dlr, *dF, *wkv;
};
template <class T>
Rwkv7Scratch<T> rwkv7_scratch_bind(Carver<T>& f, int64_t rows, const Rwkv7Dims& d);

// Recurrent state of one layer for one sequence: the time mix's and the channel mix's previous
// inputs (C each) and the wkv state (H x N x N). Its size in floats.
inline int64_t rwkv7_state_floats(const Rwkv7Dims& d, bool channel_mix) {
  return static_cast<int64_t>(d.C) * (channel_mix ? 2 : 1) + static_cast<int64_t>(d.H) * d.N * d.N;
}

// out (nb*T, C) assigned. vfirst (nb*T, C): written on layer 0 (d.value_residual false there), read
// on layers that mix it in. prev (nb, C): x_{-1} of each sequence (null = 0). state0 / state_out
// (nb, H, N, N): the wkv state before / after the sequence (null: 0 / not kept).
template <class T>
void rwkv7_att_forward(T* out, Rwkv7AttCache<T>& c, T* vfirst, const T* xa, const Rwkv7AttW<T>& w,
                       const Rwkv7Dims& d, int nb, const T* prev = nullptr, const T* state0 = nullptr,
                       T* state_out = nullptr, bool first_layer = false);
// dxa (rows,C) assigned; dvfirst (rows,C) accumulates (layers >= 1 add, layer 0 reads it: its v
// receives it). dw accumulates.
template <class T>
void rwkv7_att_backward(T* dxa, T* dvfirst, const Rwkv7AttW<T>& dw, const T* dout, const Rwkv7AttCache<T>& c,
                        const T* vfirst, const T* xa, const Rwkv7AttW<T>& w, const Rwkv7Dims& d, int nb,
                        Rwkv7Scratch<T>& s, bool first_layer = false);

template <class T>
void rwkv7_ffn_forward(T* out, Rwkv7FfnCache<T>& c, const T* xb, const Rwkv7FfnW<T>& w, const Rwkv7Dims& d, int nb,
                       const T* prev = nullptr);
template <class T>
void rwkv7_ffn_backward(T* dxb, const Rwkv7FfnW<T>& dw, const T* dout, const Rwkv7FfnCache<T>& c, const T* xb,
                        const Rwkv7FfnW<T>& w, const Rwkv7Dims& d, int nb, Rwkv7Scratch<T>& s);

// Analytic FLOPs of one token's forward through one layer (GEMMs and the wkv recurrence).
double rwkv7_layer_flops(const Rwkv7Dims& d, bool channel_mix);

}  // namespace hyperrnn::nn

namespace hyperrnn::nn {
// The caches of rows [r0, ...) (sample b0 onwards) of caches bound for more rows.
template <class T>
Rwkv7AttCache<T> rwkv7_att_at(const Rwkv7AttCache<T>& c, int64_t r0, int b0, const Rwkv7Dims& d);
template <class T>
Rwkv7FfnCache<T> rwkv7_ffn_at(const Rwkv7FfnCache<T>& c, int64_t r0, const Rwkv7Dims& d);
}  // namespace hyperrnn::nn
