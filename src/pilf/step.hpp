// The hyper-transition theta_t = f(theta_{t-1}, batch_t) of PILF-2 (docs/pilf.md, the loop as the
// reference's code runs it): forward, backward, PI assessment (epsilon, tau, surprise split into
// expert and gating groups), Surprise-Min-K filtering per MoE layer (dropped experts zeroed and
// still stepped, or frozen), optional PILR learning-rate modulation, optional global-norm clip,
// Adam(W) with per-group rates, then (model pilf) experience curation into the routing buffer (one
// shared by all MoE layers, or one per layer) and meta-training of the GatingTransformer on replay
// sets. Leaves out: data (the session fills the batch), I/O.
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
// What SMK does to a dropped expert that received tokens: Step = its gradient is zeroed and the
// optimizer still steps it (it moves by its momentum, its moments and step count advance; an
// expert without tokens has no gradient and is left alone), as the reference's grad.zero_() before
// torch.optim.Adam.step(); Freeze = the optimizer leaves it alone entirely.
enum class SmkDropped { Step, Freeze };
// Where meta-training's replay set comes from: TaskEpoch = drawn (buffer-size items) at the first
// meta step of each (task, epoch) and reused whenever that pair comes again, in later cycles too
// (the reference's cache); Epoch = drawn anew at the first meta step of every epoch (the repaired
// cache); Fresh = every meta step draws its own.
enum class MetaReplay { Fresh, Epoch, TaskEpoch };

// Every PILF knob. The defaults here are the `hyperrnn` profile's; `--pilf-profile reference`
// (options.cpp, docs/pilf.md) sets the reference's.
struct PilfConfig {
  pilf::PiConfig pi;
  // surprise adds the task loss's gradient at pilf's routing distributions (mu, log_sigma) to the
  // parameter gradients (the reference: parameter gradients only)
  bool surprise_routing = true;
  PilrMode pilr = PilrMode::Off;
  pilf::PilrConfig pilr_cfg;  // both groups' adaptors use these knobs
  pilf::SmkMode smk = pilf::SmkMode::Off;
  int min_k = 2;
  SmkDropped smk_dropped = SmkDropped::Freeze;
  // Beyond the reference (off = the spec): rank experts by gradient norm per routed token, so that
  // SMK does not systematically keep the least-used experts (docs/results.md, PILF benchmark 1).
  bool smk_per_token = false;
  // memory-Gaussian routing (model pilf)
  bool gating_backprop = false;  // the task loss's routing gradient flows through the GatingTransformer into q
  bool shared_buffer = false;    // one buffer for all MoE layers (actions over layers x experts)
  int buffer_capacity = 128;
  double priority_decay = 0.99;
  bool curate_batch_pi = false;     // every sample's priority is 1 - the batch's PI (else its own PI)
  bool curate_without_smk = true;   // with SMK off, curate with the action "every expert" (else nothing)
  int history = 10;             // k_hist, retrieved q's per query
  int gating_layers = 2;
  int gating_heads = 4;
  double gating_dropout = 0.0;  // the GatingTransformer's dropout in training (routing and meta-training)
  int meta_every = 10;          // meta-training interval in steps
  MetaReplay meta_replay = MetaReplay::Fresh;
  int meta_batch = 64;          // replay items per draw, with replacement; 0 = the buffer's size
  bool meta_loss_mean = false;  // the meta loss is the mean over MoE layers (else their sum)
  double meta_lr = 1e-3;        // GatingTransformer Adam(W) rate before PILR's modulation
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
  std::vector<int> buffer_size, prototypes;  // (buffers: one, or one per MoE layer), model pilf
  bool meta = false;  // a meta-training step ran
  double gating_loss = std::numeric_limits<double>::quiet_NaN();
  double routing_acc = std::numeric_limits<double>::quiet_NaN();
  double k_mean = 0.0;  // experts per token, mean over tokens and MoE layers
  double optimizer_s = 0.0;  // time in clipping and AdamW (the timing split; not part of theta)
  // model pilf: routing (the GatingTransformer's forward), curation, dynamic-k statistics and
  // meta-training, without their collectives (timing split)
  double pilf_s = 0.0;
};

// The state PILF adds to theta: PILR statistics, and for model pilf the GatingTransformer with
// its own Adam(W), the experience buffer(s), the cached replay sets and the dynamic top-k
// statistics.
template <class T>
class PilfState {
 public:
  PilfState(const PilfConfig& cfg, const ModelConfig& mc, int batch_capacity, uint64_t seed,
            const nn::AdamWConfig& gating_adamw);
  // Installs the memory router (and, with gating_backprop, its backward) on a pilf model (no-op
  // for other kinds).
  void attach(Transformer<T>& model);

  const PilfConfig cfg;
  double route_s = 0.0;  // this step's time in routing (timing split; reset by train_step)
  const ModelConfig mc;
  const uint64_t seed;
  pilf::PilrAdaptor pilr_expert, pilr_gating;  // single mode uses pilr_expert for the global surprise
  std::unique_ptr<GatingTransformer<T>> gating;
  std::unique_ptr<nn::AdamW<T>> gating_opt;
  std::vector<pilf::ExperienceBuffer> buffers;  // one (shared_buffer) or one per MoE layer
  std::vector<double> rs_mu, rs_var;  // (MoE layers) dynamic top-k: routing-surprise EMA
  int64_t rs_steps = 0;               // steps that updated them (dynamic top-k on)
  int buffer_of(int layer) const { return cfg.shared_buffer ? 0 : layer; }
  // the layer's columns in its buffer's action rows
  int action_offset(int layer) const { return cfg.shared_buffer ? layer * mc.experts : 0; }

  // Where the coming step is in the schedule (set by the session before each step): the task it
  // trains, which visit of a task it is (marathons repeat tasks), and its epoch within the visit
  // (from 1). They key the meta-training replay sets.
  int task = 0;
  int64_t visit = 0, epoch = 1;
  // A replay set: items drawn from a buffer (copies of their q and action, and their slots for the
  // priority decay), cached under key (task, epoch) or (visit, epoch).
  struct ReplaySet {
    int64_t key_a = 0, key_b = 0;
    std::vector<float> q;          // (n, C)
    std::vector<uint8_t> action;   // (n, the buffer's action width)
    std::vector<int> idx;          // (n)
    int size() const { return static_cast<int>(idx.size()); }
  };
  std::vector<std::vector<ReplaySet>> replay;  // (buffers) cached sets (task-epoch: every key seen; epoch: the current)
  // The replay set of buffer k for meta step `step` (drawn, or found in the cache).
  const ReplaySet& replay_set(int k, int64_t step);

  // Dynamic top-k rule: r = -max_e s_e(q) / C (per-channel negative log-likelihood of the sample's
  // mean input under its best-matching expert Gaussian), z = (r - mu) / sqrt(var + 1e-9) against
  // the layer's running statistics, k = k_min + round((top_k - k_min) Phi(z)) with Phi the standard
  // normal CDF: a typical sample gets the middle of the range, surprising ones more experts.
  int dynamic_k(double r, int layer) const;

  // GEMM FLOPs the PILF machinery adds to a step of B samples: the GatingTransformer's forward per
  // MoE layer (3x with gating_backprop: recomputed, then its backward to q), and on a
  // meta-training step its forward + backward (3x) on the replay items (meta_batch, or the buffer's
  // size: the reference's replay set).
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
    std::vector<uint8_t> skip, action, keep, taken, bank_skip;
    std::vector<double> eps, tau, pi;
    pilf::GradNorms gn;
    std::vector<ReplaySet> fresh;  // (buffers) the replay sets of a Fresh draw
    // the routing pass of the last forward (gating_backprop recomputes it in backward): per MoE
    // layer this rank's q and retrieved histories in T, and the dropout key
    std::vector<std::vector<T>> route_q, route_hist;
    int64_t route_step = -1, route_first = 0;
  } s;

 // The rank's threads (src/parallel/threads.hpp) work on copies of the GatingTransformer with the
  // same parameters (copied by sync_workers), one per thread, and their own scratch: the routing
  // pass one canonical shard per work item (thread 0 routes with `gating` itself), meta-training one
  // chunk of kMetaChunk replay items per work item (every thread on its copy, whose gradient is the
  // chunk's; the chunks' gradients are then added in chunk order).
  static constexpr int kMetaChunk = 16;
  struct ThreadScratch {
    std::vector<float> histf;
    std::vector<T> sc_w, sc_m, sc_c, sc_sq, sc_ec, scores, dscores, dq, route_out, qt, hist, mu_ls, dmu_ls;
    std::vector<uint8_t> taken;
  };
  void sync_workers(bool routing);  // routing: the copies threads 1.. use; else all (meta-training)
  GatingTransformer<T>& worker(int w) { return *workers_[static_cast<size_t>(w)]; }
  ThreadScratch& thread_scratch(int w) { return scratch_[static_cast<size_t>(w)]; }
  std::vector<std::vector<T>> meta_chunk_grads;  // (chunks)(one bank's parameters)

 private:
  std::vector<std::unique_ptr<GatingTransformer<T>>> workers_;
  std::vector<ThreadScratch> scratch_;
  void route(int layer, const std::vector<typename Transformer<T>::RouteShard>& shards);
  void route_shard(int layer, const typename Transformer<T>::RouteShard& sh, int w);
  void route_backward(int layer, const std::vector<typename Transformer<T>::RouteGradShard>& shards);
  int batch_capacity_ = 0;
};

// One hyper-step on `batch` (training step index `step`, from 0). A step whose loss or gradient
// norm is NaN or Inf changes nothing (parameters, moments, the optimizer's step count, PILR
// statistics, buffers) and reports skipped = true.
template <class T>
StepStats train_step(Transformer<T>& model, nn::AdamW<T>& opt, const Batch& batch, const StepConfig& sc,
                     int64_t step, PilfState<T>* ps = nullptr);

}  // namespace hyperrnn
