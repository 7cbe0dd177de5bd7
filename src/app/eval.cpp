// `hyperrnn eval --snapshot PATH`: rebuilds the model from the snapshot's own configuration and
// evaluates it on the held-out stream, on any number of ranks that fits the run's layout, in global
// batches cut into the run's shards (so the run's own final evaluation is reproduced exactly).
#include <cstdio>

#include "app/commands.hpp"
#include "app/hyper_state.hpp"
#include "io/csv.hpp"
#include "io/h5.hpp"
#include "core/error.hpp"
#include "io/snapshot.hpp"

namespace hyperrnn {

int run_eval(Comm& comm, const RunConfig& cli) {
  SnapshotInfo snap;
  RunConfig cfg;
  collective(comm, [&] {
    try {
      snap = open_snapshot(cli.snapshot);
    } catch (const UsageError& e) {
      throw UsageError(std::string("option '--snapshot': ") + e.what());
    }
    cfg = from_ini(snap.config_ini, snap.manifest);
    validate_layout(cfg, comm.size());
  });
  const std::string bad = verify_snapshot(snap, comm.size() > 1 ? &comm : nullptr);
  if (!bad.empty()) throw UsageError("option '--snapshot': " + snap.dir + " fails verification: " + bad);
  const ModelConfig mc = cfg.model_config();
  const int64_t chunk = cli.batch > 0 ? cli.batch : cfg.batch;  // global samples per evaluation batch
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
    r = evaluate_fmnist(model, task, batch, -1, cli.eval_samples, chunk);
    split = "test";
  } else {
    MqarGenerator gen(cfg.mqar_config());
    r = evaluate_heldout(model, gen, batch, cfg.seed, cli.eval_samples, chunk);
  }
  if (comm.rank() == 0)
    std::printf("snapshot %s (step %lld, %s on %s): %s loss %s acc %s (%lld samples)\n",  // round-trip exact
                snap.manifest.c_str(), static_cast<long long>(snap.step), cfg.model.c_str(), cfg.task.c_str(), split,
                format_roundtrip(r.loss).c_str(), format_roundtrip(r.acc).c_str(), static_cast<long long>(r.samples));
  return 0;
}

}  // namespace hyperrnn
