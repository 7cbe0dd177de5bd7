// Mixture-of-Experts feed-forward layer: router (linear or diagonal-Gaussian) -> top-k -> softmax
// over the k chosen -> experts (Linear-GELU-Linear) on their tokens in canonical token order ->
// gate-weighted combine. No capacity limit; no communication: the phase functions below let the
// model run the expert phases on the experts' owners with the exchange (src/parallel/layout.hpp)
// in between; moe_forward / moe_backward compose them for one process.
#pragma once
#include <cstdint>

#include "core/carver.hpp"

namespace hyperrnn::nn {

enum class RouterKind { Linear, Gaussian };

struct MoeDims {
  int N = 0;  // tokens
  int C = 0;  // channels
  int E = 0;  // experts
  int K = 0;  // top-k
  int F = 0;  // expert hidden width
  // Gaussian router: number of routing-distribution sets. 1 = one static (mu, log_sigma) per
  // expert; S > 1 = memory-Gaussian routing, tokens [s N/S, (s+1) N/S) use set s (one per sample).
  int sets = 1;
  // Dynamic top-k: sample_k (N / sample_tokens entries) gives each sample's k in [1, K]; tokens of
  // sample b use their k best of the K chosen experts, with the softmax over those k. Null = K.
  const int32_t* sample_k = nullptr;
  int sample_tokens = 0;
  int k_of(int n) const { return sample_k ? sample_k[n / sample_tokens] : K; }
  // Canonical batch shards: token ranges [shard_rows[s], shard_rows[s+1]) (shards + 1 entries;
  // null = one shard). The router's GEMMs run shard by shard so that their shapes, and so their
  // results, do not depend on how many shards a process holds.
  int shards = 1;
  const int32_t* shard_rows = nullptr;
  int shard_begin(int s) const { return shard_rows ? shard_rows[s] : (s == 0 ? 0 : N); }
  int64_t assignments() const { return static_cast<int64_t>(N) * K; }  // capacity (all k = K)
  // Elements of one expert in the parameter buffer: fc1.weight (F,C), fc1.bias (F),
  // fc2.weight (C,F), fc2.bias (C), in this order.
  int64_t expert_stride() const { return 2LL * F * C + F + C; }
};

// Pointers into a parameter-layout buffer (parameters, or gradients with the same layout).
template <class T>
struct MoeWeights {
  T* router_a = nullptr;  // linear: W_g (E,C); gaussian: mu (E,C)
  T* router_b = nullptr;  // gaussian: log_sigma (E,C); linear: unused
  T* experts = nullptr;   // E consecutive experts, expert_stride() elements each
  int64_t set_stride = 0; // gaussian with sets > 1: elements between consecutive sets' mu (and log_sigma)
};

// Forward values kept for the backward pass (one per MoE layer, carved from the arena).
template <class T>
struct MoeCache {
  T* scores;        // (N,E)
  T* gates;         // (N,K)
  int32_t* idx;     // (N,K) chosen experts, by score descending
  int32_t* offsets; // (E+1) row ranges of each expert in the dispatched arrays; offsets[E] = rows in use
  int32_t* cursor;  // (E)   fill cursor of the counting sort
  int32_t* tok;     // (A) token of each dispatched row, canonical (expert, token, slot) order
  int32_t* pos;     // (N,K) dispatched row of each (token, slot); -1 for a slot beyond the token's k
  T* xs;            // (A,C) gathered inputs
  T* h;             // (A,F) GELU'(fc1 pre-activation): the forward writes the derivative over it
  T* act;           // (A,F) GELU(h)
  T* ys;            // (A,C) expert outputs
  T* w;             // (sets,E,C) gaussian: exp(-2 log_sigma)
  T* m;             // (sets,E,C) gaussian: mu * w
  T* c;             // (sets,E)   gaussian: per-expert constant
  T* inp_sq;        // (N,C) gaussian: x*x
};

// Backward scratch shared by all MoE layers.
template <class T>
struct MoeScratch {
  T* dys;     // (A,C)
  T* dxs;     // (A,C)
  T* dgates;  // (N,K)
  T* dscores; // (N,E)
  T* ec;      // (3EC+E)
};

// Carve the cache / scratch for dims d (a counting Carver only measures; see core/carver.hpp).
template <class T>
MoeCache<T> moe_bind_cache(Carver<T>& f, Carver<int32_t>& i, const MoeDims& d);
template <class T>
MoeScratch<T> moe_bind_scratch(Carver<T>& f, const MoeDims& d);

template <class T>
void moe_forward(T* out,                   // (N,C) assigned
                 MoeCache<T>& cache,
                 const T* inp,             // (N,C)
                 const MoeWeights<T>& wts, RouterKind router, const MoeDims& d);

// dinp assigned; weight gradients (same layout as wts) accumulate.
template <class T>
void moe_backward(T* dinp,                 // (N,C)
                  const MoeWeights<T>& grads, MoeScratch<T>& scratch,
                  const T* dout,           // (N,C)
                  const T* inp, const MoeCache<T>& cache,
                  const MoeWeights<T>& wts, RouterKind router, const MoeDims& d);

// The phases (moe_forward = route, experts_forward, combine; moe_backward = combine_backward,
// router_backward, experts_backward, scatter_add).
// Router scores, top-k, gates, counting sort of the active (token, slot) pairs by expert (stable in
// token order) and the gathered inputs xs in that order.
template <class T>
void moe_route(MoeCache<T>& cache, const T* inp, const MoeWeights<T>& wts, RouterKind router, const MoeDims& d);
// Experts [0, n_experts) of the block `experts` (expert_stride() elements each) on their row ranges
// offsets (n_experts + 1) of xs: h (GELU's derivative at the fc1 pre-activation), act, ys assigned.
template <class T>
void moe_experts_forward(T* ys, T* h, T* act, const T* xs, const int32_t* offsets, int n_experts, const T* experts,
                         const MoeDims& d);
// out (N,C) assigned: gate-weighted sum of cache.ys rows.
template <class T>
void moe_combine(T* out, const MoeCache<T>& cache, const MoeDims& d);
// dys (A,C) and dgates (N,K) assigned from dout.
template <class T>
void moe_combine_backward(T* dys, T* dgates, const T* dout, const MoeCache<T>& cache, const MoeDims& d);
// From scratch.dgates: dscores, dinp assigned, router gradients accumulated; router_grads holds one
// MoeWeights per shard (routing sets > 1: the per-set gradients, entry 0 only).
template <class T>
void moe_router_backward(T* dinp, const MoeWeights<T>* router_grads, MoeScratch<T>& scratch, const T* inp,
                         const MoeCache<T>& cache, const MoeWeights<T>& wts, RouterKind router, const MoeDims& d);
// Expert backward on the rows of experts_forward (h: the forward's GELU' buffer): dxs assigned;
// weight gradients accumulate into grad_experts (row block by row block, see moe.cpp).
template <class T>
void moe_experts_backward(T* dxs, T* grad_experts, const T* dys, const T* xs, const T* h, const T* act,
                          const int32_t* offsets, int n_experts, const T* experts, const MoeDims& d);
// dinp[token] += dxs[row] over the sorted rows.
template <class T>
void moe_scatter_add(T* dinp, const T* dxs, const MoeCache<T>& cache, const MoeDims& d);
// Dynamic top-k (d.sample_k): for tokens [t0, t1) whose k is below K, the gates become the softmax
// over their first k chosen scores (double exps and sum), the other slots 0. After the top-k.
template <class T>
void dynamic_topk_gates(T* gates, const T* scores, const int32_t* idx, int t0, int t1, const MoeDims& d);

// Tokens routed to expert e in the last forward: offsets[e+1] - offsets[e].
inline int moe_tokens_of(const int32_t* offsets, int e) { return offsets[e + 1] - offsets[e]; }

}  // namespace hyperrnn::nn
