// The hyper-transition theta_t = f(theta_{t-1}, batch_t) of PILF-2 (../shared/reference/pilf.md):
// forward, backward, PI assessment (epsilon, tau, surprise split into expert and gating groups),
// Surprise-Min-K filtering per MoE layer, PILR learning-rate modulation (off, single, dual),
// global-norm clip, AdamW with per-group rates and SMK skips, then (model pilf) experience
// curation into each MoE layer's routing buffer and, every meta_every steps, meta-training of the
// GatingTransformer on buffer samples. Leaves out: data (the session fills the batch), I/O.
#pragma once
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "core/batch.hpp"
#include "models/gating_transformer.hpp"
#include "models/transformer.hpp"
#include "nn/adamw.hpp"
#include "pilf/assessment.hpp"
#include "pilf/experience_buffer.hpp"
#include "pilf/pilr.hpp"
#include "pilf/smk.hpp"

namespace hyperrnn {

struct StepConfig {
  int64_t total_steps = 1;
  int64_t warmup = 0;
  double lr = 1e-3;
  double lr_min_ratio = 0.1;
  double grad_clip = 1.0;  // 0 = off
  double gating_lr = 0.0;  // peak rate of the gating group (router parameters); 0 = lr
};

enum class PilrMode { Off, Single, Dual };

// Every PILF knob, with the reference's defaults where it has one (docs/architecture.md lists
// which defaults are ours).
struct PilfConfig {
  pilf::PiConfig pi;
  PilrMode pilr = PilrMode::Off;
  pilf::PilrConfig pilr_cfg;  // both groups' adaptors use these knobs
  pilf::SmkMode smk = pilf::SmkMode::Off;
  int min_k = 2;
  // Beyond the reference (off = the spec): rank experts by gradient norm per routed token, so that
  // SMK does not systematically keep the least-used experts (docs/results.md, PILF benchmark 1).
  bool smk_per_token = false;
  // memory-Gaussian routing (model pilf)
  int buffer_capacity = 128;
  double priority_decay = 0.99;
  int history = 10;             // k_hist, retrieved q's per query
  int gating_layers = 2;
  int gating_heads = 4;
  int meta_every = 10;          // meta-training interval in steps
  int meta_batch = 64;          // buffer samples per meta step (drawn with replacement)
  double meta_lr = 1e-3;        // GatingTransformer AdamW rate before PILR's modulation
  // dynamic top-k (model pilf): k per sample in [k_min, top_k], see dynamic_k()
  bool dynamic_top_k = false;
  int k_min = 1;
};

struct StepStats {
  double loss = 0.0;
  double acc = 0.0;
  double grad_norm = 0.0;  // of the main model's parameters, before clipping
  double lr = 0.0;         // the scheduled rate before PILR's modulation
  bool skipped = false;    // loss or gradients were not finite: nothing was updated
  // PI assessment
  double epsilon = 0.0, tau = 0.0, surprise = 0.0, expert_surprise = 0.0, gating_surprise = 0.0, pi = 0.0;
  double lr_mod_expert = 1.0, lr_mod_gating = 1.0;  // single mode: both equal
  std::vector<uint32_t> smk_mask;  // (MoE layers) bit e set = expert e's update kept
  std::vector<int> buffer_size, prototypes;  // (MoE layers), model pilf
  bool meta = false;  // a meta-training step ran
  double gating_loss = std::numeric_limits<double>::quiet_NaN();
  double routing_acc = std::numeric_limits<double>::quiet_NaN();
  double k_mean = 0.0;  // experts per token, mean over tokens and MoE layers
  double optimizer_s = 0.0;  // time in clipping and AdamW (the timing split; not part of theta)
};

// The state PILF adds to theta: PILR statistics, and for model pilf the GatingTransformer with
// its own AdamW, one experience buffer per MoE layer and the dynamic top-k statistics.
template <class T>
class PilfState {
 public:
  PilfState(const PilfConfig& cfg, const ModelConfig& mc, int batch_capacity, uint64_t seed,
            const nn::AdamWConfig& gating_adamw);
  // Installs the memory router on a pilf model (no-op for other kinds).
  void attach(Transformer<T>& model);

  const PilfConfig cfg;
  const ModelConfig mc;
  const uint64_t seed;
  pilf::PilrAdaptor pilr_expert, pilr_gating;  // single mode uses pilr_expert for the global surprise
  std::unique_ptr<GatingTransformer<T>> gating;
  std::unique_ptr<nn::AdamW<T>> gating_opt;
  std::vector<pilf::ExperienceBuffer> buffers;
  std::vector<double> rs_mu, rs_var;  // (MoE layers) dynamic top-k: routing-surprise EMA
  int64_t rs_steps = 0;               // steps that updated them (dynamic top-k on)

  // Dynamic top-k rule: r = -max_e s_e(q) / C (per-channel negative log-likelihood of the sample's
  // mean input under its best-matching expert Gaussian), z = (r - mu) / sqrt(var + 1e-9) against
  // the layer's running statistics, k = k_min + round((top_k - k_min) Phi(z)) with Phi the standard
  // normal CDF: a typical sample gets the middle of the range, surprising ones more experts.
  int dynamic_k(double r, int layer) const;

  // GEMM FLOPs the PILF machinery adds to a step of B samples: the GatingTransformer's forward per
  // MoE layer, and on a meta-training step its forward + backward (3x) on meta_batch items.
  double step_flops(int B, bool meta) const;

  // internals shared with train_step
  struct Scratch {
    std::vector<std::vector<float>> q;   // (layers)(B,C) the last forward's q of this rank's samples, float
    std::vector<std::vector<double>> r;  // (layers)(B) routing surprise of each sample (dynamic top-k)
    std::vector<float> q_all;            // (global B, C) one layer's q of every rank, rank order
    std::vector<double> r_all, sample_local, sample_all;  // global batch: routing surprise; (eps, tau) pairs
    std::vector<double> sq;              // (tensors) gradient sums of squares
    std::vector<double> shard_part;      // (local shards) routing-gradient sums of squares
    std::vector<float> qf, histf;
    std::vector<T> qt, hist, mu_ls, dmu_ls, sc_w, sc_m, sc_c, sc_sq, sc_ec, scores, dscores, dq;
    std::vector<uint8_t> skip, action, keep, taken;
    std::vector<std::vector<int>> drawn;  // (layers) replayed buffer indices of a meta step
    std::vector<double> eps, tau, pi;
    pilf::GradNorms gn;
  } s;

 private:
  void route(int layer, int first, const T* q, int B, T* mu_ls, int32_t* k);
};

// One hyper-step on `batch` (training step index `step`, from 0). A step whose loss or gradient
// norm is NaN or Inf changes nothing (parameters, moments, the optimizer's step count, PILR
// statistics, buffers) and reports skipped = true.
template <class T>
StepStats train_step(Transformer<T>& model, nn::AdamW<T>& opt, const Batch& batch, const StepConfig& sc,
                     int64_t step, PilfState<T>* ps = nullptr);

}  // namespace hyperrnn
