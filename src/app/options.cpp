// Option table, parsing, validation and INI round trip.
#include "app/options.hpp"

#include <boost/program_options.hpp>

#include <algorithm>
#include <climits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>

#include "core/error.hpp"
#include "io/csv.hpp"
#include "cuda/device.hpp"
#include "parallel/threads.hpp"
#include "app/signals.hpp"

namespace po = boost::program_options;

namespace hyperrnn {

namespace {

std::string fmt_double(double v) { return format_roundtrip(v); }

// The single option table. `identity` options define the run (written to config.ini and compared
// when --out already exists); the others only steer this invocation.
void add_model_task_train(po::options_description& d, RunConfig& c) {
  d.add_options()
    ("model", po::value(&c.model)->default_value(c.model), "model: dense | moe | gauss-moe | pilf | rwkv7")
    ("d-model", po::value(&c.d_model)->default_value(c.d_model), "model width C")
    ("layers", po::value(&c.layers)->default_value(c.layers), "Transformer blocks")
    ("heads", po::value(&c.heads)->default_value(c.heads), "attention heads (must divide d-model)")
    ("experts", po::value(&c.experts)->default_value(c.experts), "experts per MoE layer")
    ("top-k", po::value(&c.top_k)->default_value(c.top_k), "experts chosen per token")
    ("d-ff", po::value(&c.d_ff)->default_value(c.d_ff), "FFN / expert hidden width (0 = 4 * d-model)")
    ("init-scale", po::value(&c.init_scale)->default_value(c.init_scale, fmt_double(c.init_scale)), "weight matrices start as N(0, init-scale^2 / (2 fan_in))")
    ("embed-init-std", po::value(&c.embed_init_std)->default_value(c.embed_init_std, fmt_double(c.embed_init_std)), "std of the token and position embeddings at initialisation")
    ("tie-embeddings", po::value(&c.tie_embeddings)->default_value(c.tie_embeddings), "output head shares the token embedding (true | false)")
    ("dropout", po::value(&c.dropout)->default_value(c.dropout, fmt_double(c.dropout)), "dropout probability in [0, 1) at the reference ViT's sites (embedding, attention probabilities, attention and feed-forward branches; dense FFN hidden and output), training only [profile]")
    ("vit-pool", po::value(&c.vit_pool)->default_value(c.vit_pool), "image tasks: what the head reads: mean (the mean over the patch tokens) | cls (a class token, as the reference ViT; its head has a bias) [profile]")
    ("head-size", po::value(&c.head_size)->default_value(c.head_size), "rwkv7: head size N (must divide d-model; heads = d-model / N)")
    ("rwkv-decay-rank", po::value(&c.rwkv_decay_rank)->default_value(c.rwkv_decay_rank), "rwkv7: low-rank size of the decay path in [1, d-model] (0 = the reference's max(32, round(2.5 sqrt(C) / 32) 32), at most C)")
    ("rwkv-a-rank", po::value(&c.rwkv_a_rank)->default_value(c.rwkv_a_rank), "rwkv7: low-rank size of the in-context learning rate path (0 = as the decay's)")
    ("rwkv-value-rank", po::value(&c.rwkv_value_rank)->default_value(c.rwkv_value_rank), "rwkv7: low-rank size of the value-residual path (0 = the reference's, factor 1.7)")
    ("rwkv-gate-rank", po::value(&c.rwkv_gate_rank)->default_value(c.rwkv_gate_rank), "rwkv7: low-rank size of the output gate (0 = the reference's, factor 5)")
    ("rwkv-chunk", po::value(&c.rwkv_chunk)->default_value(c.rwkv_chunk), "rwkv7: tokens between checkpoints of the wkv state in training, in [1, seq-len] (memory per sequence against recompute; results do not depend on it)")
    ("value-residual", po::value(&c.value_residual)->default_value(c.value_residual), "rwkv7: layers >= 1 mix in the first layer's values (true | false)")
    ("output-gate", po::value(&c.output_gate)->default_value(c.output_gate), "rwkv7: the time mix's output gate (true | false)")
    ("channel-mix", po::value(&c.channel_mix)->default_value(c.channel_mix), "rwkv7: the channel mix (squared-ReLU FFN of width d-ff) after each time mix (true | false; Zoology's MQAR models have none)")
    ("l2wrap", po::value(&c.l2wrap)->default_value(c.l2wrap, fmt_double(c.l2wrap)), "rwkv7: L2Wrap factor of the reference's loss (adds factor x max logit to the gradient at each scored row's largest logit; 0 = plain cross-entropy)")
    ("task", po::value(&c.task)->default_value(c.task), "task: mqar | fmnist | fmnist-marathon")
    ("fmnist-dir", po::value(&c.fmnist_dir)->default_value(c.fmnist_dir), "directory of the Fashion-MNIST IDX files (Debian: apt-get install dataset-fashion-mnist)")
    ("patch", po::value(&c.patch)->default_value(c.patch), "image tasks: ViT patch size (must divide 28)")
    ("task-steps", po::value(&c.task_steps)->default_value(c.task_steps), "fmnist-marathon: training steps per task before the next one (and a validation pass)")
    ("classes-per-task", po::value(&c.classes_per_task)->default_value(c.classes_per_task), "fmnist-marathon: consecutive classes per task (must divide 10)")
    ("marathon-head", po::value(&c.marathon_head)->default_value(c.marathon_head), "fmnist-marathon: task (only the task's classes compete, task-incremental) | class (all 10, class-incremental)")
    ("vocab", po::value(&c.vocab)->default_value(c.vocab), "vocabulary size V (> seq-len)")
    ("seq-len", po::value(&c.seq_len)->default_value(c.seq_len), "sequence length L")
    ("kv-pairs", po::value(&c.kv_pairs)->default_value(c.kv_pairs), "MQAR key-value pairs D (4D <= L)")
    ("mqar-power-a", po::value(&c.mqar_power_a)->default_value(c.mqar_power_a, fmt_double(c.mqar_power_a)), "MQAR query-gap power law a")
    ("mqar-filler", po::value(&c.mqar_filler)->default_value(c.mqar_filler), "MQAR filler tokens: random | zero")
    ("batch", po::value(&c.batch)->default_value(c.batch), "global samples per step")
    ("shards", po::value(&c.shards_opt)->default_value(c.shards_opt), "canonical batch shards S: the global batch is cut into S equal shards, each rank runs S/P of them and its threads take them one at a time (the rank count P must divide S; results depend on S, never on P or --threads); auto = gcd(batch, 8)")
    ("reduction", po::value(&c.reduction)->default_value(c.reduction), "sum of replicated gradients over shards: exact (reproducible, independent of the rank count) | plain (floating-point MPI_Allreduce; benchmark comparison only)")
    ("denormals", po::value(&c.denormals)->default_value(c.denormals), "subnormal floats: flush (results and inputs below 2^-126 in float, 2^-1022 in double, taken as zero: FTZ and DAZ, as TensorFlow's CPU kernels and -ffast-math builds do; subnormal operands are several times slower on x86) | keep (IEEE gradual underflow, as PyTorch does by default)")
    ("steps", po::value(&c.steps)->default_value(c.steps), "training steps")
    ("warmup", po::value(&c.warmup)->default_value(c.warmup), "linear learning-rate warm-up steps")
    ("lr", po::value(&c.lr)->default_value(c.lr, fmt_double(c.lr)), "peak learning rate")
    ("gating-lr", po::value(&c.gating_lr)->default_value(c.gating_lr, fmt_double(c.gating_lr)), "peak learning rate of the gating group (router parameters; 0 = --lr); pilf's GatingTransformer uses --meta-lr")
    ("lr-min-ratio", po::value(&c.lr_min_ratio)->default_value(c.lr_min_ratio, fmt_double(c.lr_min_ratio)), "cosine decay floor as a fraction of --lr")
    ("weight-decay", po::value(&c.weight_decay)->default_value(c.weight_decay, fmt_double(c.weight_decay)), "AdamW decoupled weight decay (matrices only)")
    ("grad-clip", po::value(&c.grad_clip)->default_value(c.grad_clip, fmt_double(c.grad_clip)), "global gradient-norm clip (0 = off)")
    ("adam-beta1", po::value(&c.adam_beta1)->default_value(c.adam_beta1, fmt_double(c.adam_beta1)), "AdamW beta1")
    ("adam-beta2", po::value(&c.adam_beta2)->default_value(c.adam_beta2, fmt_double(c.adam_beta2)), "AdamW beta2")
    ("adam-eps", po::value(&c.adam_eps)->default_value(c.adam_eps, fmt_double(c.adam_eps)), "AdamW epsilon")
    ("seed", po::value(&c.seed)->default_value(c.seed), "seed of every random stream")
    ("init-from", po::value(&c.init_from)->default_value(c.init_from), "start theta from a snapshot (a run directory, snapshot directory or manifest.h5) instead of the initialisation: a new run branched from it, with any configuration whose model shape fits; its provenance goes to RUN/provenance.ini")
    ("init-optimizer", po::value(&c.init_optimizer)->default_value(c.init_optimizer), "with --init-from: also take the optimizer state (Adam moments and step counts) of the model and the GatingTransformer (true | false)")
    ("eval-every", po::value(&c.eval_every)->default_value(c.eval_every), "held-out evaluation interval in steps (0 = only at the end)")
    ("eval-samples", po::value(&c.eval_samples)->default_value(c.eval_samples), "held-out samples per evaluation")
    ("max-bad-steps", po::value(&c.max_bad_steps)->default_value(c.max_bad_steps), "consecutive steps with NaN/Inf loss or gradients (each skipped) before the run stops")
    ("pilf-profile", po::value(&c.pilf_profile)->default_value(c.pilf_profile), "model pilf: reference (PILF-2 as the reference's code runs it) | hyperrnn (our choices); sets every option marked [profile] that is not given (options given explicitly win; docs/pilf.md)")
    ("pi-alpha", po::value(&c.pi_alpha)->default_value(c.pi_alpha, fmt_double(c.pi_alpha)), "PI: alpha (> 0)")
    ("pi-gamma", po::value(&c.pi_gamma)->default_value(c.pi_gamma, fmt_double(c.pi_gamma)), "PI: gamma in [0, 1]")
    ("pi-form", po::value(&c.pi_form)->default_value(c.pi_form), "PI formula: published (IPWT) | reference-code (by gradient group) | reference-loop (as the PILF-2 loop calls it: eps/tau + surprise, gamma unused) [profile]")
    ("surprise-routing", po::value(&c.surprise_routing)->default_value(c.surprise_routing), "pilf: surprise adds the task loss's gradient at the routing Gaussians (mu, log_sigma) to the parameter gradients' (true | false; the reference: false) [profile]")
    ("pilr", po::value(&c.pilr)->default_value(c.pilr), "PILR learning-rate modulation: off | single | dual | auto (single for pilf, else off)")
    ("pilr-beta", po::value(&c.pilr_beta)->default_value(c.pilr_beta, fmt_double(c.pilr_beta)), "PILR: EMA rate beta in (0, 1]")
    ("pilr-initial-var", po::value(&c.pilr_initial_var)->default_value(c.pilr_initial_var, fmt_double(c.pilr_initial_var)), "PILR: initial variance (very large = soft-disabled)")
    ("pilr-power", po::value(&c.pilr_power)->default_value(c.pilr_power, fmt_double(c.pilr_power)), "PILR: lr_mod = exp(-power (|S-mu|/sigma)^exponent)")
    ("pilr-exponent", po::value(&c.pilr_exponent)->default_value(c.pilr_exponent, fmt_double(c.pilr_exponent)), "PILR: exponent")
    ("pilr-inverse-ema", po::value(&c.pilr_inverse_ema)->default_value(c.pilr_inverse_ema), "PILR: inverse-EMA variance target exp(-k |S-mu|) (true | false)")
    ("pilr-inverse-k", po::value(&c.pilr_inverse_k)->default_value(c.pilr_inverse_k, fmt_double(c.pilr_inverse_k)), "PILR: k of the inverse-EMA variant")
    ("pilr-warmup", po::value(&c.pilr_warmup)->default_value(c.pilr_warmup), "PILR: steps with lr_mod 1 while the statistics adapt")
    ("smk", po::value(&c.smk)->default_value(c.smk), "Surprise-Min-K gradient filter: off | smk | asmk | auto (smk for pilf, else off)")
    ("min-k", po::value(&c.min_k)->default_value(c.min_k), "SMK: experts per MoE layer whose update is kept")
    ("smk-dropped", po::value(&c.smk_dropped)->default_value(c.smk_dropped), "SMK: a dropped expert that received tokens: step (its gradient is zeroed and the optimizer still steps it: it moves by momentum, as the reference) | freeze (left alone) [profile]")
    ("smk-per-token", po::value(&c.smk_per_token)->default_value(c.smk_per_token), "SMK research variant: rank experts by gradient norm per routed token (true | false; false = the reference)")
    ("gating-backprop", po::value(&c.gating_backprop)->default_value(c.gating_backprop), "pilf: the task loss's gradient at the routing Gaussians flows back through the GatingTransformer into q and the backbone (true, the reference: q is not detached) | false [profile]")
    ("buffer", po::value(&c.buffer)->default_value(c.buffer), "pilf: routing experience buffer: shared (one for all MoE layers, actions over layers x experts, as the reference) | per-layer (one per MoE layer) [profile]")
    ("buffer-capacity", po::value(&c.buffer_capacity)->default_value(c.buffer_capacity), "pilf: routing experience buffer capacity (of each buffer)")
    ("curation-pi", po::value(&c.curation_pi)->default_value(c.curation_pi), "pilf: a candidate's priority 1 - PI with PI of the batch (batch, the reference) | of the sample's own loss and entropy (sample) [profile]")
    ("curation", po::value(&c.curation)->default_value(c.curation), "pilf: curate experience only with SMK on (smk, the reference: the SMK set is the action) | also with SMK off, the action every expert (always) [profile]")
    ("priority-decay", po::value(&c.priority_decay)->default_value(c.priority_decay, fmt_double(c.priority_decay)), "pilf: priority factor after a replay, in (0, 1]")
    ("history", po::value(&c.history)->default_value(c.history), "pilf: retrieved history rows per query (k_hist)")
    ("gating-layers", po::value(&c.gating_layers)->default_value(c.gating_layers), "pilf: GatingTransformer decoder layers")
    ("gating-heads", po::value(&c.gating_heads)->default_value(c.gating_heads), "pilf: GatingTransformer heads (must divide d-model)")
    ("gating-dropout", po::value(&c.gating_dropout)->default_value(c.gating_dropout, fmt_double(c.gating_dropout)), "pilf: GatingTransformer dropout in [0, 1), training only [profile]")
    ("meta-every", po::value(&c.meta_every)->default_value(c.meta_every), "pilf: meta-training interval in steps [profile]")
    ("meta-replay", po::value(&c.meta_replay)->default_value(c.meta_replay), "pilf: meta-training's replay set: task-epoch (drawn once per task and epoch and reused, in later cycles too: the reference) | epoch (drawn anew every epoch) | fresh (drawn every meta step) [profile]")
    ("meta-batch", po::value(&c.meta_batch)->default_value(c.meta_batch), "pilf: items per replay draw, with replacement (0 = the buffer's size at the draw, the reference) [profile]")
    ("meta-loss", po::value(&c.meta_loss)->default_value(c.meta_loss), "pilf: meta-training loss over the MoE layers: mean (the reference) | sum [profile]")
    ("epoch-steps", po::value(&c.epoch_steps)->default_value(c.epoch_steps), "steps per epoch, which key the replay sets (0 = one pass over the task's training images per --batch; MQAR: 100000 examples, Zoology's training set)")
    ("meta-lr", po::value(&c.meta_lr)->default_value(c.meta_lr, fmt_double(c.meta_lr)), "pilf: GatingTransformer AdamW learning rate (times PILR's gating lr_mod)")
    ("dynamic-top-k", po::value(&c.dynamic_top_k)->default_value(c.dynamic_top_k), "pilf: k per sample from its routing surprise, in [k-min, top-k] (true | false)")
    ("k-min", po::value(&c.k_min)->default_value(c.k_min), "pilf dynamic top-k: smallest k");
}

void add_invocation(po::options_description& d, RunConfig& c, Command cmd) {
  d.add_options()("help,h", "print this help and exit")
    ("config", po::value<std::string>(), "INI file with key = value lines (same names as the options)")
    ("threads", po::value(&c.threads)->default_value(c.threads), "threads per rank: auto (the cores of the rank's affinity mask, as the launcher binds it) or a count; results are bitwise the same for every count; not part of the run's identity, free to change on resume")
    ("device", po::value(&c.device)->default_value(c.device), "where the step runs: cpu | cuda (one GPU per rank, chosen by the rank's place on its node; needs a build with -DHYPERRNN_CUDA=ON; docs/gpu.md); not part of the run's identity");
  if (cmd == Command::Train)
    d.add_options()
      ("out", po::value(&c.out), "run directory (default runs/<model>-<task>-s<seed>)")
      ("log-every", po::value(&c.log_every)->default_value(c.log_every), "progress line interval when stdout is not a terminal (0 = steps/20)")
      ("snapshot-every", po::value(&c.snapshot_every)->default_value(c.snapshot_every), "write a snapshot of the whole hyper-state every N steps (0 = only at the end; one is always written at the end)")
      ("keep", po::value(&c.keep)->default_value(c.keep), "keep the newest K complete snapshots, pruning older ones after each new one is complete (0 = keep all)")
      ("resume", po::value(&c.resume), "continue from a snapshot: auto (the newest complete one in --out that verifies, falling back to older ones; a fresh start when there is none) or a snapshot PATH (stop with exit 2 unless it verifies)")
      ("stop-signal", po::value(&c.stop_signal)->default_value(c.stop_signal), "besides SIGTERM and SIGINT, the signal that stops the run after its current step with a snapshot and exit status 75 (resumable with --resume auto); SIGUSR2 by default (NCCL may claim SIGUSR1); a second SIGINT aborts")
      ("time-budget", po::value(&c.time_budget)->default_value(c.time_budget, "0"), "seconds this invocation may run: it stops with a snapshot and exit status 75 when the next step and a snapshot would not fit (0 = no budget; under Slurm the job's end time, SLURM_JOB_END_TIME, sets one)")
      ("stop-after", po::value(&c.stop_after)->default_value(c.stop_after), "stop after step K (the absolute step, beyond a resumed snapshot's) with a snapshot, as a job that runs out of time would (0 = run all --steps); --resume auto continues")
      ("dry-run", po::bool_switch(&c.dry_run), "check the options, the layout for --ranks ranks, the run directory (--out, --resume) and the memory estimate, print what would run, and exit 0 (2 with the reason) without writing anything; one process is enough")
      ("ranks", po::value(&c.dry_ranks)->default_value(c.dry_ranks), "with --dry-run: the rank count to check for (0 = this launch's)");
  else if (cmd == Command::Bench)
    d.add_options()
      ("bench-steps", po::value(&c.bench_steps)->default_value(c.bench_steps), "timed training steps per repeat")
      ("repeats", po::value(&c.bench_repeats)->default_value(c.bench_repeats), "repeats (the median is reported)")
      ("comm", po::bool_switch(&c.bench_comm), "instead of the model: time the collectives the step uses (alltoallv of float rows, the exact shard sum's int64 allreduce, allgather) through the program's own Comm layer at message sizes from 8 B to 2 MiB, and print them as CSV (op,ranks,bytes,seconds: the median over --repeats of the mean over many calls; bytes per peer for alltoallv, per rank for allgather, the whole vector for allreduce)");
  else
    d.add_options()
      ("snapshot", po::value(&c.snapshot), "snapshot directory, its manifest.h5, or a run directory (uses snapshots/latest)")
      ("eval-samples", po::value(&c.eval_samples)->default_value(0), "held-out samples to evaluate (0 = the run's own --eval-samples)")
      ("batch", po::value(&c.batch)->default_value(0), "samples per evaluation batch (0 = the run's --batch; with both defaults eval reproduces the run's own final evaluation exactly)")
      ("csv", po::value(&c.eval_csv), "CSV file the result is appended to (default: eval-snapshots.csv in the snapshot's run directory; - = none)")
      ("recurrent", po::bool_switch(&c.eval_recurrent), "model rwkv7: evaluate one token at a time carrying the recurrent state (O(1) memory and work per token), instead of the parallel training forward; the figures agree to rounding");
}

[[noreturn]] void bad(const std::string& opt, const std::string& why) {
  throw UsageError("option '--" + opt + "': " + why);
}

// Values that the option types would accept but change on the way: a negative number for an
// unsigned option wraps around (--seed -1 would be 2^64 - 1).
void check_tokens(const po::parsed_options& parsed) {
  for (const po::option& o : parsed.options)
    if (o.string_key == "seed")
      for (const std::string& v : o.value)
        if (v.find_first_not_of(" \t") != std::string::npos && v[v.find_first_not_of(" \t")] == '-')
          bad("seed", "must be a non-negative integer, got " + v);
}

void positive(const char* opt, int64_t v) {
  if (v <= 0) bad(opt, "must be a positive integer, got " + std::to_string(v));
  if (v > INT_MAX / 4) bad(opt, "is too large (" + std::to_string(v) + ")");
}
void non_negative(const char* opt, int64_t v) {
  if (v < 0) bad(opt, "must be >= 0, got " + std::to_string(v));
}

// For model pilf: sets every profile option that vm holds only as a default to the profile's value
// (through the option table itself, so the values parse exactly as if they had been given).
void apply_profile(const po::options_description& all, const po::variables_map& vm, RunConfig& c, bool force = false) {
  if (c.model != "pilf") return;
  if (c.pilf_profile != "reference" && c.pilf_profile != "hyperrnn")
    bad("pilf-profile", "must be reference or hyperrnn, got '" + c.pilf_profile + "'");
  const bool ref = c.pilf_profile == "reference";
  std::string text;
  po::options_description sub;
  for (const ProfileKnob& k : profile_knobs()) {
    const auto it = vm.find(k.option);
    if (!force && it != vm.end() && !it->second.defaulted()) continue;  // given: it wins
    text += std::string(k.option) + " = " + (ref ? k.reference : k.hyperrnn) + "\n";
    for (const auto& o : all.options())
      if (o->long_name() == k.option) sub.add(o);
  }
  if (text.empty()) return;
  std::istringstream in(text);
  po::variables_map pv;
  po::store(po::parse_config_file(in, sub, false), pv);
  po::notify(pv);
}

// Boost's messages already name the option; make them one line and keep the option name first.
std::string boost_message(const po::error& e) {
  std::string m = e.what();
  for (char& ch : m)
    if (ch == '\n') ch = ' ';
  return m;
}

// rwkv7: the options of the attention and MoE models it has no use for take neutral values when
// not given (heads from --head-size, no experts, an untied head), so that its config.ini is
// consistent; given explicitly they are refused by validate_rwkv.
void apply_model_defaults(const po::variables_map& vm, RunConfig& c) {
  if (c.model != "rwkv7") return;
  auto given = [&vm](const char* k) {
    const auto it = vm.find(k);
    return it != vm.end() && !it->second.defaulted();
  };
  if (!given("heads") && c.head_size > 0 && c.d_model % c.head_size == 0) c.heads = c.d_model / c.head_size;
  if (!given("experts")) c.experts = 0;
  if (!given("top-k")) c.top_k = 0;
  if (!given("tie-embeddings")) c.tie_embeddings = false;
}

void validate_rwkv(const RunConfig& c, bool rwkv) {
  const RunConfig def;
  if (!rwkv) {  // the rwkv7 options, each at its default
    const std::pair<const char*, bool> changed[] = {
        {"head-size", c.head_size != def.head_size}, {"rwkv-decay-rank", c.rwkv_decay_rank != def.rwkv_decay_rank},
        {"rwkv-a-rank", c.rwkv_a_rank != def.rwkv_a_rank}, {"rwkv-value-rank", c.rwkv_value_rank != def.rwkv_value_rank},
        {"rwkv-gate-rank", c.rwkv_gate_rank != def.rwkv_gate_rank}, {"rwkv-chunk", c.rwkv_chunk != def.rwkv_chunk},
        {"value-residual", c.value_residual != def.value_residual}, {"output-gate", c.output_gate != def.output_gate},
        {"channel-mix", c.channel_mix != def.channel_mix}, {"l2wrap", c.l2wrap != def.l2wrap}};
    for (const auto& [name, ch] : changed)
      if (ch) bad(name, "applies only to model rwkv7, not " + c.model);
    return;
  }
  positive("head-size", c.head_size);
  if (c.d_model % c.head_size != 0)
    bad("head-size", "head size " + std::to_string(c.head_size) + " does not divide d-model " + std::to_string(c.d_model));
  if (c.heads != c.d_model / c.head_size)
    bad("heads", "model rwkv7 takes its heads from --head-size (d-model / head-size = " + std::to_string(c.d_model / c.head_size) +
                     "), got " + std::to_string(c.heads) + "; leave --heads out");
  if (c.experts != 0) bad("experts", "applies only to the MoE models (moe, gauss-moe, pilf), not rwkv7");
  if (c.top_k != 0) bad("top-k", "applies only to the MoE models (moe, gauss-moe, pilf), not rwkv7");
  if (c.tie_embeddings) bad("tie-embeddings", "model rwkv7's head is never tied to the embedding (the reference's)");
  if (c.dropout != 0.0) bad("dropout", "applies only to the attention models (the reference ViT's sites), not rwkv7");
  if (c.image_task() && c.vit_pool != "mean") bad("vit-pool", "model rwkv7 reads the mean over the patch tokens (mean), not a class token");
  if (c.init_scale != def.init_scale || c.embed_init_std != def.embed_init_std)
    bad(c.init_scale != def.init_scale ? "init-scale" : "embed-init-std", "model rwkv7 uses the reference's initialisation; the option applies to the other models");
  const std::pair<const char*, int64_t> ranks[] = {{"rwkv-decay-rank", c.rwkv_decay_rank}, {"rwkv-a-rank", c.rwkv_a_rank},
                                                    {"rwkv-value-rank", c.rwkv_value_rank}, {"rwkv-gate-rank", c.rwkv_gate_rank}};
  for (const auto& [name, r] : ranks)
    if (r < 0 || r > c.d_model)
      bad(name, "low-rank size must be in [1, d-model " + std::to_string(c.d_model) + "] (0 = the reference's size), got " + std::to_string(r));
  const bool shape_known = !c.image_task() || (c.patch > 0 && 28 % c.patch == 0);  // else --patch is refused below
  if (shape_known && (c.rwkv_chunk < 1 || c.rwkv_chunk > c.positions()))
    bad("rwkv-chunk", "the state checkpoint interval must be in [1, " + std::to_string(c.positions()) +
                          "] (the sequence's positions), got " + std::to_string(c.rwkv_chunk));
  if (!(c.l2wrap >= 0.0 && c.l2wrap < 1.0)) bad("l2wrap", "must be in [0, 1), got " + fmt_double(c.l2wrap));
}

}  // namespace

ModelConfig RunConfig::model_config() const {
  ModelConfig m;
  HYPERRNN_CHECK(parse_model_kind(model, m.kind), "unknown model " + model);
  m.vocab = static_cast<int>(image_task() ? 10 : vocab);
  m.seq_len = static_cast<int>(positions());
  m.d_model = static_cast<int>(d_model);
  m.layers = static_cast<int>(layers);
  m.heads = static_cast<int>(heads);
  m.experts = m.is_moe() ? static_cast<int>(experts) : 0;
  m.top_k = m.is_moe() ? static_cast<int>(top_k) : 0;
  m.d_ff = static_cast<int>(d_ff > 0 ? d_ff : 4 * d_model);
  m.causal = !image_task();
  m.tie_embeddings = image_task() ? false : tie_embeddings;
  if (image_task()) {
    m.image_h = m.image_w = 28;
    m.patch = static_cast<int>(patch);
  }
  m.init_scale = init_scale;
  m.embed_init_std = embed_init_std;
  m.dropout = dropout;
  m.cls_token = image_task() && vit_pool == "cls";
  if (m.is_rwkv()) {
    m.head_size = static_cast<int>(head_size);
    m.heads = head_size > 0 ? static_cast<int>(d_model / head_size) : 0;
    m.lora_w = static_cast<int>(rwkv_decay_rank);
    m.lora_a = static_cast<int>(rwkv_a_rank);
    m.lora_v = static_cast<int>(rwkv_value_rank);
    m.lora_g = static_cast<int>(rwkv_gate_rank);
    m.rwkv_chunk = static_cast<int>(rwkv_chunk);
    m.value_residual = value_residual;
    m.output_gate = output_gate;
    m.channel_mix = channel_mix;
    m.l2wrap = l2wrap;
    m.tie_embeddings = false;
  }
  return m;
}

MqarConfig RunConfig::mqar_config() const {
  MqarConfig q;
  q.vocab = static_cast<int>(vocab);
  q.seq_len = static_cast<int>(seq_len);
  q.kv_pairs = static_cast<int>(kv_pairs);
  q.power_a = mqar_power_a;
  q.random_filler = mqar_filler == "random";
  return q;
}

StepConfig RunConfig::step_config() const { return {steps, warmup, lr, lr_min_ratio, grad_clip, gating_lr}; }

nn::AdamWConfig RunConfig::adamw_config() const { return {adam_beta1, adam_beta2, adam_eps, weight_decay}; }

PilfConfig RunConfig::pilf_config() const {
  PilfConfig p;
  const bool is_pilf = model == "pilf";
  p.pi.alpha = pi_alpha;
  p.pi.gamma = pi_gamma;
  p.pi.form = pi_form == "reference-code"   ? pilf::PiForm::ReferenceCode
              : pi_form == "reference-loop" ? pilf::PiForm::ReferenceLoop
                                            : pilf::PiForm::Published;
  p.surprise_routing = surprise_routing;
  const std::string pm = pilr == "auto" ? (is_pilf && pilf_profile == "hyperrnn" ? "single" : "off") : pilr;
  p.pilr = pm == "single" ? PilrMode::Single : pm == "dual" ? PilrMode::Dual : PilrMode::Off;
  p.pilr_cfg.beta = pilr_beta;
  p.pilr_cfg.initial_var = pilr_initial_var;
  p.pilr_cfg.power = pilr_power;
  p.pilr_cfg.exponent = pilr_exponent;
  p.pilr_cfg.inverse_ema = pilr_inverse_ema;
  p.pilr_cfg.inverse_k = pilr_inverse_k;
  p.pilr_cfg.warmup = pilr_warmup;
  const std::string sm = smk == "auto" ? (is_pilf ? "smk" : "off") : smk;
  p.smk = sm == "smk" ? pilf::SmkMode::Smk : sm == "asmk" ? pilf::SmkMode::Asmk : pilf::SmkMode::Off;
  p.min_k = static_cast<int>(min_k);
  p.smk_dropped = smk_dropped == "step" ? SmkDropped::Step : SmkDropped::Freeze;
  p.smk_per_token = smk_per_token;
  p.gating_backprop = gating_backprop;
  p.shared_buffer = buffer == "shared";
  p.curate_batch_pi = curation_pi == "batch";
  p.curate_without_smk = curation == "always";
  p.gating_dropout = gating_dropout;
  p.meta_replay = meta_replay == "task-epoch" ? MetaReplay::TaskEpoch : meta_replay == "epoch" ? MetaReplay::Epoch : MetaReplay::Fresh;
  p.meta_loss_mean = meta_loss == "mean";
  p.buffer_capacity = static_cast<int>(buffer_capacity);
  p.priority_decay = priority_decay;
  p.history = static_cast<int>(history);
  p.gating_layers = static_cast<int>(gating_layers);
  p.gating_heads = static_cast<int>(gating_heads);
  p.meta_every = static_cast<int>(meta_every);
  p.meta_batch = static_cast<int>(meta_batch);
  p.meta_lr = meta_lr;
  p.dynamic_top_k = dynamic_top_k;
  p.k_min = static_cast<int>(k_min);
  return p;
}

void validate(const RunConfig& c) {
  ModelKind mk;
  if (!parse_model_kind(c.model, mk)) bad("model", "unknown model '" + c.model + "' (dense, moe, gauss-moe, pilf, rwkv7)");
  if (c.task != "mqar" && !c.image_task()) bad("task", "unknown task '" + c.task + "' (mqar, fmnist, fmnist-marathon)");
  positive("d-model", c.d_model);
  positive("layers", c.layers);
  validate_rwkv(c, mk == ModelKind::Rwkv7);
  positive("heads", c.heads);
  if (c.d_model % c.heads != 0)
    bad("heads", "d-model " + std::to_string(c.d_model) + " is not divisible by heads " + std::to_string(c.heads));
  non_negative("d-ff", c.d_ff);
  if (!(c.init_scale > 0.0 && c.init_scale < 100.0)) bad("init-scale", "must be in (0, 100), got " + fmt_double(c.init_scale));
  if (!(c.embed_init_std > 0.0 && c.embed_init_std < 10.0))
    bad("embed-init-std", "must be in (0, 10), got " + fmt_double(c.embed_init_std));
  const bool moe = mk == ModelKind::Moe || mk == ModelKind::GaussMoe || mk == ModelKind::Pilf;
  if (moe) {
    positive("experts", c.experts);
    positive("top-k", c.top_k);
    if (c.top_k > c.experts)
      bad("top-k", "top-k " + std::to_string(c.top_k) + " exceeds the number of experts " + std::to_string(c.experts));
  }
  positive("vocab", c.vocab);
  positive("seq-len", c.seq_len);
  positive("kv-pairs", c.kv_pairs);
  if (c.task == "mqar") {
    if (4 * c.kv_pairs > c.seq_len)
      bad("kv-pairs", "MQAR needs 4 * kv-pairs <= seq-len, got 4 * " + std::to_string(c.kv_pairs) + " > " + std::to_string(c.seq_len));
    if (c.vocab <= c.seq_len)
      bad("vocab", "MQAR needs vocab > seq-len, got vocab " + std::to_string(c.vocab) + " <= seq-len " + std::to_string(c.seq_len));
  } else {
    positive("patch", c.patch);
    if (28 % c.patch != 0) bad("patch", "must divide the 28-pixel image side, got " + std::to_string(c.patch));
    positive("task-steps", c.task_steps);
    positive("classes-per-task", c.classes_per_task);
    if (10 % c.classes_per_task != 0) bad("classes-per-task", "must divide the 10 classes, got " + std::to_string(c.classes_per_task));
    if (c.fmnist_dir.empty()) bad("fmnist-dir", "must name a directory");
    if (c.marathon_head != "task" && c.marathon_head != "class") bad("marathon-head", "must be task or class, got '" + c.marathon_head + "'");
  }
  if (!(c.mqar_power_a > 0.0 && c.mqar_power_a <= 1.0)) bad("mqar-power-a", "must be in (0, 1], got " + fmt_double(c.mqar_power_a));
  if (c.mqar_filler != "random" && c.mqar_filler != "zero") bad("mqar-filler", "must be random or zero, got '" + c.mqar_filler + "'");
  positive("batch", c.batch);
  positive("shards", c.shards);
  if (c.batch % c.shards != 0)
    bad("shards", "shards " + std::to_string(c.shards) + " must divide batch " + std::to_string(c.batch));
  if (c.denormals != "flush" && c.denormals != "keep") bad("denormals", "must be flush or keep, got '" + c.denormals + "'");
  if (c.reduction != "exact" && c.reduction != "plain") bad("reduction", "must be exact or plain, got '" + c.reduction + "'");
  positive("steps", c.steps);
  non_negative("warmup", c.warmup);
  if (!(c.lr > 0.0) || !std::isfinite(c.lr)) bad("lr", "must be a positive number, got " + fmt_double(c.lr));
  if (!(c.gating_lr >= 0.0) || !std::isfinite(c.gating_lr)) bad("gating-lr", "must be >= 0, got " + fmt_double(c.gating_lr));
  if (!(c.lr_min_ratio >= 0.0 && c.lr_min_ratio <= 1.0)) bad("lr-min-ratio", "must be in [0, 1], got " + fmt_double(c.lr_min_ratio));
  if (!(c.weight_decay >= 0.0) || !std::isfinite(c.weight_decay)) bad("weight-decay", "must be >= 0, got " + fmt_double(c.weight_decay));
  if (!(c.grad_clip >= 0.0) || !std::isfinite(c.grad_clip)) bad("grad-clip", "must be >= 0, got " + fmt_double(c.grad_clip));
  if (!(c.adam_beta1 >= 0.0 && c.adam_beta1 < 1.0)) bad("adam-beta1", "must be in [0, 1), got " + fmt_double(c.adam_beta1));
  if (!(c.adam_beta2 >= 0.0 && c.adam_beta2 < 1.0)) bad("adam-beta2", "must be in [0, 1), got " + fmt_double(c.adam_beta2));
  if (!(c.adam_eps > 0.0)) bad("adam-eps", "must be > 0, got " + fmt_double(c.adam_eps));
  // PILF
  if (!(c.pi_alpha > 0.0) || !std::isfinite(c.pi_alpha)) bad("pi-alpha", "must be > 0, got " + fmt_double(c.pi_alpha));
  if (!(c.pi_gamma >= 0.0 && c.pi_gamma <= 1.0)) bad("pi-gamma", "must be in [0, 1], got " + fmt_double(c.pi_gamma));
  if (c.pilf_profile != "reference" && c.pilf_profile != "hyperrnn")
    bad("pilf-profile", "must be reference or hyperrnn, got '" + c.pilf_profile + "'");
  if (c.pi_form != "published" && c.pi_form != "reference-code" && c.pi_form != "reference-loop")
    bad("pi-form", "must be published, reference-code or reference-loop, got '" + c.pi_form + "'");
  auto one_of = [](const char* name, const std::string& v, const char* a, const char* b, const char* c3 = nullptr) {
    if (v != a && v != b && (!c3 || v != c3))
      bad(name, std::string("must be ") + a + (c3 ? ", " : " or ") + b + (c3 ? std::string(" or ") + c3 : std::string()) + ", got '" + v + "'");
  };
  one_of("smk-dropped", c.smk_dropped, "step", "freeze");
  one_of("buffer", c.buffer, "shared", "per-layer");
  one_of("curation-pi", c.curation_pi, "batch", "sample");
  one_of("curation", c.curation, "smk", "always");
  one_of("meta-replay", c.meta_replay, "task-epoch", "epoch", "fresh");
  one_of("meta-loss", c.meta_loss, "mean", "sum");
  one_of("vit-pool", c.vit_pool, "mean", "cls");
  if (!(c.dropout >= 0.0 && c.dropout < 1.0)) bad("dropout", "must be in [0, 1), got " + fmt_double(c.dropout));
  if (!(c.gating_dropout >= 0.0 && c.gating_dropout < 1.0)) bad("gating-dropout", "must be in [0, 1), got " + fmt_double(c.gating_dropout));
  non_negative("epoch-steps", c.epoch_steps);
  if (c.pilr != "auto" && c.pilr != "off" && c.pilr != "single" && c.pilr != "dual") bad("pilr", "must be off, single, dual or auto, got '" + c.pilr + "'");
  if (!(c.pilr_beta > 0.0 && c.pilr_beta <= 1.0)) bad("pilr-beta", "must be in (0, 1], got " + fmt_double(c.pilr_beta));
  if (!(c.pilr_initial_var > 0.0) || !std::isfinite(c.pilr_initial_var)) bad("pilr-initial-var", "must be > 0, got " + fmt_double(c.pilr_initial_var));
  if (!(c.pilr_power >= 0.0) || !std::isfinite(c.pilr_power)) bad("pilr-power", "must be >= 0, got " + fmt_double(c.pilr_power));
  if (!(c.pilr_exponent > 0.0) || !std::isfinite(c.pilr_exponent)) bad("pilr-exponent", "must be > 0, got " + fmt_double(c.pilr_exponent));
  if (!(c.pilr_inverse_k > 0.0) || !std::isfinite(c.pilr_inverse_k)) bad("pilr-inverse-k", "must be > 0, got " + fmt_double(c.pilr_inverse_k));
  non_negative("pilr-warmup", c.pilr_warmup);
  if (c.smk != "auto" && c.smk != "off" && c.smk != "smk" && c.smk != "asmk") bad("smk", "must be off, smk, asmk or auto, got '" + c.smk + "'");
  if (!moe) {
    if (c.smk == "smk" || c.smk == "asmk") bad("smk", "needs an MoE model (moe, gauss-moe or pilf), not " + c.model);
    if (c.pilr == "dual") bad("pilr", "dual mode needs an MoE model (its gating group is the router), not " + c.model);
  } else {
    positive("min-k", c.min_k);
    if (c.min_k > c.experts)
      bad("min-k", "min-k " + std::to_string(c.min_k) + " exceeds the number of experts " + std::to_string(c.experts));
  }
  positive("history", c.history);
  positive("gating-layers", c.gating_layers);
  positive("gating-heads", c.gating_heads);
  positive("meta-every", c.meta_every);
  non_negative("meta-batch", c.meta_batch);
  if (!(c.meta_lr > 0.0) || !std::isfinite(c.meta_lr)) bad("meta-lr", "must be > 0, got " + fmt_double(c.meta_lr));
  if (!(c.priority_decay > 0.0 && c.priority_decay <= 1.0)) bad("priority-decay", "must be in (0, 1], got " + fmt_double(c.priority_decay));
  non_negative("buffer-capacity", c.buffer_capacity);
  if (mk == ModelKind::Pilf) {
    if (c.buffer_capacity == 0) bad("buffer-capacity", "must be >= 1 with model pilf (its routing reads the experience buffer)");
    if (c.buffer_capacity > INT_MAX / 4) bad("buffer-capacity", "is too large (" + std::to_string(c.buffer_capacity) + ")");
    if (c.d_model % c.gating_heads != 0)
      bad("gating-heads", "d-model " + std::to_string(c.d_model) + " is not divisible by gating-heads " + std::to_string(c.gating_heads));
  }
  if (c.dynamic_top_k) {
    if (mk != ModelKind::Pilf) bad("dynamic-top-k", "needs model pilf (k comes from the memory-Gaussian routing surprise)");
    if (c.k_min < 1 || c.k_min > c.top_k)
      bad("k-min", "must be in [1, top-k " + std::to_string(c.top_k) + "], got " + std::to_string(c.k_min));
  }
  non_negative("eval-every", c.eval_every);
  positive("eval-samples", c.eval_samples);
  non_negative("log-every", c.log_every);
  non_negative("snapshot-every", c.snapshot_every);
  non_negative("keep", c.keep);
  non_negative("stop-after", c.stop_after);
  non_negative("ranks", c.dry_ranks);
  if (c.dry_ranks > 0 && !c.dry_run) throw UsageError("option '--ranks': only with --dry-run (a launch's rank count is the launcher's -n)");
  if (c.time_budget < 0.0) bad("time-budget", "must be >= 0 seconds, got " + fmt_double(c.time_budget));
  positive("max-bad-steps", c.max_bad_steps);
}

bool parse_options(Command cmd, int argc, const char* const* argv, RunConfig& cfg, bool print_help) {
  po::options_description run_opts("Run options (also accepted in --config as key = value)");
  add_model_task_train(run_opts, cfg);
  po::options_description inv("Invocation");
  add_invocation(inv, cfg, cmd);
  po::options_description all;
  all.add(inv);
  if (cmd != Command::Eval) all.add(run_opts);
  po::variables_map vm;
  try {
    // every option spelled in full: no prefix guessing (--ste 3 is not --steps)
    namespace cls = po::command_line_style;
    const int style = cls::default_style & ~cls::allow_guessing;
    const po::parsed_options parsed = po::command_line_parser(argc, argv).options(all).style(style).run();
    for (const po::option& o : parsed.options)
      if (o.position_key >= 0 || o.string_key.empty()) {  // a stray word
        const std::string w = o.value.empty() ? (o.original_tokens.empty() ? "" : o.original_tokens[0]) : o.value[0];
        const bool ini = w.size() > 4 && w.compare(w.size() - 4, 4, ".ini") == 0;
        throw UsageError("unexpected argument '" + w + "'" +
                         (ini ? " (did you mean --config " + w + "?)" : " (options are --name value; see --help)"));
      }
    for (size_t i = 0; i < parsed.options.size(); ++i)
      for (size_t j = 0; j < i; ++j)
        if (parsed.options[i].string_key == parsed.options[j].string_key)
          bad(parsed.options[i].string_key, "given more than once");
    check_tokens(parsed);
    po::store(parsed, vm);
    if (vm.count("help")) {
      static const char* const usage[] = {"usage: hyperrnn train [--config FILE.ini] [options]\n",
                                          "usage: hyperrnn eval --snapshot PATH [options]\n",
                                          "usage: hyperrnn bench [--config FILE.ini] [options]\n"};
      if (print_help) std::cout << usage[static_cast<int>(cmd)] << all << "\n";
      return false;
    }
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      if (path.empty()) bad("config", "needs a file path, got an empty string");
      std::error_code ec;
      if (!std::filesystem::is_regular_file(path, ec)) {
        const bool exists = std::filesystem::exists(path, ec);
        bad("config", "'" + path + "' " + (exists ? "is not a regular file" : "does not exist"));
      }
      std::ifstream in(path);
      if (!in) bad("config", "cannot read '" + path + "'");
      const bool eval = cmd == Command::Eval;
      po::parsed_options file = [&] {
        try {
          return po::parse_config_file(in, all, eval);
        } catch (const po::error& e) {
          bad("config", "malformed config file '" + path + "': " + boost_message(e));
        }
      }();
      if (eval) {  // eval accepts a run's config.ini: its run options are the snapshot's anyway
        RunConfig scratch;
        po::options_description known;
        add_model_task_train(known, scratch);
        for (po::option& o : file.options)
          if (o.unregistered) {
            if (!known.find_nothrow(o.string_key, false))
              bad("config", "unknown key '" + o.string_key + "' in '" + path + "' (neither an eval option nor a run option)");
          }
        file.options.erase(std::remove_if(file.options.begin(), file.options.end(), [](const po::option& o) { return o.unregistered; }),
                           file.options.end());
      }
      check_tokens(file);
      po::store(file, vm);
    }
    po::notify(vm);
    if (vm.count("out") && cfg.out.empty()) bad("out", "needs a directory path, got an empty string");
    for (const auto& [name, v] : vm)  // every floating-point value finite
      if (const auto* x = boost::any_cast<double>(&v.value()); x && !std::isfinite(*x))
        bad(name, "must be a finite number, got " + fmt_double(*x));
    if (cmd != Command::Eval) {
      apply_profile(all, vm, cfg);
      apply_model_defaults(vm, cfg);
    }
  } catch (const po::error& e) {
    throw UsageError(boost_message(e));
  }
  resolve_threads(cfg.threads);
  if (cfg.device != "cpu" && cfg.device != "cuda") bad("device", "must be cpu or cuda, got '" + cfg.device + "'");
  if (cfg.device == "cuda" && !cuda::built())
    bad("device", "cuda: this build has no CUDA backend (configure with -DHYPERRNN_CUDA=ON; docs/gpu.md)");
  if (cmd != Command::Eval) resolve_shards(cfg);
  if (cmd == Command::Train && parse_signal(cfg.stop_signal) < 0)
    bad("stop-signal", "must be a signal name (e.g. SIGUSR2, USR1, TERM) or number, got '" + cfg.stop_signal + "'");
  if (cmd == Command::Bench) {
    validate(cfg);
    positive("bench-steps", cfg.bench_steps);
    positive("repeats", cfg.bench_repeats);
  } else if (cmd == Command::Train) {
    validate(cfg);
    if (cfg.out.empty()) cfg.out = "runs/" + cfg.model + "-" + cfg.task + "-s" + std::to_string(cfg.seed);
  } else {
    if (cfg.snapshot.empty()) bad("snapshot", "is required for eval");
    non_negative("eval-samples", cfg.eval_samples);
    non_negative("batch", cfg.batch);
  }
  return true;
}

void resolve_shards(RunConfig& c) {
  if (c.shards_opt == "auto") {
    c.shards = c.batch > 0 ? std::gcd(c.batch, RunConfig::kAutoShards) : 1;
  } else {
    size_t used = 0;
    int64_t n = 0;
    try {
      n = std::stoll(c.shards_opt, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != c.shards_opt.size()) bad("shards", "must be auto or a positive integer, got '" + c.shards_opt + "'");
    c.shards = n;
  }
  c.shards_opt = std::to_string(c.shards);
}

int resolve_threads(const std::string& threads, std::string* warning) {
  const int cores = affinity_cores();
  if (threads == "auto") return cores;
  int64_t n = 0;
  size_t used = 0;
  try {
    n = std::stoll(threads, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != threads.size() || n < 1 || n > 4096)
    bad("threads", "must be auto or a positive thread count (at most 4096), got '" + threads + "'");
  if (n > cores && warning)
    *warning = "warning: --threads " + threads + " exceeds the " + std::to_string(cores) +
               " core(s) of this rank's affinity mask; the threads will share them (slower, same results)";
  return static_cast<int>(n);
}

std::string to_ini(const RunConfig& c) {
  // Generated from the option table itself: bind the table to a copy whose values become the
  // defaults, parse nothing, and print every option in table order.
  RunConfig copy = c;
  po::options_description d;
  add_model_task_train(d, copy);
  po::variables_map vm;
  const char* argv0[] = {"hyperrnn"};
  po::store(po::command_line_parser(1, argv0).options(d).run(), vm);
  std::ostringstream o;
  o << "# hyperrnn effective configuration (hyperrnn train --config this-file reproduces the run)\n";
  for (const auto& opt : d.options()) {
    const std::string& name = opt->long_name();
    const boost::any& v = vm[name].value();
    o << name << " = ";
    if (const auto* i = boost::any_cast<int64_t>(&v)) o << *i;
    else if (const auto* u = boost::any_cast<uint64_t>(&v)) o << *u;
    else if (const auto* x = boost::any_cast<double>(&v)) o << fmt_double(*x);
    else if (const auto* b = boost::any_cast<bool>(&v)) o << (*b ? "true" : "false");
    else if (const auto* str = boost::any_cast<std::string>(&v)) o << *str;
    else HYPERRNN_CHECK(false, "option " + name + " has a type to_ini cannot print");
    o << "\n";
  }
  return o.str();
}

void validate_layout(const RunConfig& c, int ranks) {
  const std::string P = std::to_string(ranks);
  if (c.shards % ranks != 0)
    bad("shards", "the " + P + " ranks must divide the " + std::to_string(c.shards) +
                      " shards (each rank runs an equal block of shards); use a shard count that is a multiple of " + P);
  if (c.model_config().is_moe() && c.experts < ranks)
    bad("experts", "every rank must own at least one expert: " + std::to_string(c.experts) + " experts per layer on " + P +
                       " ranks; use at most " + std::to_string(c.experts) + " ranks or more experts");
}

RunConfig from_ini(const std::string& text, const std::string& origin) {
  RunConfig c;
  po::options_description d;
  add_model_task_train(d, c);
  po::variables_map vm;
  std::istringstream in(text);
  try {
    po::store(po::parse_config_file(in, d, false), vm);
    po::notify(vm);
    apply_profile(d, vm, c);
    apply_model_defaults(vm, c);
  } catch (const po::error& e) {
    throw UsageError("configuration in '" + origin + "' is malformed: " + boost_message(e));
  }
  resolve_shards(c);
  validate(c);
  return c;
}

const std::vector<ProfileKnob>& profile_knobs() {
  // option, reference (PILF-2 as its code runs, docs/pilf.md), hyperrnn (our choices; each equals
  // the option's default, which every other model uses)
  static const std::vector<ProfileKnob> knobs = {
      {"pilr", "off", "single"},                 // main.py builds SMK/ASMK only; constant lr
      {"smk-dropped", "step", "freeze"},         // grad.zero_() then torch.optim.Adam.step()
      {"weight-decay", "0", "0.1"},              // torch.optim.Adam(main_params, lr): no decay
      {"grad-clip", "0", "1"},                   // the PILF-2 loop does not clip
      {"warmup", "0", "100"},                    // constant learning rate
      {"lr-min-ratio", "1", "0.1"},
      {"pi-form", "reference-loop", "published"},  // PICalculator given one list of gradients
      {"surprise-routing", "false", "true"},     // surprise: parameter gradients only
      {"gating-backprop", "true", "false"},      // q_subject is not detached
      {"buffer", "shared", "per-layer"},         // one PrototypingExperienceBuffer for all layers
      {"curation-pi", "batch", "sample"},        // pi_score_tensor.expand(batch_size)
      {"curation", "smk", "always"},             // curation only inside `if smk_metrics`
      {"meta-every", "1", "10"},                 // meta_learning_freq 1
      {"meta-replay", "task-epoch", "fresh"},    // gating_loss_cache[(task_name, epoch)]
      {"meta-batch", "0", "64"},                 // sample(experience_buffer.current_size)
      {"meta-loss", "mean", "sum"},              // total_gating_loss / num_gating_layers
      {"d-ff", "256", "0"},                      // mlp_dim's default (mlp_ratio is swallowed)
      {"dropout", "0.1", "0"},                   // VisionTransformer(dropout=0.1)
      {"gating-dropout", "0.1", "0"},            // GatingTransformer(dropout=0.1)
      {"vit-pool", "cls", "mean"},               // cls_token, head(x[:, 0])
  };
  return knobs;
}

std::vector<std::string> profile_deviations(const RunConfig& c) {
  std::vector<std::string> out;
  if (c.model != "pilf") return out;
  RunConfig prof = c;
  po::options_description d;
  add_model_task_train(d, prof);
  apply_profile(d, po::variables_map{}, prof, true);
  auto values = [](const RunConfig& x) {
    std::map<std::string, std::string> m;
    std::istringstream in(to_ini(x));
    for (std::string line; std::getline(in, line);) {
      const size_t eq = line.find(" = ");
      if (eq != std::string::npos) m[line.substr(0, eq)] = line.substr(eq + 3);
    }
    return m;
  };
  const auto here = values(c), there = values(prof);
  for (const ProfileKnob& k : profile_knobs()) {
    const std::string& a = here.at(k.option);
    const std::string& b = there.at(k.option);
    if (a != b) out.push_back(std::string(k.option) + " = " + a + " (profile: " + b + ")");
  }
  return out;
}

std::string usage_text() {
  return "usage: hyperrnn <command> [options]\n"
         "commands:\n"
         "  train   [--config FILE.ini] [options]   train a model; writes a run directory (--out)\n"
         "  eval    --snapshot PATH [options]        evaluate a snapshot on the held-out stream\n"
         "  inspect PATH                            what a snapshot holds, full verification, theta_sha256\n"
         "  bench   [--config FILE.ini] [options]   SGEMM peak and training-step throughput\n"
         "Run 'hyperrnn <command> --help' for the options of a command.\n";
}

}  // namespace hyperrnn

namespace hyperrnn {

MemoryEstimate estimate_memory(const RunConfig& c, int ranks) {
  // Per rank, in bytes of float: parameters with gradients and Adam's two moments (the experts
  // split over ranks), one gradient copy of the table per local shard, a snapshot's file image
  // (written from memory), and the activation arena: per token and layer the block's tensors (about 24 C floats), the FFN's or the
  // k experts' hidden activations (4 F or 4 k F), the attention probabilities (3 H T: forward,
  // dropout, backward), with the scored rows' logits (3 V).
  const ModelConfig m = c.model_config();
  const double C = static_cast<double>(m.d_model), L = static_cast<double>(m.layers), F = static_cast<double>(m.d_ff);
  const double E = m.is_moe() ? static_cast<double>(m.experts) : 0.0, K = m.is_moe() ? static_cast<double>(m.top_k) : 0.0;
  const double T = static_cast<double>(c.positions()), H = static_cast<double>(m.heads), V = static_cast<double>(m.vocab);
  const double Bl = static_cast<double>(c.batch) / ranks, S_loc = std::max(1.0, static_cast<double>(c.shards) / ranks);
  const double dense = (m.is_image() ? m.patch * m.patch * C : V * C) + T * C + L * (4 * C * C + 9 * C) +
                       (m.is_moe() ? L * 2 * E * C : L * (2 * C * F + F + C)) + (c.tie_embeddings ? 0.0 : V * C);
  const double experts = m.is_moe() ? L * E * (2 * C * F + F + C) / ranks : 0.0;
  MemoryEstimate out;
  if (m.is_rwkv()) {  // rwkv7: about 4 C^2 + 2 C (sum of low ranks, <= 4 x 64 here) + 2 C F per layer; ~40 C + 2 F floats
    // per token and layer of activations, the wkv checkpoints and one backward scratch per thread
    const double D = 4.0 * std::min(C, 64.0), N = static_cast<double>(m.head_size);
    const double held = 2.0 * V * C + L * (4 * C * C + 2 * C * D + (m.channel_mix ? 2 * C * F : 0.0) + 20 * C);
    out.params = 4.0 * (4.0 * held + (c.shards > 1 ? S_loc * held : 0.0)) + 4.0 * 2.0 * 3.0 * held;
    const double ckpt = std::ceil(T / static_cast<double>(std::max<int64_t>(1, c.rwkv_chunk))) * C * N;
    out.activations = 4.0 * Bl * L * (T * (40.0 * C + 2.0 * F) + ckpt) + 4.0 * Bl / S_loc * T * (14.0 * C + F) +
                      4.0 * static_cast<double>(c.scored_per_batch(static_cast<int64_t>(Bl))) * 3.0 * V;
    out.total = out.params + out.activations;
    return out;
  }
  const double held = dense + experts;  // this rank's table
  // parameters, gradients, two moments; with S > 1 one gradient copy of the table per local shard;
  // and a snapshot's in-memory file image (parameters and moments) and its copy while it is written
  out.params = 4.0 * (4.0 * held + (c.shards > 1 ? S_loc * held : 0.0)) + 4.0 * 2.0 * 3.0 * held;
  const double ffn = m.is_moe() ? 4.0 * K * F + 2.0 * K * C : 4.0 * F;
  out.activations = 4.0 * Bl * T * L * (24.0 * C + ffn + 3.0 * H * T) + 4.0 * static_cast<double>(c.scored_per_batch(static_cast<int64_t>(Bl))) * 3.0 * V;
  out.total = out.params + out.activations;
  return out;
}

double available_memory_bytes() {
  double avail = 0.0;
  std::ifstream mi("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  while (mi >> key >> kb >> unit)
    if (key == "MemAvailable:") avail = kb * 1024.0;
  std::ifstream cg("/sys/fs/cgroup/memory.max");  // a job's limit (Slurm's cgroup), when there is one
  std::string lim;
  if (cg >> lim && lim != "max") {
    const double l = std::strtod(lim.c_str(), nullptr);
    if (l > 0 && (avail == 0.0 || l < avail)) avail = l;
  }
  return avail;
}

}  // namespace hyperrnn
