// MoE layer: routing, canonical dispatch (counting sort by expert, stable in token order),
// per-expert MLP through the linear/gelu ops, and the mirror-image backward.
#include "nn/moe.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.hpp"
#include "nn/lanes.hpp"
#include "nn/ops.hpp"
#include "nn/topk.hpp"
#include "parallel/threads.hpp"

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
// Per-thread scratch of the calling thread (grown, never shrunk).
template <class T>
T* thread_scratch(int64_t n) {
  thread_local std::vector<T> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}
// Rows per block of the experts' FFN (fc1, GELU, fc2 and their backward): 2^14 / F
// rows, at least 64 (64 KiB of hidden rows), so that a block's hidden rows stay in L2 between the
// GEMMs and the elementwise passes (before, each pass streamed the whole (rows, F) tensor through
// memory: the GELU passes were 12% of a vit-pilf-256 step). 2^14 was the best of 2^14-2^17 tried
// (vit-pilf-256 62.7k tokens/s against 60.1k at 2^15, 61.9k at 2^16 and 61.5k at 2^17, means of 4
// interleaved rounds; the MQAR models and vit-pilf-32 within 1.5% across them). A function of F
// alone, so the GEMM shapes, and with them the bits, are the same whatever P and the thread count.
// The dense FFN keeps its shard-sized calls: its shards are 512 rows at the benchmark's shape, and
// 128-row blocks made the dense step 2.4% slower (median of 5 alternating pairs), the smaller GEMMs
// costing more than the cache saved.
int ffn_row_block(int F) { return std::max(64, (1 << 14) / std::max(1, F)); }
// Fixed row chunks for copies whose split cannot change a value.
constexpr int kRowChunk = 256;
int chunks(int64_t rows) { return static_cast<int>((rows + kRowChunk - 1) / kRowChunk); }
}  // namespace

template <class T>
void dynamic_topk_gates(T* gates, const T* scores, const int32_t* idx, int t0, int t1, const MoeDims& d) {
  const int E = d.E, K = d.K;
  for (int n = t0; n < t1; ++n) {
    const int k = d.k_of(n);
    if (k < K) dynamic_gates_row(gates + 1LL * n * K, scores + 1LL * n * E, idx + 1LL * n * K, k, K);
  }
}

// Threads (src/parallel/threads.hpp): scores, top-k and gates per canonical shard (or routing
// set), the counting sort in order on the calling thread, the gather in fixed row chunks.
template <class T>
void moe_route(MoeCache<T>& c, const T* inp, const MoeWeights<T>& wts, RouterKind router, const MoeDims& d) {
  const int N = d.N, C = d.C, E = d.E, K = d.K;
  HYPERRNN_DASSERT(d.sets >= 1 && N % d.sets == 0);
  if (d.sets > 1) {  // memory-Gaussian: token block r uses routing set r (per-sample GEMMs)
    threads().run(d.sets, [&](int r, int) {
      const int Ns = N / d.sets;
      const int64_t t0 = 1LL * r * Ns, ec = 1LL * r * E * C;
      gaussian_scores_forward<T>(c.scores + t0 * E, c.w + ec, c.m + ec, c.c + 1LL * r * E, c.inp_sq + t0 * C,
                                 inp + t0 * C, wts.router_a + r * wts.set_stride, wts.router_b + r * wts.set_stride,
                                 Ns, C, E);
    });
  } else {
    threads().run(d.shards, [&](int s, int) {
      const int t0 = d.shard_begin(s), n = d.shard_begin(s + 1) - t0;
      if (n == 0) return;
      if (router == RouterKind::Linear) {
        linear_forward<T>(c.scores + 1LL * t0 * E, inp + 1LL * t0 * C, wts.router_a, nullptr, n, C, E);
      } else {
        // every shard derives the same (w, m, c) from (mu, log_sigma); shard 0 keeps them in the
        // cache for the backward, the others compute their identical copy in their own scratch
        T* wmc = s == 0 ? nullptr : thread_scratch<T>(2LL * E * C + E);
        gaussian_scores_forward<T>(c.scores + 1LL * t0 * E, s == 0 ? c.w : wmc, s == 0 ? c.m : wmc + 1LL * E * C,
                                   s == 0 ? c.c : wmc + 2LL * E * C, c.inp_sq + 1LL * t0 * C, inp + 1LL * t0 * C,
                                   wts.router_a, wts.router_b, n, C, E);
      }
    });
  }
  threads().run(d.shards, [&](int s, int) {
    const int t0 = d.shard_begin(s), t1 = d.shard_begin(s + 1);
    if (t1 == t0) return;
    topk_softmax_forward<T>(c.idx + 1LL * t0 * K, c.gates + 1LL * t0 * K, c.scores + 1LL * t0 * E, t1 - t0, E, K);
    if (d.sample_k) dynamic_topk_gates<T>(c.gates, c.scores, c.idx, t0, t1, d);
  });

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
  threads().run(chunks(A), [&](int ch, int) {
    for (int64_t a = 1LL * ch * kRowChunk, a1 = std::min<int64_t>(A, a + kRowChunk); a < a1; ++a)
      for (int i = 0; i < C; ++i) c.xs[a * C + i] = inp[1LL * c.tok[a] * C + i];
  });
}

template <class T>
void moe_experts_forward(T* ys, T* h, T* act, const T* xs, const int32_t* offsets, int n_experts, const T* experts,
                         const MoeDims& d) {
  const int C = d.C, F = d.F;
  const int R = ffn_row_block(F);
  threads().run(n_experts, [&](int e, int) {  // one expert per item: its GEMMs over its own rows
    const int e0 = offsets[e], n_e = offsets[e + 1] - e0;
    const ExpertView<T> x = expert_view(const_cast<T*>(experts), e, d);
    for (int r0 = e0; r0 < e0 + n_e; r0 += R) {  // fc1, GELU and fc2 per row block, its hidden rows in cache
      const int n = std::min(R, e0 + n_e - r0);
      linear_forward<T>(h + 1LL * r0 * F, xs + 1LL * r0 * C, x.fc1_w, x.fc1_b, n, C, F);
      gelu_forward_grad<T>(act + 1LL * r0 * F, h + 1LL * r0 * F, h + 1LL * r0 * F, 1LL * n * F);
      linear_forward<T>(ys + 1LL * r0 * C, act + 1LL * r0 * F, x.fc2_w, x.fc2_b, n, F, C);
    }
  });
}

// o += g y, lane by lane (the same IEEE operations on every clone).
template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) static void add_scaled(T* __restrict o, const T* __restrict y, T g, int C) {
  for (int i = 0; i < C; ++i) o[i] += g * y[i];
}

// dy = g dn, and returns <dn, y> in double in lanes.hpp's fixed order: vectorised, and the same
// bits on every clone (a left-to-right sum was one dependent double add per element).
template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) static double scale_and_dot(T* __restrict dy, const T* __restrict dn,
                                                                                      const T* __restrict y, T g, int C) {
  for (int i = 0; i < C; ++i) dy[i] = g * dn[i];
  return lane_sum(C, [&](int i) { return static_cast<double>(dn[i]) * y[i]; });
}

template <class T>
void moe_combine(T* out, const MoeCache<T>& c, const MoeDims& d) {
  const int C = d.C, K = d.K;
  threads().run(d.shards, [&](int s, int) {
  for (int n = d.shard_begin(s); n < d.shard_begin(s + 1); ++n) {
    T* o = out + 1LL * n * C;
    for (int i = 0; i < C; ++i) o[i] = T(0);
    for (int j = 0, k = d.k_of(n); j < k; ++j)
      add_scaled(o, c.ys + 1LL * c.pos[1LL * n * K + j] * C, c.gates[1LL * n * K + j], C);
  }
  });
}

template <class T>
void moe_forward(T* out, MoeCache<T>& c, const T* inp, const MoeWeights<T>& wts, RouterKind router,
                 const MoeDims& d) {
  moe_route(c, inp, wts, router, d);
  moe_experts_forward(c.ys, c.h, c.act, c.xs, c.offsets, d.E, wts.experts, d);
  moe_combine(out, c, d);
}

template <class T>
void moe_combine_backward(T* dys, T* dgates, const T* dout, const MoeCache<T>& c, const MoeDims& d) {
  const int C = d.C, K = d.K;
  // dgate = <dout, y>, dy = gate * dout.
  threads().run(d.shards, [&](int s, int) {
  for (int n = d.shard_begin(s); n < d.shard_begin(s + 1); ++n)
    for (int j = 0, k = d.k_of(n); j < K; ++j) {
      const int64_t nk = 1LL * n * K + j;
      if (j >= k) {  // inactive slot: gate 0, no gradient
        dgates[nk] = T(0);
        continue;
      }
      const T* y = c.ys + 1LL * c.pos[nk] * C;
      T* dy = dys + 1LL * c.pos[nk] * C;
      const T* dn = dout + 1LL * n * C;
      dgates[nk] = static_cast<T>(scale_and_dot(dy, dn, y, c.gates[nk], C));
    }
  });
}

template <class T>
void moe_router_backward(T* dinp, const MoeWeights<T>* rg, MoeScratch<T>& s, const T* inp, const MoeCache<T>& c,
                         const MoeWeights<T>& wts, RouterKind router, const MoeDims& d) {
  const int N = d.N, C = d.C, E = d.E, K = d.K;
  threads().run(d.shards, [&](int sh, int) {
    const int t0 = d.shard_begin(sh), t1 = d.shard_begin(sh + 1);
    if (t1 > t0)
      topk_softmax_backward<T>(s.dscores + 1LL * t0 * E, s.dgates + 1LL * t0 * K, c.gates + 1LL * t0 * K, c.idx + 1LL * t0 * K,
                               t1 - t0, E, K);
  });
  if (d.sets > 1) {
    const MoeWeights<T>& g = rg[0];
    threads().run(d.sets, [&](int r, int) {  // each set's gradient is its own
      const int Ns = N / d.sets;
      const int64_t t0 = 1LL * r * Ns, ec = 1LL * r * E * C;
      gaussian_scores_backward<T>(dinp + t0 * C, g.router_a + r * g.set_stride, g.router_b + r * g.set_stride,
                                  thread_scratch<T>(3LL * E * C + E), s.dscores + t0 * E, inp + t0 * C, c.inp_sq + t0 * C,
                                  wts.router_a + r * wts.set_stride, c.w + ec, c.m + ec, Ns, C, E);
    });
    return;
  }
  threads().run(d.shards, [&](int sh, int) {  // each shard's router gradient is its own (rg[sh])
    const int t0 = d.shard_begin(sh), n = d.shard_begin(sh + 1) - t0;
    if (n == 0) return;
    const MoeWeights<T>& g = rg[sh];
    if (router == RouterKind::Linear)
      linear_backward<T>(dinp + 1LL * t0 * C, g.router_a, nullptr, s.dscores + 1LL * t0 * E, inp + 1LL * t0 * C,
                         wts.router_a, n, C, E);
    else
      gaussian_scores_backward<T>(dinp + 1LL * t0 * C, g.router_a, g.router_b, thread_scratch<T>(3LL * E * C + E),
                                  s.dscores + 1LL * t0 * E, inp + 1LL * t0 * C, c.inp_sq + 1LL * t0 * C, wts.router_a, c.w,
                                  c.m, n, C, E);
  });
}

template <class T>
void moe_experts_backward(T* dxs, T* grad_experts, const T* dys, const T* xs, const T* h, const T* act,
                          const int32_t* offsets, int n_experts, const T* experts, const MoeDims& d) {
  const int C = d.C, F = d.F;
  const int R = ffn_row_block(F);
  threads().run(n_experts, [&](int e, int) {  // one expert per item: its rows, its gradients
    const int e0 = offsets[e], n_e = offsets[e + 1] - e0;
    if (n_e == 0) return;
    const ExpertView<T> x = expert_view(const_cast<T*>(experts), e, d);
    const ExpertView<T> gx = expert_view(grad_experts, e, d);
    // d act and d h of one row block at a time, in the thread's scratch (they never reach memory);
    // the weight gradients accumulate block by block
    T* dact = thread_scratch<T>(2LL * R * F);
    T* dh = dact + 1LL * R * F;
    for (int r0 = e0; r0 < e0 + n_e; r0 += R) {
      const int n = std::min(R, e0 + n_e - r0);
      linear_backward<T>(dact, gx.fc2_w, gx.fc2_b, dys + 1LL * r0 * C, act + 1LL * r0 * F, x.fc2_w, n, F, C);
      gelu_backward_cached<T>(dh, dact, h + 1LL * r0 * F, 1LL * n * F);
      linear_backward<T>(dxs + 1LL * r0 * C, gx.fc1_w, gx.fc1_b, dh, xs + 1LL * r0 * C, x.fc1_w, n, C, F);
    }
  });
}

template <class T>
void moe_scatter_add(T* dinp, const T* dxs, const MoeCache<T>& c, const MoeDims& d) {
  // per token, its rows in ascending order (the order of the sorted rows, expert by expert)
  const int C = d.C, K = d.K;
  threads().run(d.shards, [&](int s, int) {
    int32_t* rows = thread_scratch<int32_t>(K);
    for (int n = d.shard_begin(s); n < d.shard_begin(s + 1); ++n) {
      int cnt = 0;
      for (int j = 0; j < K; ++j) {
        const int32_t a = c.pos[1LL * n * K + j];
        if (a >= 0) rows[cnt++] = a;
      }
      std::sort(rows, rows + cnt);
      T* o = dinp + 1LL * n * C;
      for (int r = 0; r < cnt; ++r)
        for (int i = 0; i < C; ++i) o[i] += dxs[1LL * rows[r] * C + i];
    }
  });
}

template <class T>
void moe_backward(T* dinp, const MoeWeights<T>& g, MoeScratch<T>& s, const T* dout, const T* inp,
                  const MoeCache<T>& c, const MoeWeights<T>& wts, RouterKind router,
                  const MoeDims& d) {
  moe_combine_backward(s.dys, s.dgates, dout, c, d);
  // router backward first: it assigns dinp; the experts' contributions then accumulate
  moe_router_backward(dinp, &g, s, inp, c, wts, router, d);
  moe_experts_backward(s.dxs, g.experts, s.dys, c.xs, c.h, c.act, c.offsets, d.E, wts.experts, d);
  moe_scatter_add(dinp, s.dxs, c, d);
}

#define HYPERRNN_INSTANTIATE_MOE(T)                                                             \
  template MoeCache<T> moe_bind_cache<T>(Carver<T>&, Carver<int32_t>&, const MoeDims&);         \
  template MoeScratch<T> moe_bind_scratch<T>(Carver<T>&, const MoeDims&);                       \
  template void moe_forward<T>(T*, MoeCache<T>&, const T*, const MoeWeights<T>&, RouterKind,    \
                               const MoeDims&);                                                 \
  template void moe_backward<T>(T*, const MoeWeights<T>&, MoeScratch<T>&, const T*, const T*,   \
                                const MoeCache<T>&, const MoeWeights<T>&, RouterKind,           \
                                const MoeDims&);                                                \
  template void moe_route<T>(MoeCache<T>&, const T*, const MoeWeights<T>&, RouterKind, const MoeDims&); \
  template void moe_experts_forward<T>(T*, T*, T*, const T*, const int32_t*, int, const T*, const MoeDims&); \
  template void moe_combine<T>(T*, const MoeCache<T>&, const MoeDims&);                        \
  template void moe_combine_backward<T>(T*, T*, const T*, const MoeCache<T>&, const MoeDims&);  \
  template void moe_router_backward<T>(T*, const MoeWeights<T>*, MoeScratch<T>&, const T*, const MoeCache<T>&, \
                                       const MoeWeights<T>&, RouterKind, const MoeDims&);      \
  template void moe_experts_backward<T>(T*, T*, const T*, const T*, const T*, const T*, const int32_t*, int, \
                                        const T*, const MoeDims&);                              \
  template void moe_scatter_add<T>(T*, const T*, const MoeCache<T>&, const MoeDims&);                \
  template void dynamic_topk_gates<T>(T*, const T*, const int32_t*, int, int, const MoeDims&);
HYPERRNN_INSTANTIATE_MOE(float)
HYPERRNN_INSTANTIATE_MOE(double)

}  // namespace hyperrnn::nn
