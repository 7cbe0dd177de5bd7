// Pre-LN Transformer language model over token sequences with a dense or Mixture-of-Experts
// feed-forward block (linear or Gaussian router). Hand-written forward and backward over the ops
// in src/nn; parameters and gradients in one flat buffer each, laid out by the ParamTable.
// Expert parallel over P ranks (src/parallel/layout.hpp): each rank runs its block of the global
// batch, shard by shard for every GEMM whose shape would otherwise depend on P; MoE layers send
// tokens to their experts' owners and back; replicated gradients are summed over all shards
// reproducibly at the end of backward. On the rank's threads (src/parallel/threads.hpp) the shards
// are the work items of the dense parts and attention, the experts those of the expert GEMMs. Leaves out: optimizers (src/nn/adamw), MPI (mpi/).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/batch.hpp"
#include "parallel/layout.hpp"
#include "core/param_table.hpp"
#include "nn/moe.hpp"
#include "nn/rwkv7.hpp"

namespace hyperrnn {

// pilf: memory-Gaussian MoE, each sample's tokens routed by per-expert Gaussians that a router
// callback (the GatingTransformer over the experience buffer, src/pilf) produces from the sample's
// mean layer input q. rwkv7: the RWKV-7 recurrent baseline (src/nn/rwkv7.hpp) in place of the
// attention and FFN blocks, on the same embedding, head, loss, shards and parameter table.
enum class ModelKind { Dense, Moe, GaussMoe, Pilf, Rwkv7 };
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
  // Image input with a class token (the reference ViT): a learned token (zeros at start) before the
  // patches, position 0 of the sequence (seq_len = patches + 1); the head reads its final state and
  // has a bias. Without it the head reads the mean over the tokens and has no bias.
  bool cls_token = false;
  // torch.nn.Dropout probability at the reference ViT's sites, in training only (forward on a batch
  // whose step >= 0): the embedding output, the attention probabilities, the attention and
  // feed-forward residual branches, and in the dense FFN its hidden activation and its output.
  // Masks come from the counter RNG keyed by (seed, Dropout, step, global sample x sites + site).
  double dropout = 0.0;
  // rwkv7 (heads = d_model / head_size): low-rank sizes of the decay, in-context learning rate,
  // value residual and gate paths; the wkv state checkpoint interval; the optional parts; L2Wrap's
  // factor (the reference's loss: 1e-4 x the largest logit added to its gradient, per scored row).
  int head_size = 0;
  int lora_w = 0, lora_a = 0, lora_v = 0, lora_g = 0;
  int rwkv_chunk = 16;
  bool value_residual = true, output_gate = true, channel_mix = true;
  double l2wrap = 0.0;
  bool is_rwkv() const { return kind == ModelKind::Rwkv7; }
  bool is_image() const { return patch > 0; }
  int patches() const { return is_image() ? seq_len - (cls_token ? 1 : 0) : 0; }
  bool is_moe() const { return kind == ModelKind::Moe || kind == ModelKind::GaussMoe || kind == ModelKind::Pilf; }
  bool memory_routing() const { return kind == ModelKind::Pilf; }
};

template <class T>
class Transformer {
 public:
  // batch_capacity: largest B passed to forward (this rank's samples); max_scored: largest number
  // of scored positions among them. par: the layout (null = one rank, one shard); it must outlive
  // the model.
  Transformer(const ModelConfig& cfg, int batch_capacity, int max_scored, Parallel* par = nullptr);

  const ModelConfig& config() const { return cfg_; }
  const ParamTable& table() const { return table_; }
  // This rank's layout (table offsets): the replicated tensors and the experts it owns; other
  // ranks' experts take no memory here (their table offset is -1).
  std::vector<T> params;  // (table.total())
  std::vector<T> grads;   // (table.total())
  Parallel& parallel() { return *par_; }

  // Parameter initialisation from the counter RNG (purpose Init, step = tensor index).
  void init(uint64_t seed);

  // Forward pass (collective over ranks); returns the mean cross-entropy over the scored positions
  // of the whole global batch.
  double forward(const Batch& batch);
  // Backward of the last forward (collective); gradients accumulate into grads (call zero_grad
  // first): replicated tensors receive the reproducible sum over all shards, owned experts theirs.
  void backward();

  // Memory-Gaussian routing (model pilf): called once per MoE layer in forward with this rank's
  // canonical shards; for each shard, its samples' mean layer inputs q (B,C), B samples from local
  // sample `first`, it writes mu_ls (B,2,E,C), every expert's mu then log_sigma, and may lower each
  // sample's k (B, preset to top_k; dynamic top-k) to any value in [1, top_k]. The router may run
  // the shards on the rank's threads; per shard its GEMMs have the shard's shape. Backward leaves the
  // task loss's gradient at the routing distribution in routing_grad(layer); it goes further (to q)
  // only through set_memory_router_backward.
  // key: the batch's training step (-1: evaluation) and the global index of the shard's first
  // sample (dropout masks of the router are keyed by them).
  struct RouteKey {
    int64_t step = -1;
    int64_t global_first = 0;
  };
  struct RouteShard {
    int first = 0, B = 0;
    const T* q = nullptr;
    T* mu_ls = nullptr;
    int32_t* k = nullptr;
    RouteKey key;
  };
  using MemoryRouter = std::function<void(int layer, const std::vector<RouteShard>& shards)>;
  void set_memory_router(MemoryRouter r) { router_ = std::move(r); }
  // A router from a function of one shard, called for the shards in order on the calling thread.
  using ShardRouter = std::function<void(int layer, int first, const T* q, int B, T* mu_ls, int32_t* k, const RouteKey& key)>;
  static MemoryRouter in_order(ShardRouter f) {
    return [f = std::move(f)](int layer, const std::vector<RouteShard>& shards) {
      for (const RouteShard& s : shards) f(layer, s.first, s.q, s.B, s.mu_ls, s.k, s.key);
    };
  }
  // Optional (the reference's q is not detached): called once per MoE layer in backward with the
  // routing gradient of each shard's B samples from local sample `first`; writes each shard's dq
  // (B,C), the gradient that reaches each sample's q through the router, which backward adds to the
  // layer input (q is the mean over the sample's tokens). Unset: the routing distribution is data.
  struct RouteGradShard {
    int first = 0, B = 0;
    const T* dmu_ls = nullptr;
    T* dq = nullptr;
  };
  using MemoryRouterBackward = std::function<void(int layer, const std::vector<RouteGradShard>& shards)>;
  void set_memory_router_backward(MemoryRouterBackward r) { router_backward_ = std::move(r); }
  const T* routing_grad(int layer) const { return layers_[static_cast<size_t>(layer)].dmu_ls; }  // (B,2,E,C)
  int64_t routing_grad_size() const { return static_cast<int64_t>(B_) * 2 * cfg_.experts * cfg_.d_model; }

  // Per-sample task loss and output entropy of this rank's samples (means over each sample's scored
  // positions; 0 for a sample without any), and the mean entropy over all scored positions of the
  // global batch (PI's tau).
  void sample_loss_entropy(double* eps, double* tau) const;  // (B) (B)
  double mean_entropy() const;
  void zero_grad();

  // Statistics of the last forward, over the global batch.
  int scored() const { return scored_global_; }
  int global_samples() const { return samples_global_; }
  double accuracy() const { return accuracy_; }      // mean over samples of per-sample accuracy
  int samples_scored() const { return samples_scored_; }
  double correct() const { return correct_; }        // sum over samples of per-sample accuracy
  // tokens of the global batch routed to each expert, (layers, E) row-major; empty for dense
  const std::vector<int32_t>& expert_tokens() const { return expert_tokens_; }
  // Hash of every MoE layer's expert choices in the last forward (gradient checks use it to skip
  // points where a perturbation changes the routing, i.e. next to top-k ties).
  uint64_t routing_hash() const;
  // Analytic model FLOPs of one forward + backward of the global batch at the last forward's shapes
  // (GEMMs only: backward counted as twice the forward), all ranks together.
  double step_flops() const;

  // rwkv7: the same outputs as forward (loss, statistics, logits of the scored rows), computed one
  // token at a time for all of this rank's samples, carrying each layer's recurrent state (O(1)
  // memory and work per token; no backward). Other models: UsageError-free check failure.
  double forward_recurrent(const Batch& batch);
  // Floats of recurrent state per sequence (rwkv7), or the KV cache one sequence of `positions`
  // tokens needs (attention models: K and V of every layer and position).
  int64_t state_floats_per_sequence(int64_t positions) const;
  // Logits of the scored rows of the last forward (rows in scored order, V each).
  const T* scored_logits() const { return logits_; }
  int scored_rows() const { return n_scored_; }

 private:
  struct Layer {
    // parameter tensor indices
    int ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b;
    int fc1_w = -1, fc1_b = -1, fc2_w = -1, fc2_b = -1;  // dense
    int router_a = -1, router_b = -1, expert0 = -1;      // MoE
    int expert_here = -1;  // MoE: fc1.weight of the first expert this rank holds (its block's start)
    // activations
    T *ln1_out, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *attproj, *res_mid;
    T *ln2_out, *ln2_mean, *ln2_rstd, *fc1_h, *fc1_act, *ffn_out, *res_out;  // fc1_h: GELU' after the forward
    nn::MoeCache<T> moe{};
    T *q = nullptr, *mu_ls = nullptr, *dmu_ls = nullptr;  // pilf: (B,C) (B,2,E,C) (B,2,E,C)
    int32_t* k = nullptr;                                 // pilf: (B) experts per token of each sample
    // dropout (training, cfg.dropout > 0): keep masks and the dropped attention probabilities
    uint8_t *att_keep = nullptr, *proj_keep = nullptr, *ffn_keep = nullptr, *hid_keep = nullptr, *out_keep = nullptr;
    T* att_drop = nullptr;  // (B,H,T,T)
    // rwkv7: the time mix's and channel mix's parameter tensors (first index of each group, in
    // the order of Rwkv7AttW / Rwkv7FfnW; -1 where the option leaves them out) and caches
    int ratt[26];
    int rffn[3] = {-1, -1, -1};
    nn::Rwkv7AttCache<T> rac{};
    nn::Rwkv7FfnCache<T> rfc{};
  };
  nn::Rwkv7Dims rwkv_dims(int layer, int Tn) const;
  nn::Rwkv7AttW<T> rwkv_att(const Layer& L, const std::function<T*(int)>& at) const;
  nn::Rwkv7FfnW<T> rwkv_ffn(const Layer& L, const std::function<T*(int)>& at) const;
  void add_rwkv_tensors();
  void init_rwkv7(uint64_t seed);
  void bind_rwkv_layer(Layer& Ly, int layer, Carver<T>& f);
  // the canonical shards of a batch: sample and token offsets
  void set_shards(const Batch& batch);
  // the embedding (and its dropout) of local samples [b0, b0 + nb), rows [r0, r0 + n)
  void embed_rows(const Batch& batch, int b0, int nb, int r0, int n);
  void rwkv_forward_blocks(int Tn);
  void rwkv_backward_blocks(int Tn);
  // the head on the scored rows of lnf_out_, the loss and the statistics (forward's tail)
  double head_forward(const Batch& batch);
  // The activation layout: every buffer below, carved in one fixed order (counted, then bound).
  void bind_activations(Carver<T>& f, Carver<int32_t>& ip, Carver<uint8_t>& bp);
  // Dropout masks of local samples [b0, b0 + nb) for one site: keep (B, per_sample), keyed by global
  // sample.
  void dropout_masks(uint8_t* keep, int site, int64_t per_sample, int b0, int nb) const;
  int dropout_sites() const { return 1 + 5 * cfg_.layers; }
  T* p(int tensor) { return params.data() + table_[tensor].offset; }
  T* g(int tensor) { return grads.data() + table_[tensor].offset; }
  // Gradient of a tensor for local shard s: replicated tensors accumulate per shard (summed over
  // shards at the end of backward), experts straight into grads.
  T* gs(int tensor, int s) {
    const TensorInfo& t = table_[tensor];
    return (t.replicated() && !shard_grads_.empty() ? shard_grads_[static_cast<size_t>(s)].data() : grads.data()) + t.offset;
  }
  int nshards() const { return static_cast<int>(shard_b_.size()) - 1; }
  nn::MoeWeights<T> moe_weights(const Layer& L, std::vector<T>& buf);
  nn::MoeDims moe_dims(int N) const;

  ModelConfig cfg_;
  int Bcap_, Scap_;
  std::unique_ptr<Parallel> own_par_;
  Parallel* par_;
  std::vector<std::vector<T>> shard_grads_;  // (local shards)(table.total()) when S > 1
  std::vector<const T*> shard_ptrs_;
  std::vector<std::pair<int64_t, int64_t>> replicated_;
  ShardSum<T> shard_sum_;
  std::vector<int32_t> shard_b_, shard_tok_, shard_scored_;  // (local shards + 1) sample / token / scored offsets
  // expert parallel (P > 1): per MoE layer, the exchange and the owner-side rows of its experts
  struct Owned {
    std::vector<T> xs, h, act, ys;
  };
  std::vector<ExpertExchange> xch_;
  std::vector<Owned> owned_;
  std::vector<T> own_dys_, own_dxs_;
  std::vector<nn::MoeWeights<T>> router_grads_;
  std::vector<double> layer_rows_;  // (layers) active expert rows of the global batch
  ParamTable table_;
  int wte_, wpe_, lnf_w_, lnf_b_, head_w_;  // head_w_ == wte_ when tied; image: wte_ = patch weight
  int patch_b_ = -1, cls_ = -1, head_b_ = -1;  // image: patch bias; class token and head bias (cls_token)
  T* patches_ = nullptr;  // image: (B,P,p*p)
  T* patch_emb_ = nullptr;  // image with class token: (B,P,C) the patch projections
  std::vector<uint8_t> barena_;
  uint8_t* emb_keep_ = nullptr;  // dropout on the embedding output (B,T,C)
  T* dmask_ = nullptr;           // dropout backward scratch (B,T,C)
  T* dq_ = nullptr;              // pilf with routing backward: (B,C)
  int ln0_w_ = -1, ln0_b_ = -1;  // rwkv7: the first layer's extra LayerNorm (the residual stream becomes ln0(emb))
  T *x0n_ = nullptr, *ln0_mean_ = nullptr, *ln0_rstd_ = nullptr, *vfirst_ = nullptr, *dvfirst_ = nullptr;  // rwkv7
  std::vector<std::vector<T>> rscratch_;  // rwkv7 backward scratch, one per thread (sized at the first backward)
  bool drop_ = false;            // the last forward applied dropout
  uint64_t seed_ = 0;
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
  int B_ = 0, n_scored_ = 0, samples_scored_ = 0, scored_global_ = 0, samples_global_ = 0;
  double entropy_mean_ = 0.0;
  std::vector<double> entropies_;  // (Scap) output entropy of each scored row of the last forward
  std::vector<double> shard_stats_;
  double accuracy_ = 0.0, correct_ = 0.0;
  std::vector<int32_t> expert_tokens_;
  MemoryRouter router_;
  MemoryRouterBackward router_backward_;
};

}  // namespace hyperrnn
