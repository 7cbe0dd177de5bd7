// `hyperrnn eval --snapshot PATH`: rebuilds the model from the snapshot's own configuration and
// evaluates it on the held-out stream, on any number of ranks that fits the run's layout, in global
// batches cut into the run's shards (so the run's own final evaluation is reproduced exactly).
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "app/commands.hpp"
#include "app/hyper_state.hpp"
#include "io/csv.hpp"
#include "io/h5.hpp"
#include "core/error.hpp"
#include "io/snapshot.hpp"

namespace hyperrnn {

int run_eval(Comm& comm, const RunConfig& cli) {
  RunConfig cfg;
  const SnapshotInfo snap = open_option_snapshot(comm, cli.snapshot, "snapshot", cfg, [&](const RunConfig& c) {
    try {
      validate_layout(c, comm.size());
    } catch (const UsageError&) {  // advice in eval's own terms: the run's layout is fixed
      throw UsageError("ranks: this snapshot's run has " + std::to_string(c.shards) + " shards and " +
                       std::to_string(c.model_config().is_moe() ? c.experts : 0) +
                       " experts per layer; run eval on a rank count that divides the shards (and is at most the experts), not " +
                       std::to_string(comm.size()));
    }
  });
  const ModelConfig mc = cfg.model_config();
  if (cli.eval_recurrent && !mc.is_rwkv())
    throw UsageError("option '--recurrent': needs model rwkv7 (this snapshot's model is " + cfg.model +
                     ", whose attention has no fixed-size recurrent state; its KV cache size is printed instead)");
  const int64_t chunk = cli.batch > 0 ? cli.batch : cfg.batch;  // global samples per evaluation batch
  const int64_t samples = cli.eval_samples > 0 ? cli.eval_samples : cfg.eval_samples;  // default: the run's own
  Parallel par(&comm, static_cast<int>(cfg.shards), mc.is_moe() ? mc.experts : 0);
  const int S = static_cast<int>(cfg.shards);
  const int B = static_cast<int>((chunk + S - 1) / S * (S / par.P));  // largest local block of a chunk
  Transformer<float> model(mc, B, static_cast<int>(cfg.scored_per_batch(B)), &par);
  read_tensors(snap, model.table(), "params", model.params.data(), &par);
  // model pilf routes through its GatingTransformer and experience buffers: restore them too
  PilfState<float> pilf(cfg.pilf_config(), mc, B, cfg.seed, cfg.adamw_config());
  if (mc.memory_routing()) {
    const H5File f(snap.manifest, H5File::Mode::Read);
    read_pilf_state(f, pilf);
    pilf.attach(model);
  }
  Batch batch;
  batch.resize(B, static_cast<int>(cfg.positions()));
  EvalResult r;
  const char* split = "heldout";
  if (cfg.image_task()) {
    const FmnistTask task(cfg.fmnist_dir, 1);
    batch.images.assign(static_cast<size_t>(B) * FmnistTask::kH * FmnistTask::kW, 0.0f);
    r = evaluate_fmnist(model, task, batch, -1, samples, chunk, cli.eval_recurrent);
    split = "test";
  } else {
    MqarGenerator gen(cfg.mqar_config());
    r = evaluate_heldout(model, gen, batch, cfg.seed, samples, chunk, cli.eval_recurrent);
  }
  if (comm.rank() == 0) {
    std::printf("snapshot %s (step %lld, %s on %s): %s loss %s acc %s (%lld samples%s)\n",  // round-trip exact
                snap.manifest.c_str(), static_cast<long long>(snap.step), cfg.model.c_str(), cfg.task.c_str(), split,
                format_roundtrip(r.loss).c_str(), format_roundtrip(r.acc).c_str(), static_cast<long long>(r.samples),
                cli.eval_recurrent ? ", recurrent: one token at a time" : "");
    // memory per sequence: the fixed recurrent state, or the KV cache at this sequence length
    const int64_t Lp = cfg.positions(), sf = model.state_floats_per_sequence(Lp);
    if (mc.is_rwkv())
      std::printf("recurrent state per sequence: %lld floats (%lld bytes fp32), fixed for every sequence length\n",
                  static_cast<long long>(sf), static_cast<long long>(4 * sf));
    else
      std::printf("KV cache per sequence at %lld positions: %lld floats (%lld bytes fp32), growing by %lld floats per position\n",
                  static_cast<long long>(Lp), static_cast<long long>(sf), static_cast<long long>(4 * sf),
                  static_cast<long long>(model.state_floats_per_sequence(1)));
    // ... and one CSV row (appended; the header written with the file)
    namespace fs = std::filesystem;
    const std::string csv = cli.eval_csv.empty() ? (fs::path(snap.dir).parent_path().parent_path() / "eval-snapshots.csv").string()
                                                 : cli.eval_csv;
    if (csv != "-") {
      const std::vector<std::string> header = {"snapshot", "step", "split", "samples", "batch", "ranks", "loss", "acc"};
      CsvWriter w;
      std::error_code ec;
      if (fs::exists(csv, ec) && fs::file_size(csv, ec) > 0) w.open_append(csv, header);
      else w.open(csv, header);
      w.add(snap.dir).add(snap.step).add(std::string(split)).add(r.samples).add(chunk).add(static_cast<int64_t>(comm.size()))
          .add(r.loss).add(r.acc).end_row();
      std::printf("result appended to %s\n", csv.c_str());
    }
  }
  return 0;
}

}  // namespace hyperrnn
