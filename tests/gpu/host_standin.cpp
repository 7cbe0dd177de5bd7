// A host stand-in for src/cuda/kernels.hpp, used only to check the GPU tests themselves
// (tests/gpu/test_kernels.cpp) on a machine without a GPU: "device" buffers are host memory, the
// GEMM-based ops are the CPU's, and the kernels whose GPU code uses CUDA's erff and expf use libm's
// erff and expf here (within CUDA's 2-ulp accuracy; the cross-entropy sums in reverse order, as a
// different summation order would). If the tests' derived bounds or index arithmetic were wrong,
// this stand-in would fail them; it says nothing about the CUDA kernels, which only a GPU can test.
#include <cmath>
#include <algorithm>
#include <cstring>
#include "cuda/kernels.hpp"
#include "core/blas.hpp"
#include "nn/dropout.hpp"
#include "nn/moe.hpp"
#include "nn/ops.hpp"
#include "nn/wkv7.hpp"
#include "mpi/comm.hpp"
#include "parallel/layout.hpp"
namespace hyperrnn::cuda {
void check(const char*) {}
void synchronize() {}
template <class T> DeviceBuffer<T>::DeviceBuffer(std::size_t n) : n_(n) { p_ = new T[n](); }
template <class T> DeviceBuffer<T>::~DeviceBuffer() { delete[] p_; }
template <class T> void DeviceBuffer<T>::upload(const std::vector<T>& h) { std::memcpy(p_, h.data(), n_ * sizeof(T)); }
template <class T> std::vector<T> DeviceBuffer<T>::download() const { return std::vector<T>(p_, p_ + n_); }
template class DeviceBuffer<float>; template class DeviceBuffer<double>; template class DeviceBuffer<int32_t>;
template class DeviceBuffer<int64_t>;
template class DeviceBuffer<uint8_t>;
void wkv7_forward(float* y, float* ck, const float* r, const float* u, const float* k, const float* v, const float* a, const float* b, int T, int H, int N, int chunk, const float* s0, float* so) {
  nn::Wkv7Dims d;
  d.T = T, d.H = H, d.N = N, d.chunk = chunk;
  nn::wkv7_forward<float>(y, ck, r, u, k, v, a, b, d, s0, so);
}
void gaussian_scores_forward(Blas&, float* s, float* w, float* m, float* c, float* sq, const float* x, const float* mu, const float* ls, int N, int C, int E) {
  nn::gaussian_scores_forward<float>(s, w, m, c, sq, x, mu, ls, N, C, E);
}
void gaussian_scores_backward(Blas&, float* dx, float* dmu, float* dls, float* ec, const float* g, const float* x, const float* sq, const float* mu, const float* w, const float* m, int N, int C, int E) {
  nn::gaussian_scores_backward<float>(dx, dmu, dls, ec, g, x, sq, mu, w, m, N, C, E);
}
// the MoE dispatch: a stable sort of the pairs by expert; combine and scatter through the CPU ops
void moe_dispatch(int32_t* offsets, int32_t* tok, int32_t* pos, float* xs, const int32_t* idx, const float* inp, int N, int K, int E, int C, const int32_t* sk, int st) {
  std::vector<int64_t> order;  // the active pairs, stably sorted by expert
  for (int64_t p = 0; p < int64_t(N) * K; ++p) {
    pos[p] = -1;
    if (!sk || p % K < sk[(p / K) / st]) order.push_back(p);
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return idx[a] < idx[b]; });
  for (int e = 0; e <= E; ++e) offsets[e] = 0;
  for (int64_t p : order) ++offsets[idx[p] + 1];
  for (int e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
  for (std::size_t a = 0; a < order.size(); ++a) {
    tok[a] = static_cast<int32_t>(order[a] / K);
    pos[order[a]] = static_cast<int32_t>(a);
    std::memcpy(xs + a * C, inp + tok[a] * int64_t(C), sizeof(float) * C);
  }
}
namespace {
nn::MoeCache<float> moe_cache(const float* ys, const float* gates, const int32_t* pos) {
  nn::MoeCache<float> c{};
  c.ys = const_cast<float*>(ys);
  c.gates = const_cast<float*>(gates);
  c.pos = const_cast<int32_t*>(pos);
  return c;
}
nn::MoeDims moe_dims(int N, int K, int C, const int32_t* sk = nullptr, int st = 1) {
  nn::MoeDims d;
  d.N = N, d.K = K, d.C = C, d.E = 1, d.F = 1, d.sample_k = sk, d.sample_tokens = st;
  return d;
}
}  // namespace
void moe_combine(float* out, const float* ys, const float* gates, const int32_t* pos, int N, int K, int C, const int32_t* sk, int st) {
  nn::moe_combine<float>(out, moe_cache(ys, gates, pos), moe_dims(N, K, C, sk, st));
}
void topk_dynamic_gates(float* gates, const float* scores, const int32_t* idx, int N, int E, int K, const int32_t* sk, int st) {
  nn::MoeDims d = moe_dims(N, K, 1, sk, st);
  d.E = E;
  nn::dynamic_topk_gates<float>(gates, scores, idx, 0, N, d);
}
void moe_combine_backward(float* dys, float* dgates, const float* dout, const float* ys, const float* gates, const int32_t* pos, int N, int K, int C, const int32_t* sk, int st) {
  nn::moe_combine_backward<float>(dys, dgates, dout, moe_cache(ys, gates, pos), moe_dims(N, K, C, sk, st));
}
void moe_scatter_add(float* dinp, const float* dxs, const int32_t* pos, int N, int K, int C) {
  nn::moe_scatter_add<float>(dinp, dxs, moe_cache(nullptr, nullptr, pos), moe_dims(N, K, C));
}
void dropout_mask(uint8_t* keep, int64_t n, uint64_t seed, uint32_t purpose, uint32_t step, uint32_t index, uint32_t threshold) {
  nn::dropout_mask(keep, n, nn::DropoutKey{seed, static_cast<RngPurpose>(purpose), step}, index, threshold);
}
void dropout_forward(float* o, const float* x, const uint8_t* k, float s, int64_t n) { nn::dropout_forward<float>(o, x, k, s, n); }
void dropout_backward(float* o, const float* x, const uint8_t* k, float s, int64_t n) { nn::dropout_backward<float>(o, x, k, s, n); }
// the shard sum: the CPU's ShardSum over the comm's ranks (the shards are host memory here)
void shard_sum(float* out, const std::vector<const float*>& shards, const std::vector<std::pair<int64_t, int64_t>>& ranges, int S, Comm* comm) {
  Parallel par(comm && comm->size() > 1 ? comm : nullptr, S, 0);
  ShardSum<float>().sum(out, shards, ranges, par);
}
Blas::Blas(bool) {} Blas::~Blas() {}
void attention_forward(Blas&, float* out, float* att, const float* qkv, int B, int Tn, int C, int H, bool causal) { nn::attention_forward<float>(out, att, qkv, B, Tn, C, H, causal); }
void attention_backward(Blas&, float* dqkv, float* datt, const float* dout, const float* qkv, const float* att, int B, int Tn, int C, int H, bool causal) { nn::attention_backward<float>(dqkv, datt, dout, qkv, att, B, Tn, C, H, causal); }
void topk_softmax_forward(int32_t* idx, float* gates, const float* scores, int N, int E, int K) { nn::topk_softmax_forward<float>(idx, gates, scores, N, E, K); }
void topk_softmax_backward(float* ds, const float* dg, const float* g, const int32_t* idx, int N, int E, int K) { nn::topk_softmax_backward<float>(ds, dg, g, idx, N, E, K); }
void linear_forward(Blas&, float* out, const float* inp, const float* w, const float* b, int N, int IC, int OC) { nn::linear_forward<float>(out, inp, w, b, N, IC, OC); }
void layernorm_forward(float* o, float* m, float* r, const float* x, const float* w, const float* b, int N, int C) { nn::layernorm_forward<float>(o, m, r, x, w, b, N, C); }
void layernorm_backward(float* a, float* b, float* c, const float* d, const float* e, const float* f, const float* g, const float* h, int N, int C) { nn::layernorm_backward<float>(a, b, c, d, e, f, g, h, N, C); }
void crossentropy_forward(float* l, float* p, const float* lo, const int32_t* t, int N, int V) { for (int n = 0; n < N; ++n) { const float* r = lo + int64_t(n)*V; float mx = r[0]; for (int v = 1; v < V; ++v) mx = std::max(mx, r[v]); double s = 0; for (int v = V-1; v >= 0; --v) { p[int64_t(n)*V+v] = expf(r[v]-mx); s += p[int64_t(n)*V+v]; } const float inv = float(1.0/s); for (int v = 0; v < V; ++v) p[int64_t(n)*V+v] *= inv; l[n] = float(std::log(s) + double(mx) - double(r[t[n]])); } }
void crossentropy_backward(float* d, const float* p, const int32_t* t, float s, int N, int V) { nn::crossentropy_backward<float>(d, p, t, s, N, V); }
void gelu_forward_grad(float* o, float* g, const float* inp, int64_t n) { for (int64_t i = 0; i < n; ++i) { const float x = inp[i]; const float e = erff(x * 0.70710678118654752f); o[i] = 0.5f * x * (1.0f + e); g[i] = 0.5f * (1.0f + e) + x * 0.39894228040143268f * expf(-0.5f * x * x);} }
void gelu_backward_cached(float* a, const float* b, const float* c, int64_t n) { nn::gelu_backward_cached<float>(a, b, c, n); }
void residual_forward(float* o, const float* a, const float* b, int64_t n) { nn::residual_forward<float>(o, a, b, n); }
void embedding_forward(float* o, const int32_t* i, const float* a, const float* b, int B, int T, int C) { nn::embedding_forward<float>(o, i, a, b, B, T, C); }
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, float b1, float b2, float eps, float ss, float decay, float bc2) {
  for (int64_t i = 0; i < n; ++i) { p[i] *= decay; m[i] = b1 * m[i] + (1.0f - b1) * g[i]; v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i]; p[i] -= ss * m[i] / (std::sqrt(v[i]) / bc2 + eps); }
}
}
