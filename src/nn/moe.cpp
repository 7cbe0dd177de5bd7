// MoE layer: routing, canonical dispatch (counting sort by expert, stable in token order),
// per-expert MLP through the linear/gelu ops, and the mirror-image backward.
#include "nn/moe.hpp"

#include <cmath>

#include "core/error.hpp"
#include "nn/ops.hpp"

namespace hyperrnn::nn {

template <class T>
MoeCache<T> moe_bind_cache(Carver<T>& f, Carver<int32_t>& i, const MoeDims& d) {
  const int64_t A = d.assignments();
  auto take = [&f](int64_t n) { return f.take(n); };
  auto takei = [&i](int64_t n) { return i.take(n); };
  MoeCache<T> c{};
  c.scores = take(1LL * d.N * d.E);
  c.gates = take(1LL * d.N * d.K);
  c.xs = take(A * d.C);
  c.h = take(A * d.F);
  c.act = take(A * d.F);
  c.ys = take(A * d.C);
  c.w = take(1LL * d.sets * d.E * d.C);
  c.m = take(1LL * d.sets * d.E * d.C);
  c.c = take(1LL * d.sets * d.E);
  c.inp_sq = take(1LL * d.N * d.C);
  c.idx = takei(1LL * d.N * d.K);
  c.offsets = takei(d.E + 1);
  c.cursor = takei(d.E);
  c.tok = takei(A);
  c.pos = takei(1LL * d.N * d.K);
  return c;
}

template <class T>
MoeScratch<T> moe_bind_scratch(Carver<T>& f, const MoeDims& d) {
  const int64_t A = d.assignments();
  auto take = [&f](int64_t n) { return f.take(n); };
  MoeScratch<T> s{};
  s.dys = take(A * d.C);
  s.dact = take(A * d.F);
  s.dh = take(A * d.F);
  s.dxs = take(A * d.C);
  s.dgates = take(1LL * d.N * d.K);
  s.dscores = take(1LL * d.N * d.E);
  s.ec = take(3LL * d.E * d.C + d.E);
  return s;
}

namespace {
// Expert e's four tensors inside a parameter-layout block.
template <class T>
struct ExpertView {
  T *fc1_w, *fc1_b, *fc2_w, *fc2_b;
};
template <class T>
ExpertView<T> expert_view(T* base, int e, const MoeDims& d) {
  T* p = base + e * d.expert_stride();
  return {p, p + 1LL * d.F * d.C, p + 1LL * d.F * d.C + d.F, p + 2LL * d.F * d.C + d.F};
}
}  // namespace

template <class T>
void moe_forward(T* out, MoeCache<T>& c, const T* inp, const MoeWeights<T>& wts, RouterKind router,
                 const MoeDims& d) {
  const int N = d.N, C = d.C, E = d.E, K = d.K, F = d.F;
  HYPERRNN_DASSERT(d.sets >= 1 && N % d.sets == 0);
  if (router == RouterKind::Linear)
    linear_forward<T>(c.scores, inp, wts.router_a, nullptr, N, C, E);
  else
    for (int s = 0; s < d.sets; ++s) {  // token block s uses routing set s
      const int Ns = N / d.sets;
      const int64_t t0 = 1LL * s * Ns, ec = 1LL * s * E * C;
      gaussian_scores_forward<T>(c.scores + t0 * E, c.w + ec, c.m + ec, c.c + 1LL * s * E, c.inp_sq + t0 * C,
                                 inp + t0 * C, wts.router_a + s * wts.set_stride, wts.router_b + s * wts.set_stride,
                                 Ns, C, E);
    }
  topk_softmax_forward<T>(c.idx, c.gates, c.scores, N, E, K);
  if (d.sample_k)  // dynamic top-k: softmax over the first k of the K chosen, the rest gate 0
    for (int n = 0; n < N; ++n) {
      const int k = d.k_of(n);
      if (k >= K) continue;
      T* g = c.gates + 1LL * n * K;
      const T* sc = c.scores + 1LL * n * E;
      const int32_t* id = c.idx + 1LL * n * K;
      double z = 0.0;
      for (int j = 0; j < k; ++j) z += std::exp(static_cast<double>(sc[id[j]] - sc[id[0]]));
      for (int j = 0; j < K; ++j) g[j] = j < k ? static_cast<T>(std::exp(static_cast<double>(sc[id[j]] - sc[id[0]])) / z) : T(0);
    }

  // Counting sort of the active (token, slot) pairs by expert, stable in (token, slot) order.
  for (int e = 0; e <= E; ++e) c.offsets[e] = 0;
  for (int n = 0; n < N; ++n)
    for (int j = 0, k = d.k_of(n); j < k; ++j) ++c.offsets[c.idx[1LL * n * K + j] + 1];
  for (int e = 0; e < E; ++e) c.offsets[e + 1] += c.offsets[e];
  for (int e = 0; e < E; ++e) c.cursor[e] = c.offsets[e];
  for (int n = 0; n < N; ++n)
    for (int j = 0, k = d.k_of(n); j < K; ++j) {
      const int64_t nk = 1LL * n * K + j;
      if (j >= k) {
        c.pos[nk] = -1;
        continue;
      }
      const int32_t a = c.cursor[c.idx[nk]]++;
      c.tok[a] = n;
      c.pos[nk] = a;
    }
  const int64_t A = c.offsets[E];
  for (int64_t a = 0; a < A; ++a)
    for (int i = 0; i < C; ++i) c.xs[a * C + i] = inp[1LL * c.tok[a] * C + i];
  for (int e = 0; e < E; ++e) {
    const int r0 = c.offsets[e], n_e = c.offsets[e + 1] - r0;
    if (n_e == 0) continue;
    const ExpertView<T> x = expert_view(wts.experts, e, d);
    linear_forward<T>(c.h + 1LL * r0 * F, c.xs + 1LL * r0 * C, x.fc1_w, x.fc1_b, n_e, C, F);
    gelu_forward<T>(c.act + 1LL * r0 * F, c.h + 1LL * r0 * F, 1LL * n_e * F);
    linear_forward<T>(c.ys + 1LL * r0 * C, c.act + 1LL * r0 * F, x.fc2_w, x.fc2_b, n_e, F, C);
  }
  for (int n = 0; n < N; ++n) {
    T* o = out + 1LL * n * C;
    for (int i = 0; i < C; ++i) o[i] = T(0);
    for (int j = 0, k = d.k_of(n); j < k; ++j) {
      const T g = c.gates[1LL * n * K + j];
      const T* y = c.ys + 1LL * c.pos[1LL * n * K + j] * C;
      for (int i = 0; i < C; ++i) o[i] += g * y[i];
    }
  }
}

template <class T>
void moe_backward(T* dinp, const MoeWeights<T>& g, MoeScratch<T>& s, const T* dout, const T* inp,
                  const MoeCache<T>& c, const MoeWeights<T>& wts, RouterKind router,
                  const MoeDims& d) {
  const int N = d.N, C = d.C, E = d.E, K = d.K, F = d.F;
  // Combine backward: dgate = <dout, y>, dy = gate * dout.
  for (int n = 0; n < N; ++n)
    for (int j = 0, k = d.k_of(n); j < K; ++j) {
      const int64_t nk = 1LL * n * K + j;
      if (j >= k) {  // inactive slot: gate 0, no gradient
        s.dgates[nk] = T(0);
        continue;
      }
      const T* y = c.ys + 1LL * c.pos[nk] * C;
      T* dy = s.dys + 1LL * c.pos[nk] * C;
      const T* dn = dout + 1LL * n * C;
      double dot = 0.0;
      for (int i = 0; i < C; ++i) {
        dot += static_cast<double>(dn[i]) * y[i];
        dy[i] = c.gates[nk] * dn[i];
      }
      s.dgates[nk] = static_cast<T>(dot);
    }
  // Router backward first: it assigns dinp; the experts' contributions then accumulate.
  topk_softmax_backward<T>(s.dscores, s.dgates, c.gates, c.idx, N, E, K);
  if (router == RouterKind::Linear)
    linear_backward<T>(dinp, g.router_a, nullptr, s.dscores, inp, wts.router_a, N, C, E);
  else
    for (int r = 0; r < d.sets; ++r) {
      const int Ns = N / d.sets;
      const int64_t t0 = 1LL * r * Ns, ec = 1LL * r * E * C;
      gaussian_scores_backward<T>(dinp + t0 * C, g.router_a + r * g.set_stride, g.router_b + r * g.set_stride, s.ec,
                                  s.dscores + t0 * E, inp + t0 * C, c.inp_sq + t0 * C,
                                  wts.router_a + r * wts.set_stride, c.w + ec, c.m + ec, Ns, C, E);
    }
  for (int e = 0; e < E; ++e) {
    const int r0 = c.offsets[e], n_e = c.offsets[e + 1] - r0;
    if (n_e == 0) continue;
    const ExpertView<T> x = expert_view(wts.experts, e, d);
    const ExpertView<T> gx = expert_view(g.experts, e, d);
    linear_backward<T>(s.dact + 1LL * r0 * F, gx.fc2_w, gx.fc2_b, s.dys + 1LL * r0 * C,
                       c.act + 1LL * r0 * F, x.fc2_w, n_e, F, C);
    gelu_backward<T>(s.dh + 1LL * r0 * F, s.dact + 1LL * r0 * F, c.h + 1LL * r0 * F, 1LL * n_e * F);
    linear_backward<T>(s.dxs + 1LL * r0 * C, gx.fc1_w, gx.fc1_b, s.dh + 1LL * r0 * F,
                       c.xs + 1LL * r0 * C, x.fc1_w, n_e, C, F);
  }
  const int64_t A = c.offsets[E];
  for (int64_t a = 0; a < A; ++a)
    for (int i = 0; i < C; ++i) dinp[1LL * c.tok[a] * C + i] += s.dxs[a * C + i];
}

#define HYPERRNN_INSTANTIATE_MOE(T)                                                             \
  template MoeCache<T> moe_bind_cache<T>(Carver<T>&, Carver<int32_t>&, const MoeDims&);         \
  template MoeScratch<T> moe_bind_scratch<T>(Carver<T>&, const MoeDims&);                       \
  template void moe_forward<T>(T*, MoeCache<T>&, const T*, const MoeWeights<T>&, RouterKind,    \
                               const MoeDims&);                                                 \
  template void moe_backward<T>(T*, const MoeWeights<T>&, MoeScratch<T>&, const T*, const T*,   \
                                const MoeCache<T>&, const MoeWeights<T>&, RouterKind,           \
                                const MoeDims&);
HYPERRNN_INSTANTIATE_MOE(float)
HYPERRNN_INSTANTIATE_MOE(double)

}  // namespace hyperrnn::nn
