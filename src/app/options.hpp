// The `hyperrnn` command line: one option table (Boost.Program_options) shared by the command line
// and the INI file, validation of every value with a one-line reason, and the effective
// configuration written as config.ini. Leaves out: what the options do (train.cpp, eval.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/transformer.hpp"
#include "nn/adamw.hpp"
#include "pilf/step.hpp"
#include "tasks/mqar.hpp"

namespace hyperrnn {

struct RunConfig {
  // model
  std::string model = "gauss-moe";
  int64_t d_model = 64, layers = 2, heads = 4, experts = 4, top_k = 2, d_ff = 0;
  bool tie_embeddings = true;
  double init_scale = 1.0, embed_init_std = 1.0;
  double dropout = 0.0;
  std::string vit_pool = "mean";  // image tasks: mean (over the tokens) | cls (class token, the reference ViT)
  // rwkv7 (docs/rwkv7.md): head size N (heads = d-model / N), low-rank sizes (0 = the reference's
  // formula), wkv state checkpoint interval, optional parts, L2Wrap factor
  int64_t head_size = 64, rwkv_decay_rank = 0, rwkv_a_rank = 0, rwkv_value_rank = 0, rwkv_gate_rank = 0, rwkv_chunk = 16;
  bool value_residual = true, output_gate = true, channel_mix = true;
  double l2wrap = 1e-4;
  // task
  std::string task = "mqar";
  // The defaults are the embedded quick-start job (README): an MQAR run that reaches >= 0.99
  // held-out accuracy in about two minutes on two cores (0.9988 measured, docs/performance.md).
  int64_t vocab = 256, seq_len = 32, kv_pairs = 4;
  double mqar_power_a = 0.01;
  std::string mqar_filler = "random";
  // image tasks (fmnist, fmnist-marathon)
  std::string fmnist_dir = "/usr/share/datasets/fashion-mnist";
  int64_t patch = 4, task_steps = 500, classes_per_task = 2;
  std::string marathon_head = "task";
  // training
  int64_t batch = 64, shards = 1, steps = 3000, warmup = 100;
  // --shards as given: "auto" (gcd(batch, kAutoShards), independent of ranks and threads) or a
  // count; parse_options and from_ini resolve it into `shards` (config.ini records the number).
  std::string shards_opt = "auto";
  static constexpr int64_t kAutoShards = 8;
  std::string reduction = "exact";
  // subnormal floats: "flush" (FTZ/DAZ on every thread of the run) or "keep" (IEEE); part of the
  // run's identity, since flushed values differ from gradual underflow (docs/performance.md)
  std::string denormals = "flush";
  double lr = 3e-3, lr_min_ratio = 0.1, weight_decay = 0.1, grad_clip = 1.0, gating_lr = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  uint64_t seed = 1;
  int64_t eval_every = 250, eval_samples = 1000, log_every = 0;
  int64_t max_bad_steps = 10;  // consecutive non-finite steps before the run stops
  std::string out;  // default derived from model, task and seed
  // snapshots (invocation options: not part of the run's identity in config.ini)
  int64_t snapshot_every = 1000, keep = 0, stop_after = 0;
  std::string resume;  // "", "auto" or a snapshot path
  std::string stop_signal = "SIGUSR2";
  bool dry_run = false;  // check options, layout, run directory and memory; write nothing
  int64_t dry_ranks = 0;  // --ranks with --dry-run: the rank count to check for (0 = this launch's)
  double time_budget = 0.0;  // seconds this invocation may run (0 = none; Slurm's job end time when set)  // with SIGTERM and SIGINT: finish the step, snapshot, exit 75
  // branching: theta (and optionally the optimizer state) from a snapshot; part of the identity
  std::string init_from;
  bool init_optimizer = false;
  // threads per rank (an invocation option of every command): "auto" = the cores of the rank's
  // affinity mask, or a positive count. Results do not depend on it (docs/architecture.md).
  std::string threads = "auto";
  // where the step runs (an invocation option, like threads): cpu | cuda (src/cuda, docs/gpu.md)
  std::string device = "cpu";
  // PILF (docs/pilf.md). For model pilf, --pilf-profile sets every option of profile_knobs() that
  // was not given (reference: PILF-2 as its code runs; hyperrnn: our choices, the defaults below);
  // "auto" = the profile's choice for pilf, off for the other models.
  std::string pilf_profile = "reference";
  double pi_alpha = 1.0, pi_gamma = 0.5;
  std::string pi_form = "published";
  bool surprise_routing = true;
  std::string pilr = "auto";
  double pilr_beta = 0.1, pilr_initial_var = 1.0, pilr_power = 0.5, pilr_exponent = 2.0, pilr_inverse_k = 0.1;
  bool pilr_inverse_ema = false;
  int64_t pilr_warmup = 0;
  std::string smk = "auto";
  int64_t min_k = 2;
  std::string smk_dropped = "freeze";
  bool smk_per_token = false;
  bool gating_backprop = false;
  std::string buffer = "per-layer";
  std::string curation_pi = "sample", curation = "always";
  int64_t buffer_capacity = 128, history = 10, gating_layers = 2, gating_heads = 4;
  double priority_decay = 0.99, meta_lr = 1e-3, gating_dropout = 0.0;
  int64_t meta_every = 10, meta_batch = 64, epoch_steps = 0;
  std::string meta_replay = "fresh", meta_loss = "sum";
  bool dynamic_top_k = false;
  int64_t k_min = 1;
  // eval subcommand
  std::string snapshot;
  std::string eval_csv;  // "" = RUN/eval-snapshots.csv, "-" = none
  bool eval_recurrent = false;  // eval --recurrent (rwkv7): token by token
  // bench subcommand
  int64_t bench_steps = 20, bench_repeats = 5;
  bool bench_comm = false;  // bench --comm: the collectives' latency and bandwidth instead of the model

  ModelConfig model_config() const;
  MqarConfig mqar_config() const;
  bool image_task() const { return task == "fmnist" || task == "fmnist-marathon"; }
  // Scored positions per batch of B samples (MQAR: the queries; images: one label per sample).
  int64_t scored_per_batch(int64_t B) const { return image_task() ? B : B * kv_pairs; }
  // Positions per sample the model sees (MQAR: seq-len; images: patches).
  int64_t positions() const { return image_task() ? (28 / patch) * (28 / patch) + (vit_pool == "cls" ? 1 : 0) : seq_len; }
  StepConfig step_config() const;
  nn::AdamWConfig adamw_config() const;
  PilfConfig pilf_config() const;
};

enum class Command { Train, Eval, Bench };

// Parses argv (after the subcommand) and the optional --config file; validates. Throws UsageError
// with one line naming the option and the reason. Returns false when --help was asked for (printed
// only when print_help: rank 0 of a multi-rank job).
bool parse_options(Command cmd, int argc, const char* const* argv, RunConfig& cfg, bool print_help = true);

// Checks every value (also used on a configuration read back from a snapshot).
void validate(const RunConfig& cfg);

// --pilf-profile: the options a profile sets (for model pilf, when not given), with the value of
// each profile.
struct ProfileKnob {
  const char* option;
  const char* reference;
  const char* hyperrnn;
};
const std::vector<ProfileKnob>& profile_knobs();
// The options of a pilf run whose values differ from its profile's ("option = value (profile:
// value)"), for the run's first lines: explicit options win over the profile.
std::vector<std::string> profile_deviations(const RunConfig& cfg);

// Checks the layout against the number of ranks: P must divide --shards, and MoE models need at
// least one expert per rank. UsageError naming the option.
void validate_layout(const RunConfig& cfg, int ranks);

// The effective configuration as INI text (every option that defines the run, round-trip exact).
std::string to_ini(const RunConfig& cfg);
// Reads INI text produced by to_ini (e.g. from a snapshot); validates.
RunConfig from_ini(const std::string& text, const std::string& origin);

// --shards resolved: auto = gcd(batch, kAutoShards), or the count given (UsageError otherwise).
void resolve_shards(RunConfig& c);

// --threads resolved for this rank: the count given, or the cores of its affinity mask (auto).
// UsageError for anything but auto or a positive integer; warning (when not null) is set to one
// line when the count exceeds the cores of the mask (allowed: results do not depend on it).
int resolve_threads(const std::string& threads, std::string* warning = nullptr);

// What one rank needs in memory for this run (bytes, an estimate: parameters with gradients, Adam
// moments and per-shard gradient copies; the activation arena), and what this machine has
// (MemAvailable, or the cgroup's limit when lower; 0 = unknown).
struct MemoryEstimate {
  double params = 0, activations = 0, total = 0;
};
MemoryEstimate estimate_memory(const RunConfig& c, int ranks);
double available_memory_bytes();

// The general help text.
std::string usage_text();

}  // namespace hyperrnn
