// Mixture-of-Experts feed-forward layer: router (linear or diagonal-Gaussian) -> top-k -> softmax
// over the k chosen -> experts (Linear-GELU-Linear) on their tokens in canonical token order ->
// gate-weighted combine. No capacity limit; no communication (the expert-parallel exchange wraps
// these functions in a later layer).
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
  T* h;             // (A,F) fc1 pre-activation
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
  T* dact;    // (A,F)
  T* dh;      // (A,F)
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

// Tokens routed to expert e in the last forward: offsets[e+1] - offsets[e].
inline int moe_tokens_of(const int32_t* offsets, int e) { return offsets[e + 1] - offsets[e]; }

}  // namespace hyperrnn::nn
