// Writing and reading the hyper-state of a session.
#include "app/hyper_state.hpp"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/sha256.hpp"
#include "app/commands.hpp"

namespace hyperrnn {

namespace {
// a buffer's group: one shared by every MoE layer, or one per layer
std::string buffer_group(const PilfState<float>& ps, size_t k) {
  return ps.cfg.shared_buffer ? "buffer/shared/" : "buffer/layer" + std::to_string(k) + "/";
}
std::string replay_group(size_t k, size_t j) { return "replay/" + std::to_string(k) + "/" + std::to_string(j) + "/"; }

template <class T>
void read_checked(const H5File& f, const std::string& name, std::vector<T>& out, const std::vector<int64_t>& shape) {
  if (!f.exists(name) || f.shape(name) != shape)
    throw RuntimeError(f.path() + ": dataset /" + name + " is missing or has a shape that does not match the run");
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  out.resize(static_cast<size_t>(n));
  if (n > 0) f.read(name, out.data());
}

template <class T>
void read_into(const H5File& f, const std::string& name, T* out, const std::vector<int64_t>& shape) {
  if (!f.exists(name) || f.shape(name) != shape)
    throw RuntimeError(f.path() + ": dataset /" + name + " is missing or has a shape that does not match the run");
  f.read(name, out);
}

std::string names_of(const ParamTable& t) {
  std::string s;
  for (const TensorInfo& e : t.entries()) s += e.name + "\n";
  return s;
}

// AdamW state of a table: moments per tensor (replicated here, experts in shards) and the update
// counts of every tensor, merged over ranks (a rank never updates a foreign expert, so its count
// there is at most the owner's: the maximum is the owner's).
void write_adam_replicated(H5File& f, const std::string& pre, const ParamTable& t, const nn::AdamW<float>& opt,
                           const std::vector<int64_t>& steps) {
  for (const TensorInfo& e : t.entries()) {
    if (!e.replicated()) continue;
    f.write(pre + "m/" + e.name, opt.m.data() + e.offset, e.shape);
    f.write(pre + "v/" + e.name, opt.v.data() + e.offset, e.shape);
  }
  f.write(pre + "tensor_steps", steps.data(), {static_cast<int64_t>(steps.size())});
  const int64_t st = opt.steps();
  f.write(pre + "step", &st, {1});
}
}  // namespace

void write_pilf_state(H5File& f, const PilfState<float>& ps) {
  const double pe[3] = {ps.pilr_expert.mu(), ps.pilr_expert.var(), static_cast<double>(ps.pilr_expert.steps())};
  const double pg[3] = {ps.pilr_gating.mu(), ps.pilr_gating.var(), static_cast<double>(ps.pilr_gating.steps())};
  f.write("pilf/pilr_expert", pe, {3});
  f.write("pilf/pilr_gating", pg, {3});
  if (!ps.gating) return;
  const ParamTable& t = ps.gating->table();
  for (const TensorInfo& e : t.entries()) f.write("gating/" + e.name, ps.gating->params.data() + e.offset, e.shape);
  write_adam_replicated(f, "gating_adam/", t, *ps.gating_opt, ps.gating_opt->tensor_steps);
  f.set_attr("gating_order", names_of(t));
  for (size_t l = 0; l < ps.buffers.size(); ++l) {
    const pilf::ExperienceBuffer& b = ps.buffers[l];
    const pilf::ExperienceBuffer::State s = b.state();
    const std::string g = buffer_group(ps, l);
    const int64_t n = s.size, cap = b.capacity(), C = b.dim(), E = b.experts();
    const int32_t size = s.size;
    f.write(g + "size", &size, {1});
    if (n > 0) {
      f.write(g + "q", s.q.data(), {n, C});
      f.write(g + "action", s.action.data(), {n, E});
      f.write(g + "priority", s.priority.data(), {n});
      f.write(g + "prototype_of", s.prototype_of.data(), {n});
    }
    f.write(g + "prototypes", s.prototypes.data(), {cap, C});
    f.write(g + "prototype_count", s.prototype_count.data(), {cap});
    // the cached replay sets of this buffer (meta-replay task-epoch or epoch)
    const std::vector<PilfState<float>::ReplaySet>& cache = ps.replay[l];
    const int64_t nsets = static_cast<int64_t>(cache.size());
    f.write("replay/" + std::to_string(l) + "/sets", &nsets, {1});
    for (size_t j = 0; j < cache.size(); ++j) {
      const PilfState<float>::ReplaySet& r = cache[j];
      const std::string rg = replay_group(l, j);
      const int64_t key[3] = {r.key_a, r.key_b, r.size()};
      f.write(rg + "key", key, {3});
      if (r.size() == 0) continue;
      const std::vector<int32_t> act(r.action.begin(), r.action.end());
      f.write(rg + "q", r.q.data(), {r.size(), C});
      f.write(rg + "action", act.data(), {r.size(), E});
      f.write(rg + "idx", r.idx.data(), {r.size()});
    }
  }
  const int64_t L = static_cast<int64_t>(ps.rs_mu.size());
  f.write("pilf/dynamic_k_mu", ps.rs_mu.data(), {L});
  f.write("pilf/dynamic_k_var", ps.rs_var.data(), {L});
  const double steps = static_cast<double>(ps.rs_steps);
  f.write("pilf/dynamic_k_steps", &steps, {1});
}

void read_pilf_state(const H5File& f, PilfState<float>& ps) {
  if (f.exists("pilf/pilr_expert")) {
    std::vector<double> pe, pg;
    read_checked(f, "pilf/pilr_expert", pe, {3});
    read_checked(f, "pilf/pilr_gating", pg, {3});
    ps.pilr_expert.restore(pe[0], pe[1], static_cast<int64_t>(pe[2]));
    ps.pilr_gating.restore(pg[0], pg[1], static_cast<int64_t>(pg[2]));
  }
  if (!ps.gating) return;
  const ParamTable& t = ps.gating->table();
  for (const TensorInfo& e : t.entries()) read_into(f, "gating/" + e.name, ps.gating->params.data() + e.offset, e.shape);
  nn::AdamW<float>& go = *ps.gating_opt;
  for (const TensorInfo& e : t.entries()) {
    read_into(f, "gating_adam/m/" + e.name, go.m.data() + e.offset, e.shape);
    read_into(f, "gating_adam/v/" + e.name, go.v.data() + e.offset, e.shape);
  }
  read_into(f, "gating_adam/tensor_steps", go.tensor_steps.data(), {static_cast<int64_t>(t.size())});
  int64_t gs = 0;
  read_into(f, "gating_adam/step", &gs, {1});
  go.set_steps(gs);
  for (size_t l = 0; l < ps.buffers.size(); ++l) {
    pilf::ExperienceBuffer& b = ps.buffers[l];
    const std::string g = buffer_group(ps, l);
    const int64_t cap = b.capacity(), C = b.dim(), E = b.experts();
    std::vector<int32_t> size;
    read_checked(f, g + "size", size, {1});
    pilf::ExperienceBuffer::State s;
    s.size = size[0];
    if (s.size < 0 || s.size > cap) throw RuntimeError(f.path() + ": /" + g + "size is outside [0, capacity]");
    const int64_t n = s.size;
    if (n > 0) {
      read_checked(f, g + "q", s.q, {n, C});
      read_checked(f, g + "action", s.action, {n, E});
      read_checked(f, g + "priority", s.priority, {n});
      read_checked(f, g + "prototype_of", s.prototype_of, {n});
    }
    read_checked(f, g + "prototypes", s.prototypes, {cap, C});
    read_checked(f, g + "prototype_count", s.prototype_count, {cap});
    b.restore(s);
    std::vector<int64_t> nsets;
    read_checked(f, "replay/" + std::to_string(l) + "/sets", nsets, {1});
    if (nsets[0] < 0 || nsets[0] > 1000000) throw RuntimeError(f.path() + ": /replay/" + std::to_string(l) + "/sets is out of range");
    std::vector<PilfState<float>::ReplaySet>& cache = ps.replay[l];
    cache.assign(static_cast<size_t>(nsets[0]), {});
    for (size_t j = 0; j < cache.size(); ++j) {
      PilfState<float>::ReplaySet& r = cache[j];
      const std::string rg = replay_group(l, j);
      std::vector<int64_t> key;
      read_checked(f, rg + "key", key, {3});
      r.key_a = key[0];
      r.key_b = key[1];
      const int64_t items = key[2];
      if (items < 0 || items > 100000000) throw RuntimeError(f.path() + ": /" + rg + "key holds a bad size");
      if (items == 0) continue;
      std::vector<int32_t> act;
      read_checked(f, rg + "q", r.q, {items, C});
      read_checked(f, rg + "action", act, {items, E});
      read_checked(f, rg + "idx", r.idx, {items});
      r.action.assign(act.begin(), act.end());
      for (int i : r.idx)
        if (i < 0 || i >= cap) throw RuntimeError(f.path() + ": /" + rg + "idx holds a slot outside the buffer");
    }
  }
  const int64_t L = static_cast<int64_t>(ps.rs_mu.size());
  read_checked(f, "pilf/dynamic_k_mu", ps.rs_mu, {L});
  read_checked(f, "pilf/dynamic_k_var", ps.rs_var, {L});
  std::vector<double> steps;
  read_checked(f, "pilf/dynamic_k_steps", steps, {1});
  ps.rs_steps = static_cast<int64_t>(steps[0]);
}

void read_tensors(const SnapshotInfo& snap, const ParamTable& table, const std::string& group, float* buf,
                  const Parallel* layout) {
  const H5File manifest(snap.manifest, H5File::Mode::Read);
  std::map<int, std::unique_ptr<H5File>> shards;
  int E = 0;
  for (const TensorInfo& t : table.entries()) E = std::max(E, t.expert + 1);
  for (const TensorInfo& t : table.entries()) {
    if (t.replicated()) {
      read_into(manifest, group + "/" + t.name, buf + t.offset, t.shape);
      continue;
    }
    if (layout && !layout->owns(t.expert)) continue;
    const int r = Parallel::owner_of(t.expert, E, snap.files);
    std::unique_ptr<H5File>& f = shards[r];
    if (!f) f = std::make_unique<H5File>(snap.shard_path(r), H5File::Mode::Read);
    read_into(*f, group + "/" + t.name, buf + t.offset, t.shape);
  }
}

std::string save_hyper_state(Session<float>& ses, int64_t step, const std::string& config_ini, const LoopState& loop,
                             int keep) {
  Transformer<float>& model = ses.model;
  const ParamTable& table = model.table();
  Parallel& par = ses.par;
  // update counts: merged over ranks (see write_adam_replicated)
  std::vector<int> steps_i(ses.opt.tensor_steps.begin(), ses.opt.tensor_steps.end());
  if (par.P > 1) par.comm->allreduce_max(steps_i.data(), steps_i.size());
  const std::vector<int64_t> steps(steps_i.begin(), steps_i.end());

  SnapshotWrite w;
  w.run_dir = ses.cfg.out;
  w.step = step;
  w.config_ini = config_ini;
  w.keep = keep;
  w.groups = {"params", "adam/m", "adam/v"};
  const int E = model.config().experts;
  for (const TensorInfo& t : table.entries()) {
    if (t.replicated()) continue;
    // family: the name without the expert index, e.g. layers.0.moe.experts.fc1.weight
    const std::string key = "experts." + std::to_string(t.expert) + ".";
    std::string fam = t.name;
    fam.replace(fam.find(key), key.size(), "experts.");
    w.sharded.push_back({t.name, t.shape, t.owner, fam, t.expert, E});
  }
  w.shard = [&](H5File& f) {
    for (const TensorInfo& t : table.entries()) {
      if (t.replicated() || t.owner != par.rank) continue;
      f.write("params/" + t.name, model.params.data() + t.offset, t.shape);
      f.write("adam/m/" + t.name, ses.opt.m.data() + t.offset, t.shape);
      f.write("adam/v/" + t.name, ses.opt.v.data() + t.offset, t.shape);
    }
  };
  w.manifest = [&](H5File& f) {
    f.set_attr("param_order", names_of(table));
    for (const TensorInfo& t : table.entries())
      if (t.replicated()) f.write("params/" + t.name, model.params.data() + t.offset, t.shape);
    write_adam_replicated(f, "adam/", table, ses.opt, steps);
    write_pilf_state(f, ses.pilf);
    const int64_t counters[4] = {loop.skipped_in_a_row, loop.skipped_total, loop.last_eval_step, loop.last_eval_samples};
    f.write("loop/counters", counters, {4});
    const double last_eval[2] = {loop.last_eval_loss, loop.last_eval_acc};
    f.write("loop/last_eval", last_eval, {2});
    if (!loop.marathon_best.empty()) {
      const int64_t n = static_cast<int64_t>(loop.marathon_best.size());
      f.write("loop/marathon_best", loop.marathon_best.data(), {n});
      f.write("loop/marathon_last_acc", loop.marathon_last_acc.data(), {n});
      f.write("loop/marathon_forgetting", &loop.marathon_forgetting, {1});
    }
    f.set_attr("metrics_header", loop.metrics_header);
    f.set_attr("metrics_row", loop.metrics_row);
  };
  return write_snapshot(par.P > 1 ? par.comm : nullptr, w);
}

void load_hyper_state(Session<float>& ses, const SnapshotInfo& snap, LoopState& loop) {
  Transformer<float>& model = ses.model;
  const ParamTable& table = model.table();
  read_tensors(snap, table, "params", model.params.data(), &ses.par);
  read_tensors(snap, table, "adam/m", ses.opt.m.data(), &ses.par);
  read_tensors(snap, table, "adam/v", ses.opt.v.data(), &ses.par);
  const H5File f(snap.manifest, H5File::Mode::Read);
  read_into(f, "adam/tensor_steps", ses.opt.tensor_steps.data(), {static_cast<int64_t>(table.size())});
  int64_t st = 0;
  read_into(f, "adam/step", &st, {1});
  ses.opt.set_steps(st);
  read_pilf_state(f, ses.pilf);
  int64_t counters[4];
  read_into(f, "loop/counters", counters, {4});
  loop.skipped_in_a_row = counters[0];
  loop.skipped_total = counters[1];
  loop.last_eval_step = counters[2];
  loop.last_eval_samples = counters[3];
  try {  // the snapshot step's metrics.csv row (resume checks the CSV against it)
    loop.metrics_row = f.attr_string("metrics_row");
  } catch (const std::exception&) {
    loop.metrics_row.clear();
  }
  double last_eval[2];
  read_into(f, "loop/last_eval", last_eval, {2});
  loop.last_eval_loss = last_eval[0];
  loop.last_eval_acc = last_eval[1];
  if (!loop.marathon_best.empty()) {
    const int64_t n = static_cast<int64_t>(loop.marathon_best.size());
    read_into(f, "loop/marathon_best", loop.marathon_best.data(), {n});
    read_into(f, "loop/marathon_last_acc", loop.marathon_last_acc.data(), {n});
    read_into(f, "loop/marathon_forgetting", &loop.marathon_forgetting, {1});
  }
}

std::string theta_sha256(const Transformer<float>& model, const PilfState<float>* pilf) {
  Sha256 h;
  h.update(model.params.data(), model.params.size() * sizeof(float));  // table order = buffer order
  if (pilf && pilf->gating) h.update(pilf->gating->params.data(), pilf->gating->params.size() * sizeof(float));
  return h.hex();
}

}  // namespace hyperrnn

namespace hyperrnn {

SnapshotInfo open_option_snapshot(Comm& comm, const std::string& path, const std::string& option, RunConfig& cfg,
                                  const std::function<void(const RunConfig&)>& check) {
  SnapshotInfo snap;
  collective(comm, [&] {
    try {
      snap = open_snapshot(path);
    } catch (const UsageError& e) {
      throw UsageError("option '--" + option + "': " + e.what());
    }
    cfg = from_ini(snap.config_ini, snap.manifest);
    if (check) check(cfg);
  });
  const std::string bad = verify_snapshot(snap, comm.size() > 1 ? &comm : nullptr);
  if (!bad.empty()) throw UsageError("option '--" + option + "': " + snap.dir + " fails verification: " + bad);
  return snap;
}

BranchInfo init_from_snapshot(Comm& comm, Session<float>& ses, const RunConfig& cfg) {
  BranchInfo out;
  RunConfig pcfg;
  const SnapshotInfo snap = open_option_snapshot(comm, cfg.init_from, "init-from", pcfg);
  // the model shape must fit: the same tensors with the same shapes, in the same order
  const ModelConfig pmc = pcfg.model_config();
  Transformer<float> parent(pmc, 1, 1);  // one rank's layout: the whole parent theta, for its digest
  collective(comm, [&] {
    const ParamTable& a = parent.table();
    const ParamTable& b = ses.model.table();
    if (a.size() != b.size())
      throw UsageError("option '--init-from': the snapshot's model (" + pcfg.model + ", " + std::to_string(a.size()) +
                       " tensors) does not fit this run's (" + cfg.model + ", " + std::to_string(b.size()) + " tensors)");
    for (int i = 0; i < a.size(); ++i)
      if (a[i].name != b[i].name || a[i].shape != b[i].shape)
        throw UsageError("option '--init-from': the snapshot's model does not fit this run's: tensor " + a[i].name +
                         " there, " + b[i].name + " here (or another shape); give the model options of " + snap.dir);
    if (cfg.init_optimizer && (pcfg.model == "pilf") != (cfg.model == "pilf"))
      throw UsageError("option '--init-optimizer': the snapshot's optimizer state is for model " + pcfg.model + ", this run is " +
                       cfg.model);
  });
  Transformer<float>& model = ses.model;
  read_tensors(snap, model.table(), "params", model.params.data(), &ses.par);
  if (cfg.init_optimizer) {
    read_tensors(snap, model.table(), "adam/m", ses.opt.m.data(), &ses.par);
    read_tensors(snap, model.table(), "adam/v", ses.opt.v.data(), &ses.par);
    const H5File f(snap.manifest, H5File::Mode::Read);
    read_into(f, "adam/tensor_steps", ses.opt.tensor_steps.data(), {static_cast<int64_t>(model.table().size())});
    int64_t st = 0;
    read_into(f, "adam/step", &st, {1});
    ses.opt.set_steps(st);
  }
  // pilf's GatingTransformer (and its buffers, when their layout is the same) come along
  std::unique_ptr<PilfState<float>> pps;
  const H5File f(snap.manifest, H5File::Mode::Read);
  if (pmc.memory_routing()) {
    pps = std::make_unique<PilfState<float>>(pcfg.pilf_config(), pmc, 1, pcfg.seed, pcfg.adamw_config());
    read_pilf_state(f, *pps);
  }
  out.notes.push_back("init: theta from " + snap.dir + " (step " + std::to_string(snap.step) + ")");
  if (ses.pilf.gating && pps && pps->gating) {
    const ParamTable& a = pps->gating->table();
    const ParamTable& b = ses.pilf.gating->table();
    bool same = a.size() == b.size();
    for (int i = 0; same && i < a.size(); ++i) same = a[i].name == b[i].name && a[i].shape == b[i].shape;
    if (same) {
      ses.pilf.gating->params = pps->gating->params;
      if (cfg.init_optimizer) {
        ses.pilf.gating_opt->m = pps->gating_opt->m;
        ses.pilf.gating_opt->v = pps->gating_opt->v;
        ses.pilf.gating_opt->tensor_steps = pps->gating_opt->tensor_steps;
        ses.pilf.gating_opt->set_steps(pps->gating_opt->steps());
      }
      bool buffers = ses.pilf.buffers.size() == pps->buffers.size();
      for (size_t k = 0; buffers && k < pps->buffers.size(); ++k)
        buffers = ses.pilf.buffers[k].capacity() == pps->buffers[k].capacity() && ses.pilf.buffers[k].dim() == pps->buffers[k].dim() &&
                  ses.pilf.buffers[k].experts() == pps->buffers[k].experts();
      if (buffers)
        for (size_t k = 0; k < pps->buffers.size(); ++k) ses.pilf.buffers[k].restore(pps->buffers[k].state());
      out.notes.push_back(std::string("init: the GatingTransformer") + (buffers ? " and the experience buffers" : "") +
                          " from the snapshot too" + (buffers ? "" : " (the buffers' layout differs: they start empty)"));
    } else {
      out.notes.push_back("init: the snapshot's GatingTransformer does not fit this run's: it starts from its initialisation");
    }
  }
  read_tensors(snap, parent.table(), "params", parent.params.data(), nullptr);
  out.parent_dir = snap.dir;
  out.parent_step = snap.step;
  out.parent_theta = theta_sha256(parent, pps.get());
  if (ses.par.P == 1) out.start_theta = theta_sha256(model, ses.pilf.gating ? &ses.pilf : nullptr);
  return out;
}

}  // namespace hyperrnn
