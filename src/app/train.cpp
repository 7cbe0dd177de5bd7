// `hyperrnn train`: run directory, the training loop (one process for now), metrics, progress,
// held-out evaluation and the final snapshot.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "app/commands.hpp"
#include "app/progress.hpp"
#include "core/error.hpp"
#include "io/csv.hpp"
#include "io/snapshot.hpp"
#include "app/session.hpp"

namespace fs = std::filesystem;

namespace hyperrnn {

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The first line where two INI texts differ, for the error message.
std::string first_difference(const std::string& a, const std::string& b) {
  std::istringstream sa(a), sb(b);
  std::string la, lb;
  while (true) {
    const bool ga = static_cast<bool>(std::getline(sa, la)), gb = static_cast<bool>(std::getline(sb, lb));
    if (!ga && !gb) return "";
    if (!ga) la = "<none>";
    if (!gb) lb = "<none>";
    if (la != lb) return "'" + la + "' there, '" + lb + "' here";
  }
}

// Checks --out before anything is written: absent, empty, or holding this very configuration.
void check_out_dir(const RunConfig& cfg, const std::string& ini) {
  const fs::path out(cfg.out);
  std::error_code ec;
  if (!fs::exists(out, ec)) return;
  if (!fs::is_directory(out)) throw UsageError("option '--out': '" + cfg.out + "' exists and is not a directory");
  if (fs::is_empty(out)) return;
  if (!fs::exists(out / "config.ini"))
    throw UsageError("option '--out': directory '" + cfg.out + "' is not empty and holds no hyperrnn run (no config.ini)");
  const std::string old = read_file(out / "config.ini");
  if (old != ini)
    throw UsageError("option '--out': directory '" + cfg.out + "' already holds a different run (" +
                     first_difference(old, ini) + "); choose another --out");
}

}  // namespace

EvalResult evaluate_heldout(Transformer<float>& model, MqarGenerator& gen, Batch& batch, uint64_t seed,
                            int64_t samples) {
  const int cap = static_cast<int>(batch.tokens.size() / static_cast<size_t>(gen.config().seq_len));
  double loss_sum = 0.0, correct = 0.0;
  int64_t scored = 0, counted = 0;
  for (int64_t first = 0; first < samples; first += cap) {
    const int n = static_cast<int>(std::min<int64_t>(cap, samples - first));
    gen.fill(batch, seed, RngPurpose::HeldOut, 0, static_cast<uint32_t>(first), n);
    const double loss = model.forward(batch);
    loss_sum += loss * model.scored();
    scored += model.scored();
    correct += model.correct();
    counted += model.samples_scored();
  }
  return {scored ? loss_sum / static_cast<double>(scored) : 0.0,
          counted ? correct / static_cast<double>(counted) : 0.0, samples};
}

int run_train(Comm& comm, const RunConfig& cfg) {
  if (comm.size() > 1)
    throw UsageError("ranks: this build trains on one rank only (" + std::to_string(comm.size()) +
                     " started); expert-parallel training over MPI is not implemented yet");
  const std::string ini = to_ini(cfg);
  check_out_dir(cfg, ini);
  const fs::path out(cfg.out);
  fs::create_directories(out / "logs");
  {
    std::ofstream c(out / "config.ini");
    c << ini;
    if (!c) throw RuntimeError("cannot write " + (out / "config.ini").string());
  }

  Session<float> ses(cfg);
  Transformer<float>& model = ses.model;
  const ModelConfig& mc = model.config();
  const int B = static_cast<int>(cfg.batch), L = static_cast<int>(cfg.seq_len);

  std::vector<std::string> header = {"step", "loss", "acc", "lr", "grad_norm", "tokens_per_s", "step_time_s", "scored", "skipped",
                                     "epsilon", "tau", "surprise", "expert_surprise", "gating_surprise", "pi",
                                     "lr_mod_expert", "lr_mod_gating", "gating_loss", "routing_acc", "k_mean"};
  for (int l = 0; l < mc.layers && mc.is_moe(); ++l)
    for (int e = 0; e < mc.experts; ++e)
      header.push_back("tokens_l" + std::to_string(l) + "_e" + std::to_string(e));
  for (int l = 0; l < mc.layers && mc.is_moe(); ++l) header.push_back("smk_l" + std::to_string(l));
  for (int l = 0; l < mc.layers && mc.memory_routing(); ++l) {
    header.push_back("buffer_size_l" + std::to_string(l));
    header.push_back("prototypes_l" + std::to_string(l));
  }
  CsvWriter metrics, evals;
  metrics.open((out / "metrics.csv").string(), header);
  evals.open((out / "eval.csv").string(), {"step", "split", "loss", "acc"});
  Progress progress(cfg.steps, cfg.log_every, (out / "logs" / "train.log").string());
  progress.line("hyperrnn train: " + cfg.model + " on " + cfg.task + ", " +
                std::to_string(model.table().total()) + " parameters, " + std::to_string(cfg.steps) +
                " steps of " + std::to_string(B) + " samples -> " + cfg.out);

  auto run_eval_now = [&](int64_t step) {
    const EvalResult r = evaluate_heldout(model, ses.gen, ses.batch, cfg.seed, cfg.eval_samples);
    evals.add(step).add(std::string("heldout")).add(r.loss).add(r.acc).end_row();
    char buf[160];
    std::snprintf(buf, sizeof buf, "eval step %lld: heldout loss %.4f acc %.4f (%lld samples)",
                  static_cast<long long>(step), r.loss, r.acc, static_cast<long long>(r.samples));
    progress.line(buf);
    return r;
  };

  const int64_t N = static_cast<int64_t>(B) * L;
  double flops = 0.0, busy = 0.0;
  EvalResult last{};
  int64_t last_eval_step = -1;
  int64_t skipped_total = 0, skipped_in_a_row = 0;
  const auto t_run = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < cfg.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    const StepStats st = ses.train(step);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    busy += dt;
    if (!st.skipped) flops += model.step_flops();  // a skipped step ran no backward

    metrics.add(step + 1).add(st.loss).add(st.acc).add(st.lr).add(st.grad_norm)
        .add(static_cast<double>(N) / dt).add(dt).add(static_cast<int64_t>(model.scored()))
        .add(static_cast<int64_t>(st.skipped))
        .add(st.epsilon).add(st.tau).add(st.surprise).add(st.expert_surprise).add(st.gating_surprise).add(st.pi)
        .add(st.lr_mod_expert).add(st.lr_mod_gating).add(st.gating_loss).add(st.routing_acc).add(st.k_mean);
    for (int32_t n : model.expert_tokens()) metrics.add(static_cast<int64_t>(n));
    for (int l = 0; l < mc.layers && mc.is_moe(); ++l)
      metrics.add(static_cast<int64_t>(st.smk_mask.empty() ? 0u : st.smk_mask[static_cast<size_t>(l)]));
    for (int l = 0; l < mc.layers && mc.memory_routing(); ++l) {
      const bool have = !st.buffer_size.empty();
      metrics.add(static_cast<int64_t>(have ? st.buffer_size[static_cast<size_t>(l)] : ses.pilf.buffers[static_cast<size_t>(l)].size()));
      metrics.add(static_cast<int64_t>(have ? st.prototypes[static_cast<size_t>(l)] : ses.pilf.buffers[static_cast<size_t>(l)].active_prototypes()));
    }
    metrics.end_row();
    progress.step(step, st.loss, st.acc, static_cast<double>(N) / dt);
    if (st.skipped) {
      ++skipped_total;
      ++skipped_in_a_row;
      const std::string what = std::isfinite(st.loss) ? "gradient norm " + format_roundtrip(st.grad_norm)
                                                      : "loss " + format_roundtrip(st.loss);
      progress.line("step " + std::to_string(step + 1) + ": " + what + "; step skipped, nothing updated (" +
                    std::to_string(skipped_in_a_row) + " in a row)");
      if (skipped_in_a_row >= cfg.max_bad_steps)
        throw RuntimeError("stopping at step " + std::to_string(step + 1) + ": " + std::to_string(skipped_in_a_row) +
                           " steps in a row had NaN or Inf loss or gradients (--max-bad-steps " +
                           std::to_string(cfg.max_bad_steps) + "); lower --lr or check the data. Metrics so far are in " +
                           cfg.out + "/metrics.csv");
    } else {
      skipped_in_a_row = 0;
    }
    if (cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0) {
      last = run_eval_now(step + 1);
      last_eval_step = step + 1;
    }
  }
  if (last_eval_step != cfg.steps) last = run_eval_now(cfg.steps);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
  const std::string snap = write_snapshot(cfg.out, cfg.steps, model.table(), model.params.data(), ini);
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "done: %lld steps (%lld skipped) in %s | %.0f tokens/s | %.2f GFLOP/s (model FLOPs) | final held-out accuracy %.4f, loss %.4f",
                static_cast<long long>(cfg.steps), static_cast<long long>(skipped_total), format_duration(wall).c_str(),
                static_cast<double>(N) * static_cast<double>(cfg.steps) / busy, flops / busy * 1e-9, last.acc, last.loss);
  progress.line(buf);
  progress.line("run directory: " + cfg.out + " (config.ini, metrics.csv, eval.csv, logs/, snapshot " +
                fs::path(snap).filename().string() + ")");
  return 0;
}

}  // namespace hyperrnn
