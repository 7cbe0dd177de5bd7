// Forward/backward pairs of the Transformer's ops, CPU reference versions (the oracle for any
// faster or GPU backend). Instantiated for float (training) and double (gradient checks).
//
// Argument order everywhere: outputs, cached values, inputs, parameters, dimensions.
// Dimension letters: B batch, T time, C channels, V vocabulary, N rows (usually B*T), H heads,
// IC/OC input/output features, F feed-forward hidden width, E experts, K top-k.
//
// Accumulation rule (the only one): parameter gradients accumulate (+=); activation gradients are
// assigned (=), except on the residual stream, where every contribution accumulates (+=) — the
// ops whose input is the residual stream (layernorm, the final head's input) say so below.
#pragma once
#include <cstdint>

namespace hyperrnn::nn {

// out = wte[token] + wpe[t]
template <class T>
void embedding_forward(T* out,              // (B,T,C)
                       const int32_t* inp,  // (B,T) token ids
                       const T* wte,        // (V,C)
                       const T* wpe,        // (Tmax,C), Tmax >= T
                       int B, int Tn, int C);
template <class T>
void embedding_backward(T* dwte, T* dwpe,    // (V,C) (Tmax,C), accumulate
                        const T* dout,       // (B,T,C)
                        const int32_t* inp,  // (B,T)
                        int B, int Tn, int C);

// LayerNorm over the last dimension, eps 1e-5 (as torch.nn.LayerNorm).
template <class T>
void layernorm_forward(T* out, T* mean, T* rstd,  // (N,C) (N) (N)
                       const T* inp,               // (N,C)
                       const T* weight, const T* bias,  // (C) (C)
                       int N, int C);
// dinp ACCUMULATES: the input of every layernorm here is the residual stream. dweight and dbias
// may both be null (parameter gradients not needed).
template <class T>
void layernorm_backward(T* dinp, T* dweight, T* dbias,  // (N,C) (C) (C), all accumulate
                        const T* dout, const T* inp,     // (N,C) (N,C)
                        const T* weight, const T* mean, const T* rstd,  // (C) (N) (N)
                        int N, int C);

// out = inp weight^T + bias (bias may be null).
template <class T>
void linear_forward(T* out,                          // (N,OC)
                    const T* inp,                    // (N,IC)
                    const T* weight, const T* bias,  // (OC,IC) (OC)
                    int N, int IC, int OC);
// dinp assigned; dweight, dbias accumulate; each may be null (not needed).
template <class T>
void linear_backward(T* dinp, T* dweight, T* dbias,  // (N,IC) (OC,IC) (OC)
                     const T* dout, const T* inp,     // (N,OC) (N,IC)
                     const T* weight,                 // (OC,IC)
                     int N, int IC, int OC);

// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as torch.nn.GELU().
template <class T>
void gelu_forward(T* out, const T* inp, int64_t n);
template <class T>
void gelu_backward(T* dinp, const T* dout, const T* inp, int64_t n);  // dinp assigned
// The training pair: the forward also writes GELU'(inp) to grad (grad may be inp itself), the
// backward multiplies by it (dinp assigned). The erf and exp are evaluated once per element, and
// the results are bitwise those of gelu_forward and gelu_backward.
template <class T>
void gelu_forward_grad(T* out, T* grad, const T* inp, int64_t n);
template <class T>
void gelu_backward_cached(T* dinp, const T* dout, const T* grad, int64_t n);

template <class T>
void residual_forward(T* out, const T* a, const T* b, int64_t n);  // out = a + b

// Dropout on attention probabilities (torch.nn.MultiheadAttention's dropout): the output uses
// att * keep * scale, cached in `att` of this struct; the softmax probabilities stay in the op's own
// att cache for the backward.
template <class T>
struct AttnDropout {
  const uint8_t* keep = nullptr;  // (B,H,Tq,Tk)
  T scale = T(1);                 // 1 / (1 - p)
  T* att = nullptr;               // (B,H,Tq,Tk) the dropped probabilities (cache)
};

// Multi-head self-attention core on packed q|k|v. att caches the softmax probabilities.
template <class T>
void attention_forward(T* out,        // (B,T,C)
                       T* att,        // (B,H,T,T)
                       const T* qkv,  // (B,T,3C): q = [0,C), k = [C,2C), v = [2C,3C)
                       int B, int Tn, int C, int H, bool causal, const AttnDropout<T>* drop = nullptr);
template <class T>
void attention_backward(T* dqkv,      // (B,T,3C) assigned
                        T* datt,      // (B,H,T,T) scratch
                        const T* dout,  // (B,T,C)
                        const T* qkv, const T* att,
                        int B, int Tn, int C, int H, bool causal, const AttnDropout<T>* drop = nullptr);

// Softmax cross-entropy over rows that are all scored (the caller gathers scored positions).
// Returns the sum of the row losses (double accumulation).
template <class T>
double crossentropy_forward(T* losses, T* probs,  // (N) (N,V)
                            const T* logits,      // (N,V)
                            const int32_t* targets,  // (N), each in [0,V)
                            int N, int V);
// Shannon entropy of one probability row as the reference's PICalculator computes it,
// -sum p log(p + 1e-9) (p = 0 adds 0), in double (PILF's tau is its mean over the scored output
// rows: Transformer::mean_entropy).
template <class T>
double row_entropy(const T* p, int V);

// dlogits = scale * (probs - onehot(target)), assigned.
template <class T>
void crossentropy_backward(T* dlogits, const T* probs, const int32_t* targets, T scale, int N,
                           int V);

// Top-k over E scores per row (ties: lower expert index first), mixing weights = softmax over the
// k chosen scores.
template <class T>
void topk_softmax_forward(int32_t* idx, T* gates,  // (N,K) (N,K), idx sorted by score desc
                          const T* scores,         // (N,E)
                          int N, int E, int K);
template <class T>
void topk_softmax_backward(T* dscores,          // (N,E) assigned; unchosen experts get 0
                           const T* dgates,     // (N,K)
                           const T* gates, const int32_t* idx,
                           int N, int E, int K);

// Diagonal-Gaussian log-likelihood router score:
//   s_e(x) = sum_i log N(x_i; mu_e,i, exp(log_sigma_e,i))
// computed by GEMMs with w = exp(-2 log_sigma), m = mu * w:
//   s = -1/2 (x*x) w^T + x m^T + c_e,  c_e = sum_i (-1/2 mu^2 w - log_sigma - 1/2 log 2pi)
// w, m, c are cached for the backward pass.
template <class T>
void gaussian_scores_forward(T* scores,              // (N,E)
                             T* w, T* m, T* c,       // (E,C) (E,C) (E) cached
                             T* inp_sq,              // (N,C) scratch, x*x
                             const T* inp,           // (N,C)
                             const T* mu, const T* log_sigma,  // (E,C) (E,C)
                             int N, int C, int E);
// dinp assigned; dmu, dlog_sigma accumulate. scratch_ec: 3*E*C + E elements.
template <class T>
void gaussian_scores_backward(T* dinp, T* dmu, T* dlog_sigma,  // (N,C) (E,C) (E,C)
                              T* scratch_ec,
                              const T* dscores,                 // (N,E)
                              const T* inp, const T* inp_sq,    // (N,C) (N,C)
                              const T* mu, const T* w, const T* m,  // (E,C) x3
                              int N, int C, int E);

// ViT input: cut (B, H, W) single-channel images into non-overlapping p x p patches, row-major
// over the patch grid, each patch flattened row-major: out (B, P, p*p), P = (H/p)(W/p). Pure data
// movement (images need no gradient); the patch projection is then a linear op.
template <class T>
void image_to_patches(T* out,          // (B, P, p*p)
                      const T* images,  // (B, H, W)
                      int B, int H, int W, int p);

// Mean over the T tokens of each sample (the classifier's pooling).
template <class T>
void meanpool_forward(T* out,        // (B,C)
                      const T* inp,  // (B,T,C)
                      int B, int Tn, int C);
template <class T>
void meanpool_backward(T* dinp,        // (B,T,C) accumulates: its input is the residual stream
                       const T* dout,  // (B,C)
                       int B, int Tn, int C);

// Cross-attention core (non-causal): Tq queries attend over Tk memory rows per sample; k|v packed.
// Used by the GatingTransformer (one query q over the retrieved history).
template <class T>
void cross_attention_forward(T* out,        // (B,Tq,C)
                             T* att,        // (B,H,Tq,Tk) softmax probabilities, cached
                             const T* q,    // (B,Tq,C)
                             const T* kv,   // (B,Tk,2C): k = [0,C), v = [C,2C)
                             int B, int Tq, int Tk, int C, int H, const AttnDropout<T>* drop = nullptr);
template <class T>
void cross_attention_backward(T* dq,          // (B,Tq,C) assigned
                              T* dkv,         // (B,Tk,2C) assigned
                              T* datt,        // (B,H,Tq,Tk) scratch
                              const T* dout,  // (B,Tq,C)
                              const T* q, const T* kv, const T* att,
                              int B, int Tq, int Tk, int C, int H, const AttnDropout<T>* drop = nullptr);

// ReLU (the GatingTransformer's FFN activation, as torch.nn.TransformerDecoderLayer).
template <class T>
void relu_forward(T* out, const T* inp, int64_t n);
template <class T>
void relu_backward(T* dinp, const T* dout, const T* inp, int64_t n);  // dinp assigned

}  // namespace hyperrnn::nn
