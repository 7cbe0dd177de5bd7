// The GatingTransformer of PILF-2 (docs/pilf.md): for each query q (a sample's mean
// MoE-layer input) and its retrieved history (the k_hist most similar stored q's), a post-norm
// Transformer decoder (self-attention over [q], cross-attention over the history, ReLU FFN 4C,
// as torch.nn.TransformerDecoderLayer, dropout at its six sites when asked for) and a Linear
// C -> 2*E*C giving every expert's routing Gaussian (mu, log_sigma). One set of weights ("bank")
// per MoE layer, all in one parameter table of kind Gating. Leaves out: where q and the history
// come from (src/pilf).
#pragma once
#include <cstdint>
#include <vector>

#include "core/carver.hpp"
#include "core/param_table.hpp"
#include "nn/dropout.hpp"

namespace hyperrnn {

struct GatingConfig {
  int d_model = 0;   // C, the MoE layer's width
  int heads = 4;     // cross-attention heads (must divide C)
  int layers = 2;    // decoder layers
  int experts = 0;   // E
  int history = 10;  // Kh, memory rows per query
  int banks = 1;     // MoE layers, one GatingTransformer each
  double init_scale = 1.0;
  // torch.nn.TransformerDecoderLayer's dropout (the reference: 0.1), applied where forward gets a
  // key: on the self- and cross-attention probabilities, the three residual branches and the
  // FFN's hidden activation.
  double dropout = 0.0;
};

template <class T>
class GatingTransformer {
 public:
  // capacity: the largest n passed to forward.
  GatingTransformer(const GatingConfig& cfg, int capacity);
  const GatingConfig& config() const { return cfg_; }
  const ParamTable& table() const { return table_; }
  std::vector<T> params;  // (table.total())
  std::vector<T> grads;   // (table.total())

  // Matrices N(0, s^2/(2 fan_in)), biases 0, LayerNorm (1, 0); purpose Init, step = 1000000 +
  // tensor index (disjoint from the main model's streams).
  void init(uint64_t seed);
  void zero_grad();

  // out (n, 2, E, C): mu of every expert, then log_sigma of every expert. key: dropout on (null:
  // evaluation, or dropout 0); query b's masks come from stream index (first + b) x sites() + site.
  void forward(T* out,          // (n,2,E,C)
               const T* q,      // (n,C)
               const T* hist,   // (n,Kh,C)
               int n, int bank, const nn::DropoutKey* key = nullptr, uint32_t first = 0);
  // Backward of the last forward. Parameter gradients accumulate unless param_grads is false; dq
  // (n,C), when not null, is assigned the gradient w.r.t. q (the history is data: no gradient).
  void backward(const T* dout,  // (n,2,E,C)
                T* dq = nullptr, bool param_grads = true);
  // Dropout sites per query over all banks and layers.
  int sites() const { return cfg_.banks * cfg_.layers * 6; }

  // Signature of every ReLU's sign in the last forward (gradient checks skip points where a
  // perturbation flips one: the kink).
  uint64_t relu_pattern() const;

  // Analytic GEMM FLOPs of one forward over n queries.
  double forward_flops(int n) const;

 private:
  struct Dec {  // tensor indices of one decoder layer
    int sa_v_w, sa_v_b, sa_o_w, sa_o_b, ln1_w, ln1_b;
    int ca_q_w, ca_q_b, ca_kv_w, ca_kv_b, ca_o_w, ca_o_b, ln2_w, ln2_b;
    int ff1_w, ff1_b, ff2_w, ff2_b, ln3_w, ln3_b;
  };
  struct Bank {
    std::vector<Dec> dec;
    int head_w, head_b;
  };
  struct Acts {  // activations of one decoder layer
    T *sa_v, *r1, *x1, *m1, *s1;  // sa_v: after the self-attention's dropout
    T *caq, *kv, *att, *cay, *r2, *x2, *m2, *s2;
    T *ffh, *ffa, *r3, *x3, *m3, *s3;
    // dropout: keep masks (self-attention per head, residual 1, cross-attention probabilities,
    // residual 2, FFN hidden, residual 3) and the dropped cross-attention probabilities
    uint8_t *k_sa, *k_r1, *k_ca, *k_r2, *k_ff, *k_r3;
    T* att_drop;
  };
  void bind(Carver<T>& f, Carver<uint8_t>& b);
  T* p(int i) { return params.data() + table_[i].offset; }
  T* g(int i) { return grads.data() + table_[i].offset; }

  GatingConfig cfg_;
  int cap_;
  ParamTable table_;
  std::vector<Bank> banks_;
  std::vector<T> arena_;
  std::vector<uint8_t> barena_;
  std::vector<Acts> acts_;
  T *tmp_, *d_a_, *d_b_, *d_c_, *dff_a_, *dff_h_, *dkv_, *datt_, *dq_;
  // last forward
  const T* q_ = nullptr;
  const T* hist_ = nullptr;
  int n_ = 0, bank_ = 0;
  bool drop_ = false;
};

}  // namespace hyperrnn
