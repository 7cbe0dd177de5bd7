// `hyperrnn eval --snapshot PATH`: rebuilds the model from the snapshot's own configuration and
// evaluates it on the held-out stream.
#include <cstdio>

#include "app/commands.hpp"
#include "core/error.hpp"
#include "io/snapshot.hpp"

namespace hyperrnn {

int run_eval(Comm& comm, const RunConfig& cli) {
  const SnapshotInfo snap = open_snapshot(cli.snapshot);
  const RunConfig cfg = from_ini(snap.config_ini, snap.manifest);
  const ModelConfig mc = cfg.model_config();
  const int B = static_cast<int>(cli.batch);
  Transformer<float> model(mc, B, B * static_cast<int>(cfg.kv_pairs));
  read_snapshot_params(snap, model.table(), model.params.data());
  MqarGenerator gen(cfg.mqar_config());
  Batch batch;
  batch.resize(B, static_cast<int>(cfg.seq_len));
  const EvalResult r = evaluate_heldout(model, gen, batch, cfg.seed, cli.eval_samples);
  if (comm.rank() == 0)
    std::printf("snapshot %s (step %lld, %s on %s): heldout loss %.6f acc %.6f (%lld samples)\n",
                snap.manifest.c_str(), static_cast<long long>(snap.step), cfg.model.c_str(), cfg.task.c_str(),
                r.loss, r.acc, static_cast<long long>(r.samples));
  return 0;
}

}  // namespace hyperrnn
