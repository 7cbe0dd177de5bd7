// `hyperrnn eval --snapshot PATH`: rebuilds the model from the snapshot's own configuration and
// evaluates it on the held-out stream.
#include <cstdio>

#include "app/commands.hpp"
#include "app/hyper_state.hpp"
#include "io/h5.hpp"
#include "core/error.hpp"
#include "io/snapshot.hpp"

namespace hyperrnn {

int run_eval(Comm& comm, const RunConfig& cli) {
  const SnapshotInfo snap = open_snapshot(cli.snapshot);
  const RunConfig cfg = from_ini(snap.config_ini, snap.manifest);
  const ModelConfig mc = cfg.model_config();
  const int B = static_cast<int>(cli.batch);
  Transformer<float> model(mc, B, static_cast<int>(cfg.scored_per_batch(B)));
  read_snapshot_params(snap, model.table(), model.params.data());
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
    r = evaluate_fmnist(model, task, batch, -1, cli.eval_samples);
    split = "test";
  } else {
    MqarGenerator gen(cfg.mqar_config());
    r = evaluate_heldout(model, gen, batch, cfg.seed, cli.eval_samples);
  }
  if (comm.rank() == 0)
    std::printf("snapshot %s (step %lld, %s on %s): %s loss %.6f acc %.6f (%lld samples)\n",
                snap.manifest.c_str(), static_cast<long long>(snap.step), cfg.model.c_str(), cfg.task.c_str(), split,
                r.loss, r.acc, static_cast<long long>(r.samples));
  return 0;
}

}  // namespace hyperrnn
