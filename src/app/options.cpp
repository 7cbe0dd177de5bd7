// Option table, parsing, validation and INI round trip.
#include "app/options.hpp"

#include <boost/program_options.hpp>

#include <climits>
#include <cmath>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/error.hpp"
#include "io/csv.hpp"

namespace po = boost::program_options;

namespace hyperrnn {

namespace {

std::string fmt_double(double v) { return format_roundtrip(v); }

// The single option table. `identity` options define the run (written to config.ini and compared
// when --out already exists); the others only steer this invocation.
void add_model_task_train(po::options_description& d, RunConfig& c) {
  d.add_options()
    ("model", po::value(&c.model)->default_value(c.model), "model: dense | moe | gauss-moe")
    ("d-model", po::value(&c.d_model)->default_value(c.d_model), "model width C")
    ("layers", po::value(&c.layers)->default_value(c.layers), "Transformer blocks")
    ("heads", po::value(&c.heads)->default_value(c.heads), "attention heads (must divide d-model)")
    ("experts", po::value(&c.experts)->default_value(c.experts), "experts per MoE layer")
    ("top-k", po::value(&c.top_k)->default_value(c.top_k), "experts chosen per token")
    ("d-ff", po::value(&c.d_ff)->default_value(c.d_ff), "FFN / expert hidden width (0 = 4 * d-model)")
    ("init-scale", po::value(&c.init_scale)->default_value(c.init_scale, fmt_double(c.init_scale)), "weight matrices start as N(0, init-scale^2 / (2 fan_in))")
    ("embed-init-std", po::value(&c.embed_init_std)->default_value(c.embed_init_std, fmt_double(c.embed_init_std)), "std of the token and position embeddings at initialisation")
    ("tie-embeddings", po::value(&c.tie_embeddings)->default_value(c.tie_embeddings), "output head shares the token embedding (true | false)")
    ("task", po::value(&c.task)->default_value(c.task), "task: mqar")
    ("vocab", po::value(&c.vocab)->default_value(c.vocab), "vocabulary size V (> seq-len)")
    ("seq-len", po::value(&c.seq_len)->default_value(c.seq_len), "sequence length L")
    ("kv-pairs", po::value(&c.kv_pairs)->default_value(c.kv_pairs), "MQAR key-value pairs D (4D <= L)")
    ("mqar-power-a", po::value(&c.mqar_power_a)->default_value(c.mqar_power_a, fmt_double(c.mqar_power_a)), "MQAR query-gap power law a")
    ("mqar-filler", po::value(&c.mqar_filler)->default_value(c.mqar_filler), "MQAR filler tokens: random | zero")
    ("batch", po::value(&c.batch)->default_value(c.batch), "global samples per step")
    ("shards", po::value(&c.shards)->default_value(c.shards), "canonical batch shards S (must divide batch; validated now, used by the expert-parallel step)")
    ("steps", po::value(&c.steps)->default_value(c.steps), "training steps")
    ("warmup", po::value(&c.warmup)->default_value(c.warmup), "linear learning-rate warm-up steps")
    ("lr", po::value(&c.lr)->default_value(c.lr, fmt_double(c.lr)), "peak learning rate")
    ("lr-min-ratio", po::value(&c.lr_min_ratio)->default_value(c.lr_min_ratio, fmt_double(c.lr_min_ratio)), "cosine decay floor as a fraction of --lr")
    ("weight-decay", po::value(&c.weight_decay)->default_value(c.weight_decay, fmt_double(c.weight_decay)), "AdamW decoupled weight decay (matrices only)")
    ("grad-clip", po::value(&c.grad_clip)->default_value(c.grad_clip, fmt_double(c.grad_clip)), "global gradient-norm clip (0 = off)")
    ("adam-beta1", po::value(&c.adam_beta1)->default_value(c.adam_beta1, fmt_double(c.adam_beta1)), "AdamW beta1")
    ("adam-beta2", po::value(&c.adam_beta2)->default_value(c.adam_beta2, fmt_double(c.adam_beta2)), "AdamW beta2")
    ("adam-eps", po::value(&c.adam_eps)->default_value(c.adam_eps, fmt_double(c.adam_eps)), "AdamW epsilon")
    ("seed", po::value(&c.seed)->default_value(c.seed), "seed of every random stream")
    ("eval-every", po::value(&c.eval_every)->default_value(c.eval_every), "held-out evaluation interval in steps (0 = only at the end)")
    ("eval-samples", po::value(&c.eval_samples)->default_value(c.eval_samples), "held-out samples per evaluation")
    ("max-bad-steps", po::value(&c.max_bad_steps)->default_value(c.max_bad_steps), "consecutive steps with NaN/Inf loss or gradients (each skipped) before the run stops");
}

void add_invocation(po::options_description& d, RunConfig& c, Command cmd) {
  d.add_options()("help,h", "print this help and exit")
    ("config", po::value<std::string>(), "INI file with key = value lines (same names as the options)");
  if (cmd == Command::Train)
    d.add_options()
      ("out", po::value(&c.out), "run directory (default runs/<model>-<task>-s<seed>)")
      ("log-every", po::value(&c.log_every)->default_value(c.log_every), "progress line interval when stdout is not a terminal (0 = steps/20)");
  else if (cmd == Command::Bench)
    d.add_options()
      ("bench-steps", po::value(&c.bench_steps)->default_value(c.bench_steps), "timed training steps per repeat")
      ("repeats", po::value(&c.bench_repeats)->default_value(c.bench_repeats), "repeats (the median is reported)");
  else
    d.add_options()
      ("snapshot", po::value(&c.snapshot), "snapshot directory, its manifest.h5, or a run directory (uses snapshots/latest)")
      ("eval-samples", po::value(&c.eval_samples)->default_value(c.eval_samples), "held-out samples to evaluate")
      ("batch", po::value(&c.batch)->default_value(c.batch), "samples per evaluation batch");
}

[[noreturn]] void bad(const std::string& opt, const std::string& why) {
  throw UsageError("option '--" + opt + "': " + why);
}

void positive(const char* opt, int64_t v) {
  if (v <= 0) bad(opt, "must be a positive integer, got " + std::to_string(v));
  if (v > INT_MAX / 4) bad(opt, "is too large (" + std::to_string(v) + ")");
}
void non_negative(const char* opt, int64_t v) {
  if (v < 0) bad(opt, "must be >= 0, got " + std::to_string(v));
}

// Boost's messages already name the option; make them one line and keep the option name first.
std::string boost_message(const po::error& e) {
  std::string m = e.what();
  for (char& ch : m)
    if (ch == '\n') ch = ' ';
  return m;
}

}  // namespace

ModelConfig RunConfig::model_config() const {
  ModelConfig m;
  HYPERRNN_CHECK(parse_model_kind(model, m.kind), "unknown model " + model);
  m.vocab = static_cast<int>(vocab);
  m.seq_len = static_cast<int>(seq_len);
  m.d_model = static_cast<int>(d_model);
  m.layers = static_cast<int>(layers);
  m.heads = static_cast<int>(heads);
  m.experts = m.is_moe() ? static_cast<int>(experts) : 0;
  m.top_k = m.is_moe() ? static_cast<int>(top_k) : 0;
  m.d_ff = static_cast<int>(d_ff > 0 ? d_ff : 4 * d_model);
  m.causal = true;
  m.tie_embeddings = tie_embeddings;
  m.init_scale = init_scale;
  m.embed_init_std = embed_init_std;
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

StepConfig RunConfig::step_config() const { return {steps, warmup, lr, lr_min_ratio, grad_clip}; }

nn::AdamWConfig RunConfig::adamw_config() const { return {adam_beta1, adam_beta2, adam_eps, weight_decay}; }

void validate(const RunConfig& c) {
  ModelKind mk;
  if (!parse_model_kind(c.model, mk)) bad("model", "unknown model '" + c.model + "' (dense, moe, gauss-moe)");
  if (c.task != "mqar") bad("task", "unknown task '" + c.task + "' (mqar)");
  positive("d-model", c.d_model);
  positive("layers", c.layers);
  positive("heads", c.heads);
  if (c.d_model % c.heads != 0)
    bad("heads", "d-model " + std::to_string(c.d_model) + " is not divisible by heads " + std::to_string(c.heads));
  non_negative("d-ff", c.d_ff);
  if (!(c.init_scale > 0.0 && c.init_scale < 100.0)) bad("init-scale", "must be in (0, 100), got " + fmt_double(c.init_scale));
  if (!(c.embed_init_std > 0.0 && c.embed_init_std < 10.0))
    bad("embed-init-std", "must be in (0, 10), got " + fmt_double(c.embed_init_std));
  if (mk != ModelKind::Dense) {
    positive("experts", c.experts);
    positive("top-k", c.top_k);
    if (c.top_k > c.experts)
      bad("top-k", "top-k " + std::to_string(c.top_k) + " exceeds the number of experts " + std::to_string(c.experts));
  }
  positive("vocab", c.vocab);
  positive("seq-len", c.seq_len);
  positive("kv-pairs", c.kv_pairs);
  if (4 * c.kv_pairs > c.seq_len)
    bad("kv-pairs", "MQAR needs 4 * kv-pairs <= seq-len, got 4 * " + std::to_string(c.kv_pairs) + " > " + std::to_string(c.seq_len));
  if (c.vocab <= c.seq_len)
    bad("vocab", "MQAR needs vocab > seq-len, got vocab " + std::to_string(c.vocab) + " <= seq-len " + std::to_string(c.seq_len));
  if (!(c.mqar_power_a > 0.0 && c.mqar_power_a <= 1.0)) bad("mqar-power-a", "must be in (0, 1], got " + fmt_double(c.mqar_power_a));
  if (c.mqar_filler != "random" && c.mqar_filler != "zero") bad("mqar-filler", "must be random or zero, got '" + c.mqar_filler + "'");
  positive("batch", c.batch);
  positive("shards", c.shards);
  if (c.batch % c.shards != 0)
    bad("shards", "shards " + std::to_string(c.shards) + " must divide batch " + std::to_string(c.batch));
  positive("steps", c.steps);
  non_negative("warmup", c.warmup);
  if (!(c.lr > 0.0) || !std::isfinite(c.lr)) bad("lr", "must be a positive number, got " + fmt_double(c.lr));
  if (!(c.lr_min_ratio >= 0.0 && c.lr_min_ratio <= 1.0)) bad("lr-min-ratio", "must be in [0, 1], got " + fmt_double(c.lr_min_ratio));
  if (!(c.weight_decay >= 0.0) || !std::isfinite(c.weight_decay)) bad("weight-decay", "must be >= 0, got " + fmt_double(c.weight_decay));
  if (!(c.grad_clip >= 0.0) || !std::isfinite(c.grad_clip)) bad("grad-clip", "must be >= 0, got " + fmt_double(c.grad_clip));
  if (!(c.adam_beta1 >= 0.0 && c.adam_beta1 < 1.0)) bad("adam-beta1", "must be in [0, 1), got " + fmt_double(c.adam_beta1));
  if (!(c.adam_beta2 >= 0.0 && c.adam_beta2 < 1.0)) bad("adam-beta2", "must be in [0, 1), got " + fmt_double(c.adam_beta2));
  if (!(c.adam_eps > 0.0)) bad("adam-eps", "must be > 0, got " + fmt_double(c.adam_eps));
  non_negative("eval-every", c.eval_every);
  positive("eval-samples", c.eval_samples);
  non_negative("log-every", c.log_every);
  positive("max-bad-steps", c.max_bad_steps);
}

bool parse_options(Command cmd, int argc, const char* const* argv, RunConfig& cfg) {
  po::options_description run_opts("Run options (also accepted in --config as key = value)");
  add_model_task_train(run_opts, cfg);
  po::options_description inv("Invocation");
  add_invocation(inv, cfg, cmd);
  po::options_description all;
  all.add(inv);
  if (cmd != Command::Eval) all.add(run_opts);
  po::variables_map vm;
  try {
    const po::parsed_options parsed = po::command_line_parser(argc, argv).options(all).run();
    for (size_t i = 0; i < parsed.options.size(); ++i)
      for (size_t j = 0; j < i; ++j)
        if (parsed.options[i].string_key == parsed.options[j].string_key)
          bad(parsed.options[i].string_key, "given more than once");
    po::store(parsed, vm);
    if (vm.count("help")) {
      static const char* const usage[] = {"usage: hyperrnn train [--config FILE.ini] [options]\n",
                                          "usage: hyperrnn eval --snapshot PATH [options]\n",
                                          "usage: hyperrnn bench [--config FILE.ini] [options]\n"};
      std::cout << usage[static_cast<int>(cmd)] << all << "\n";
      return false;
    }
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      std::ifstream in(path);
      if (!in) bad("config", "cannot read '" + path + "'");
      try {
        po::store(po::parse_config_file(in, all, false), vm);
      } catch (const po::error& e) {
        bad("config", "malformed config file '" + path + "': " + boost_message(e));
      }
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(boost_message(e));
  }
  if (cmd == Command::Bench) {
    validate(cfg);
    positive("bench-steps", cfg.bench_steps);
    positive("repeats", cfg.bench_repeats);
  } else if (cmd == Command::Train) {
    validate(cfg);
    if (cfg.out.empty()) cfg.out = "runs/" + cfg.model + "-" + cfg.task + "-s" + std::to_string(cfg.seed);
  } else {
    if (cfg.snapshot.empty()) bad("snapshot", "is required for eval");
    positive("eval-samples", cfg.eval_samples);
    positive("batch", cfg.batch);
  }
  return true;
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

RunConfig from_ini(const std::string& text, const std::string& origin) {
  RunConfig c;
  po::options_description d;
  add_model_task_train(d, c);
  po::variables_map vm;
  std::istringstream in(text);
  try {
    po::store(po::parse_config_file(in, d, false), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError("configuration in '" + origin + "' is malformed: " + boost_message(e));
  }
  validate(c);
  return c;
}

std::string usage_text() {
  return "usage: hyperrnn <command> [options]\n"
         "commands:\n"
         "  train   [--config FILE.ini] [options]   train a model; writes a run directory (--out)\n"
         "  eval    --snapshot PATH [options]        evaluate a snapshot on the held-out stream\n"
         "  bench   [--config FILE.ini] [options]   SGEMM peak and training-step throughput\n"
         "Run 'hyperrnn <command> --help' for the options of a command.\n";
}

}  // namespace hyperrnn
