// Pre-LN Transformer language model over token sequences with a dense or Mixture-of-Experts
// feed-forward block (linear or Gaussian router). Hand-written forward and backward over the ops
// in src/nn; parameters and gradients in one flat buffer each, laid out by the ParamTable.
// Leaves out: communication (later issues wrap the MoE exchange), optimizers (src/nn/adamw).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/batch.hpp"
#include "core/param_table.hpp"
#include "nn/moe.hpp"

namespace hyperrnn {

// pilf: memory-Gaussian MoE, each sample's tokens routed by per-expert Gaussians that a router
// callback (the GatingTransformer over the experience buffer, src/pilf) produces from the sample's
// mean layer input q.
enum class ModelKind { Dense, Moe, GaussMoe, Pilf };
const char* to_string(ModelKind k);
// Returns false for an unknown name.
bool parse_model_kind(const std::string& s, ModelKind& out);

struct ModelConfig {
  ModelKind kind = ModelKind::Dense;
  int vocab = 0;     // token models: vocabulary; image models: classes
  int seq_len = 0;   // maximum positions (learned position table size); image models: patches
  int d_model = 0;
  int layers = 0;
  int heads = 0;
  int experts = 0;   // MoE only
  int top_k = 0;     // MoE only
  int d_ff = 0;      // hidden width of the dense FFN and of each expert
  bool causal = true;
  bool tie_embeddings = true;  // the output head reuses wte (GPT-2, Zoology)
  double init_scale = 1.0;      // matrices ~ N(0, init_scale^2 / (2 fan_in))
  double embed_init_std = 1.0;  // std of wte and wpe at initialisation
  // Image input (ViT): image_h x image_w single-channel images cut into patch x patch patches,
  // embedded by a linear map; non-causal attention; the head reads the mean over the patch tokens
  // and predicts one class per sample (the batch's label sits at target position 0).
  int image_h = 0, image_w = 0, patch = 0;  // patch 0 = token input
  bool is_image() const { return patch > 0; }
  bool is_moe() const { return kind != ModelKind::Dense; }
  bool memory_routing() const { return kind == ModelKind::Pilf; }
};

template <class T>
class Transformer {
 public:
  // batch_capacity: largest B passed to forward; max_scored: largest number of scored positions.
  Transformer(const ModelConfig& cfg, int batch_capacity, int max_scored);

  const ModelConfig& config() const { return cfg_; }
  const ParamTable& table() const { return table_; }
  std::vector<T> params;  // (table.total())
  std::vector<T> grads;   // (table.total())

  // Parameter initialisation from the counter RNG (purpose Init, step = tensor index).
  void init(uint64_t seed);

  // Forward pass; returns the mean cross-entropy over the scored positions.
  double forward(const Batch& batch);
  // Backward of the last forward; gradients accumulate into grads (call zero_grad first).
  void backward();

  // Memory-Gaussian routing (model pilf): called once per MoE layer in forward with the samples'
  // mean layer inputs q (B,C); writes mu_ls (B,2,E,C), every expert's mu then log_sigma, and may
  // lower each sample's k (B, preset to top_k; dynamic top-k) to any value in [1, top_k]. The
  // routing distribution is data to the task loss (stop-gradient): backward leaves its gradient
  // in routing_grad(layer) and sends nothing further (the GatingTransformer learns by
  // meta-training only).
  using MemoryRouter = std::function<void(int layer, const T* q, int B, T* mu_ls, int32_t* k)>;
  void set_memory_router(MemoryRouter r) { router_ = std::move(r); }
  const T* routing_grad(int layer) const { return layers_[static_cast<size_t>(layer)].dmu_ls; }  // (B,2,E,C)
  int64_t routing_grad_size() const { return static_cast<int64_t>(B_) * 2 * cfg_.experts * cfg_.d_model; }

  // Per-sample task loss and output entropy (means over each sample's scored positions; 0 for a
  // sample without any), and the mean entropy over all scored positions (PI's tau).
  void sample_loss_entropy(double* eps, double* tau) const;  // (B) (B)
  double mean_entropy() const;
  void zero_grad();

  // Statistics of the last forward.
  int scored() const { return n_scored_; }
  double accuracy() const { return accuracy_; }      // mean over samples of per-sample accuracy
  int samples_scored() const { return samples_scored_; }
  double correct() const { return correct_; }        // sum over samples of per-sample accuracy
  // tokens routed to each expert, (layers, E) row-major; empty for dense
  const std::vector<int32_t>& expert_tokens() const { return expert_tokens_; }
  // Hash of every MoE layer's expert choices in the last forward (gradient checks use it to skip
  // points where a perturbation changes the routing, i.e. next to top-k ties).
  uint64_t routing_hash() const;
  // Analytic model FLOPs of one forward + backward at the last forward's shapes (GEMMs only:
  // backward counted as twice the forward).
  double step_flops() const;

 private:
  struct Layer {
    // parameter tensor indices
    int ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b;
    int fc1_w = -1, fc1_b = -1, fc2_w = -1, fc2_b = -1;  // dense
    int router_a = -1, router_b = -1, expert0 = -1;      // MoE
    // activations
    T *ln1_out, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *attproj, *res_mid;
    T *ln2_out, *ln2_mean, *ln2_rstd, *fc1_h, *fc1_act, *ffn_out, *res_out;
    nn::MoeCache<T> moe{};
    T *q = nullptr, *mu_ls = nullptr, *dmu_ls = nullptr;  // pilf: (B,C) (B,2,E,C) (B,2,E,C)
    int32_t* k = nullptr;                                 // pilf: (B) experts per token of each sample
  };
  // The activation layout: every buffer below, carved in one fixed order (counted, then bound).
  void bind_activations(Carver<T>& f, Carver<int32_t>& ip);
  T* p(int tensor) { return params.data() + table_[tensor].offset; }
  T* g(int tensor) { return grads.data() + table_[tensor].offset; }
  nn::MoeWeights<T> moe_weights(const Layer& L, std::vector<T>& buf);
  nn::MoeDims moe_dims(int N) const;

  ModelConfig cfg_;
  int Bcap_, Scap_;
  ParamTable table_;
  int wte_, wpe_, lnf_w_, lnf_b_, head_w_;  // head_w_ == wte_ when tied; image: wte_ = patch weight
  int patch_b_ = -1;
  T* patches_ = nullptr;  // image: (B,P,p*p)
  std::vector<Layer> layers_;
  std::vector<T> arena_;
  std::vector<int32_t> iarena_;
  // shared activations and backward scratch
  T *x0_, *lnf_out_, *lnf_mean_, *lnf_rstd_, *hs_, *logits_, *probs_, *losses_;
  T *dres_, *dln_, *datty_, *dqkv_, *datt_, *dact_, *dh_, *dhs_, *dlogits_;
  nn::MoeScratch<T> moe_scratch_{};
  int32_t *scored_rows_, *scored_targets_;
  // last forward
  const Batch* batch_ = nullptr;
  int B_ = 0, n_scored_ = 0, samples_scored_ = 0;
  double accuracy_ = 0.0, correct_ = 0.0;
  std::vector<int32_t> expert_tokens_;
  MemoryRouter router_;
};

}  // namespace hyperrnn
