// `hyperrnn inspect PATH`: what a snapshot holds (step, model, layout, tensors with shapes and
// files, the metrics row of its step), a full verification, and theta's digest. Exit status 1 on
// any integrity failure, 2 when PATH is not a snapshot at all.
#include <cstdio>
#include <sstream>

#include "app/commands.hpp"
#include "app/hyper_state.hpp"
#include "core/error.hpp"
#include "io/snapshot.hpp"

namespace hyperrnn {

namespace {
std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}
std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep)) out.push_back(cur);
  return out;
}
}  // namespace

int run_inspect(Comm& comm, const std::string& path) {
  SnapshotInfo snap;
  RunConfig cfg;
  collective(comm, [&] {
    snap = open_snapshot(path);
    cfg = from_ini(snap.config_ini, snap.manifest);
  });
  const bool root = comm.rank() == 0;
  auto say = [root](const std::string& s) {
    if (root) std::printf("%s\n", s.c_str());
  };
  const ModelConfig mc = cfg.model_config();
  Transformer<float> model(mc, 1, 1);
  say("snapshot: " + snap.dir);
  say("format: hyperrnn-snapshot-v1, written by " + snap.code_version);
  say("step: " + std::to_string(snap.step) + " of " + std::to_string(cfg.steps));
  say("model: " + cfg.model + " on " + cfg.task + " (d-model " + std::to_string(cfg.d_model) + ", layers " +
      std::to_string(cfg.layers) + ", heads " + std::to_string(cfg.heads) +
      (mc.is_moe() ? ", experts " + std::to_string(cfg.experts) + ", top-k " + std::to_string(cfg.top_k) : std::string()) +
      (mc.is_rwkv() ? " of size " + std::to_string(cfg.head_size) + ", recurrent state " +
                          std::to_string(model.state_floats_per_sequence(cfg.positions())) + " floats per sequence"
                    : std::string()) + ")");
  std::string layout = "layout: " + std::to_string(snap.files) + " shard file(s) (one per rank), batch " +
                       std::to_string(cfg.batch) + " in " + std::to_string(cfg.shards) + " canonical shards";
  if (mc.is_moe())
    for (int r = 0; r < snap.files; ++r)
      layout += "; " + shard_file_name(r, snap.files) + ": experts " + std::to_string(static_cast<int64_t>(mc.experts) * r / snap.files) +
                "-" + std::to_string(static_cast<int64_t>(mc.experts) * (r + 1) / snap.files - 1);
  say(layout);
  say("tensors (" + std::to_string(model.table().size()) + ", " + std::to_string(model.table().elements()) +
      " parameters; each also under adam/m/ and adam/v/):");
  for (const TensorInfo& t : model.table().entries()) {
    say("  params/" + t.name + " " + shape_text(t.shape) + " " +
        (t.expert < 0 ? std::string("manifest") : shard_file_name(Parallel::owner_of(t.expert, mc.experts, snap.files), snap.files)));
  }
  {
    const H5File f(snap.manifest, H5File::Mode::Read);
    const std::vector<std::string> h = split(f.attr_string("metrics_header"), ','), v = split(f.attr_string("metrics_row"), ',');
    std::string m = "metrics at step " + std::to_string(snap.step) + ":";
    for (size_t i = 0; i < h.size() && i < v.size(); ++i) m += " " + h[i] + "=" + v[i];
    say(m);
  }
  const std::string bad = verify_snapshot(snap, comm.size() > 1 ? &comm : nullptr);
  if (!bad.empty()) {
    say("verification: FAILED: " + bad);
    if (root) std::fprintf(stderr, "hyperrnn: error: snapshot %s is corrupt: %s\n", snap.dir.c_str(), bad.c_str());
    return 1;
  }
  say("verification: OK (manifest and " + std::to_string(snap.files) +
      " shard file(s): every dataset's sha256 and Fletcher32, every shard file's sha256, run and step attributes)");
  read_tensors(snap, model.table(), "params", model.params.data());
  PilfState<float> pilf(cfg.pilf_config(), mc, 1, cfg.seed, cfg.adamw_config());
  const H5File f(snap.manifest, H5File::Mode::Read);
  read_pilf_state(f, pilf);
  say("theta_sha256: " + theta_sha256(model, &pilf));
  return 0;
}

}  // namespace hyperrnn
