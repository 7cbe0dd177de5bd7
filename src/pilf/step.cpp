// The hyper-step and the PILF state it evolves.
#include "pilf/step.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.hpp"
#include "nn/ops.hpp"

namespace hyperrnn {

namespace {
using pilf::SmkMode;

GatingConfig gating_config(const PilfConfig& c, const ModelConfig& mc) {
  GatingConfig g;
  g.d_model = mc.d_model;
  g.heads = c.gating_heads;
  g.layers = c.gating_layers;
  g.experts = mc.experts;
  g.history = c.history;
  g.banks = mc.layers;
  g.init_scale = mc.init_scale;
  return g;
}
}  // namespace

template <class T>
PilfState<T>::PilfState(const PilfConfig& c, const ModelConfig& m, int batch_capacity, uint64_t sd,
                        const nn::AdamWConfig& gating_adamw)
    : cfg(c), mc(m), seed(sd), pilr_expert(c.pilr_cfg), pilr_gating(c.pilr_cfg) {
  const int L = mc.layers;
  if (mc.memory_routing()) {
    gating = std::make_unique<GatingTransformer<T>>(gating_config(c, m), std::max(batch_capacity, c.meta_batch));
    gating->init(sd);
    gating_opt = std::make_unique<nn::AdamW<T>>(gating->table(), gating_adamw);
    for (int l = 0; l < L; ++l) buffers.emplace_back(c.buffer_capacity, mc.d_model, mc.experts, c.priority_decay);
    rs_mu.assign(static_cast<size_t>(L), 0.0);
    rs_var.assign(static_cast<size_t>(L), 1.0);
  }
  s.q.resize(static_cast<size_t>(L));
  s.r.resize(static_cast<size_t>(L));
}

template <class T>
void PilfState<T>::attach(Transformer<T>& model) {
  if (!model.config().memory_routing()) return;
  model.set_memory_router([this](int l, int first, const T* q, int B, T* mu_ls, int32_t* k) { route(l, first, q, B, mu_ls, k); });
}

template <class T>
int PilfState<T>::dynamic_k(double r, int l) const {
  const double z = rs_steps == 0 ? 0.0 : (r - rs_mu[static_cast<size_t>(l)]) / std::sqrt(rs_var[static_cast<size_t>(l)] + 1e-9);
  const double phi = 0.5 * std::erfc(-z / std::sqrt(2.0));
  const int k = cfg.k_min + static_cast<int>(std::lround((mc.top_k - cfg.k_min) * phi));
  return std::clamp(k, cfg.k_min, mc.top_k);
}

template <class T>
double PilfState<T>::step_flops(int B, bool meta) const {
  if (!gating) return 0.0;
  const double L = mc.layers;
  return L * gating->forward_flops(B) + (meta ? 3.0 * L * gating->forward_flops(cfg.meta_batch) : 0.0);
}

// Per-sample Gaussian scores of q under its own routing set: scores (E) for one q.
template <class T>
static void score_one(T* scores, typename PilfState<T>::Scratch& s, const T* q, const T* mu_ls, int C, int E) {
  s.sc_w.resize(static_cast<size_t>(E) * C);
  s.sc_m.resize(static_cast<size_t>(E) * C);
  s.sc_c.resize(static_cast<size_t>(E));
  s.sc_sq.resize(static_cast<size_t>(C));
  nn::gaussian_scores_forward<T>(scores, s.sc_w.data(), s.sc_m.data(), s.sc_c.data(), s.sc_sq.data(), q, mu_ls,
                                 mu_ls + static_cast<int64_t>(E) * C, 1, C, E);
}

template <class T>
void PilfState<T>::route(int l, int first, const T* q, int B, T* mu_ls, int32_t* k) {
  const int C = mc.d_model, E = mc.experts, Kh = cfg.history;
  const size_t L = static_cast<size_t>(l);
  // shards arrive in order from sample 0: the layer's q (and r) cover this rank's samples
  std::vector<float>& qall = s.q[L];
  qall.resize(static_cast<size_t>(first + B) * C);
  float* qf = qall.data() + static_cast<int64_t>(first) * C;
  for (int64_t i = 0; i < static_cast<int64_t>(B) * C; ++i) qf[i] = static_cast<float>(q[i]);
  s.histf.resize(static_cast<size_t>(B) * Kh * C);
  buffers[L].retrieve(s.histf.data(), qf, B, Kh);
  s.hist.assign(s.histf.begin(), s.histf.end());
  gating->forward(mu_ls, q, s.hist.data(), B, l);
  if (!cfg.dynamic_top_k) return;
  // dynamic top-k: each sample's routing surprise, then its k
  s.r[L].resize(static_cast<size_t>(first + B));
  s.scores.resize(static_cast<size_t>(E));
  for (int b = 0; b < B; ++b) {
    score_one<T>(s.scores.data(), s, q + static_cast<int64_t>(b) * C, mu_ls + static_cast<int64_t>(b) * 2 * E * C, C, E);
    double best = s.scores[0];
    for (int e = 1; e < E; ++e) best = std::max(best, static_cast<double>(s.scores[static_cast<size_t>(e)]));
    double& r = s.r[L][static_cast<size_t>(first + b)];
    r = -best / C;
    k[b] = dynamic_k(r, l);
  }
}

namespace {

// Meta-training of one MoE layer's GatingTransformer bank on n buffer samples: BCE with logits
// between the per-expert Gaussian scores of each sample's q and its stored SMK action. Gradients
// accumulate into the GatingTransformer; returns the mean BCE and sets the routing accuracy.
template <class T>
double meta_layer(PilfState<T>& ps, int l, const std::vector<int>& idx, double& routing_acc) {
  const ModelConfig& mc = ps.mc;
  const int C = mc.d_model, E = mc.experts, Kh = ps.cfg.history, n = static_cast<int>(idx.size());
  const int64_t EC = static_cast<int64_t>(E) * C;
  pilf::ExperienceBuffer& buf = ps.buffers[static_cast<size_t>(l)];
  auto& s = ps.s;
  s.qf.resize(static_cast<size_t>(n) * C);
  s.action.resize(static_cast<size_t>(n) * E);
  for (int b = 0; b < n; ++b) {
    std::copy(buf.q(idx[static_cast<size_t>(b)]), buf.q(idx[static_cast<size_t>(b)]) + C, s.qf.begin() + static_cast<int64_t>(b) * C);
    std::copy(buf.action(idx[static_cast<size_t>(b)]), buf.action(idx[static_cast<size_t>(b)]) + E, s.action.begin() + static_cast<int64_t>(b) * E);
  }
  s.histf.resize(static_cast<size_t>(n) * Kh * C);
  buf.retrieve(s.histf.data(), s.qf.data(), n, Kh);
  s.qt.assign(s.qf.begin(), s.qf.end());
  s.hist.assign(s.histf.begin(), s.histf.end());
  s.mu_ls.resize(static_cast<size_t>(n) * 2 * EC);
  s.dmu_ls.assign(static_cast<size_t>(n) * 2 * EC, T(0));
  ps.gating->forward(s.mu_ls.data(), s.qt.data(), s.hist.data(), n, l);
  s.scores.resize(static_cast<size_t>(E));
  s.dscores.resize(static_cast<size_t>(E));
  s.sc_ec.resize(static_cast<size_t>(3 * EC + E));
  s.dq.resize(static_cast<size_t>(C));
  double loss = 0.0, acc = 0.0;
  const double inv = 1.0 / (static_cast<double>(n) * E);
  const int K = mc.top_k;
  for (int b = 0; b < n; ++b) {
    const T* q = s.qt.data() + static_cast<int64_t>(b) * C;
    const T* mu = s.mu_ls.data() + static_cast<int64_t>(b) * 2 * EC;
    score_one<T>(s.scores.data(), s, q, mu, C, E);
    const uint8_t* y = s.action.data() + static_cast<int64_t>(b) * E;
    for (int e = 0; e < E; ++e) {
      const double x = s.scores[static_cast<size_t>(e)], t = y[e] ? 1.0 : 0.0;
      loss += std::max(x, 0.0) - x * t + std::log1p(std::exp(-std::abs(x)));
      const double sig = x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x));
      s.dscores[static_cast<size_t>(e)] = static_cast<T>((sig - t) * inv);
    }
    // routing accuracy: share of the top-k experts by score (ties: lower index) in the action
    int hits = 0;
    std::vector<uint8_t>& taken = s.taken;
    taken.assign(static_cast<size_t>(E), 0);
    for (int j = 0; j < K; ++j) {
      int best = -1;
      for (int e = 0; e < E; ++e)
        if (!taken[static_cast<size_t>(e)] && (best < 0 || s.scores[static_cast<size_t>(e)] > s.scores[static_cast<size_t>(best)])) best = e;
      taken[static_cast<size_t>(best)] = 1;
      hits += y[best] ? 1 : 0;
    }
    acc += static_cast<double>(hits) / K;
    T* dmu = s.dmu_ls.data() + static_cast<int64_t>(b) * 2 * EC;
    nn::gaussian_scores_backward<T>(s.dq.data(), dmu, dmu + EC, s.sc_ec.data(), s.dscores.data(), q, s.sc_sq.data(), mu,
                                    s.sc_w.data(), s.sc_m.data(), 1, C, E);
  }
  ps.gating->backward(s.dmu_ls.data());
  routing_acc = acc / n;
  return loss * inv;
}

}  // namespace

template <class T>
StepStats train_step(Transformer<T>& model, nn::AdamW<T>& opt, const Batch& batch, const StepConfig& sc,
                     int64_t step, PilfState<T>* ps) {
  static const PilfConfig plain{};
  const PilfConfig& pc = ps ? ps->cfg : plain;
  const ModelConfig& mc = model.config();
  const int Lm = mc.is_moe() ? mc.layers : 0, E = mc.experts;
  Parallel& par = model.parallel();
  StepStats st;
  st.lr = nn::lr_at(step, sc.total_steps, sc.warmup, sc.lr, sc.lr_min_ratio);
  st.loss = model.forward(batch);
  st.acc = model.accuracy();
  // experts per token actually used
  if (mc.is_moe()) {
    double used = 0.0;
    for (int32_t t : model.expert_tokens()) used += t;
    st.k_mean = used / (static_cast<double>(model.global_samples()) * batch.T * Lm);
  }
  if (!std::isfinite(st.loss)) {
    st.skipped = true;
    return st;
  }
  model.zero_grad();
  model.backward();
  pilf::GradNorms local_gn;
  pilf::GradNorms& gn = ps ? ps->s.gn : local_gn;  // its per-expert vector is reused across steps
  // per-tensor sums of squares of what this rank holds, merged exactly over ranks
  std::vector<double> local_sq;
  std::vector<double>& sq = ps ? ps->s.sq : local_sq;
  pilf::tensor_sq(sq, model.table(), model.grads.data(), par.P > 1 ? par.rank : -1);
  par.merge_owned(sq.data(), sq.size());
  pilf::norms_from_sq(gn, model.table(), sq, Lm, E);
  double routing_sq = 0.0;  // pilf: the task-loss gradient at the routing distributions
  if (mc.memory_routing()) {
    // per shard (samples are contiguous in the routing gradient), then over shards in order
    const int Sl = batch.shard_samples.empty() ? 1 : static_cast<int>(batch.shard_samples.size());
    const int64_t per_sample = 2LL * E * mc.d_model;
    std::vector<double>& part = ps->s.shard_part;
    part.assign(static_cast<size_t>(Sl), 0.0);
    for (int l = 0; l < Lm; ++l) {
      const T* g = model.routing_grad(l);
      int64_t b0 = 0;
      for (int sh = 0; sh < Sl; ++sh) {
        const int64_t nb = batch.shard_samples.empty() ? batch.B : batch.shard_samples[static_cast<size_t>(sh)];
        double acc = 0.0;
        for (int64_t i = b0 * per_sample; i < (b0 + nb) * per_sample; ++i) acc += static_cast<double>(g[i]) * g[i];
        part[static_cast<size_t>(sh)] += acc;
        b0 += nb;
      }
    }
    par.sum_over_shards(part.data(), 1, &routing_sq);
  }
  const int Dn = static_cast<int>(TensorKind::Dense), Ex = static_cast<int>(TensorKind::Expert), Ga = static_cast<int>(TensorKind::Gating);
  st.grad_norm = gn.total;
  st.expert_surprise = std::hypot(gn.by_kind[Dn], gn.by_kind[Ex]);
  st.gating_surprise = std::sqrt(gn.by_kind[Ga] * gn.by_kind[Ga] + routing_sq);
  st.surprise = std::hypot(st.expert_surprise, st.gating_surprise);
  if (!std::isfinite(st.grad_norm) || !std::isfinite(st.surprise)) {
    st.skipped = true;
    return st;
  }
  // PI assessment
  st.epsilon = st.loss;
  st.tau = model.mean_entropy();
  st.pi = pilf::predictive_integrity({st.epsilon, st.tau, st.surprise, st.expert_surprise, st.gating_surprise}, pc.pi);

  // Surprise-Min-K per MoE layer: dropped experts' tensors are skipped by AdamW.
  const ParamTable& table = model.table();
  std::vector<uint8_t> local_skip;
  std::vector<uint8_t>& skip = ps ? ps->s.skip : local_skip;
  skip.assign(static_cast<size_t>(table.size()), 0);
  st.smk_mask.assign(static_cast<size_t>(Lm), 0u);
  std::vector<uint8_t> local_keep;
  std::vector<uint8_t>& keep = ps ? ps->s.keep : local_keep;
  keep.resize(static_cast<size_t>(std::max(E, 1)));
  if (pc.smk_per_token)  // research variant: an expert's gradient norm per token it processed
    for (int l = 0; l < Lm; ++l)
      for (int e = 0; e < E; ++e) {
        const int32_t n = model.expert_tokens()[static_cast<size_t>(l * E + e)];
        if (n > 0) gn.expert[static_cast<size_t>(l * E + e)] /= n;
      }
  for (int l = 0; l < Lm; ++l) {
    pilf::surprise_min_k(keep.data(), gn.expert.data() + static_cast<int64_t>(l) * E,
                         model.expert_tokens().data() + static_cast<int64_t>(l) * E, E, pc.min_k, pc.smk);
    for (int e = 0; e < E; ++e)
      if (keep[static_cast<size_t>(e)]) st.smk_mask[static_cast<size_t>(l)] |= 1u << e;
  }
  bool any_skip = false;
  for (int i = 0; i < table.size(); ++i) {
    const TensorInfo& t = table[i];
    // (another rank's expert is not held here: AdamW leaves it alone by itself)
    if (t.kind == TensorKind::Expert && !(st.smk_mask[static_cast<size_t>(t.layer)] >> t.expert & 1u)) {
      skip[static_cast<size_t>(i)] = 1;
      any_skip = true;
    }
  }

  // PILR
  if (pc.pilr == PilrMode::Single) {
    st.lr_mod_expert = st.lr_mod_gating = ps->pilr_expert.step(st.surprise);
  } else if (pc.pilr == PilrMode::Dual) {
    st.lr_mod_expert = ps->pilr_expert.step(st.expert_surprise);
    st.lr_mod_gating = ps->pilr_gating.step(st.gating_surprise);
  }
  double lr_by_kind[3];
  lr_by_kind[Dn] = lr_by_kind[Ex] = st.lr * st.lr_mod_expert;
  // the gating group follows the same schedule from its own peak rate
  const double gating_lr = sc.gating_lr > 0.0 ? st.lr * (sc.gating_lr / sc.lr) : st.lr;
  lr_by_kind[Ga] = gating_lr * st.lr_mod_gating;
  const int64_t n = table.total();
  const auto t_opt = std::chrono::steady_clock::now();
  nn::clip_grads(model.grads.data(), n, st.grad_norm, sc.grad_clip);
  opt.step(model.params.data(), model.grads.data(), lr_by_kind, any_skip ? skip.data() : nullptr);
  st.optimizer_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_opt).count();

  if (!ps || !mc.memory_routing()) return st;
  // Experience curation: each sample of the global batch offers (q, this layer's SMK set) with
  // priority 1 - PI_b, PI_b from the sample's own loss and entropy and the batch's surprise. Every
  // rank gathers all candidates in rank (= global sample) order, so the buffers stay identical.
  const int B = model.global_samples(), Bl = batch.B;
  auto& s = ps->s;
  s.eps.resize(static_cast<size_t>(Bl));
  s.tau.resize(static_cast<size_t>(Bl));
  s.pi.resize(static_cast<size_t>(B));
  model.sample_loss_entropy(s.eps.data(), s.tau.data());
  s.sample_local.resize(2 * static_cast<size_t>(Bl));
  for (int b = 0; b < Bl; ++b) {
    s.sample_local[2 * static_cast<size_t>(b)] = s.eps[static_cast<size_t>(b)];
    s.sample_local[2 * static_cast<size_t>(b) + 1] = s.tau[static_cast<size_t>(b)];
  }
  s.sample_all.resize(2 * static_cast<size_t>(B));
  HYPERRNN_CHECK(static_cast<int64_t>(Bl) * par.P == B, "curation: every rank holds an equal block of the batch");
  par.allgather(s.sample_local.data(), s.sample_local.size() * sizeof(double), s.sample_all.data());
  for (int b = 0; b < B; ++b)
    s.pi[static_cast<size_t>(b)] = pilf::predictive_integrity(
        {s.sample_all[2 * static_cast<size_t>(b)], s.sample_all[2 * static_cast<size_t>(b) + 1], st.surprise, st.expert_surprise, st.gating_surprise}, pc.pi);
  s.action.resize(static_cast<size_t>(B) * E);
  st.buffer_size.resize(static_cast<size_t>(Lm));
  st.prototypes.resize(static_cast<size_t>(Lm));
  for (int l = 0; l < Lm; ++l) {
    for (int b = 0; b < B; ++b)
      for (int e = 0; e < E; ++e) s.action[static_cast<size_t>(b) * E + e] = st.smk_mask[static_cast<size_t>(l)] >> e & 1u;
    const std::vector<float>& ql = s.q[static_cast<size_t>(l)];
    s.q_all.resize(static_cast<size_t>(B) * mc.d_model);
    par.allgather(ql.data(), static_cast<size_t>(Bl) * mc.d_model * sizeof(float), s.q_all.data());
    ps->buffers[static_cast<size_t>(l)].add(s.q_all.data(), s.action.data(), s.pi.data(), B);
  }
  // dynamic top-k statistics: EMA of the batch's routing surprise (first batch initialises)
  for (int l = 0; l < Lm && pc.dynamic_top_k; ++l) {
    std::vector<double>& r = s.r_all;
    r.resize(static_cast<size_t>(B));
    par.allgather(s.r[static_cast<size_t>(l)].data(), static_cast<size_t>(Bl) * sizeof(double), r.data());
    double mean = 0.0, var = 0.0;
    for (double v : r) mean += v;
    mean /= static_cast<double>(r.size());
    for (double v : r) var += (v - mean) * (v - mean);
    var /= static_cast<double>(r.size());
    const double beta = pc.pilr_cfg.beta;
    double& mu = ps->rs_mu[static_cast<size_t>(l)];
    double& vv = ps->rs_var[static_cast<size_t>(l)];
    if (ps->rs_steps == 0) {
      mu = mean;
      vv = var;
    } else {
      mu = (1.0 - beta) * mu + beta * mean;
      vv = (1.0 - beta) * vv + beta * (var + (mean - mu) * (mean - mu));
    }
  }
  if (pc.dynamic_top_k) ++ps->rs_steps;

  // Meta-training of the GatingTransformer every meta_every steps.
  if ((step + 1) % pc.meta_every == 0) {
    ps->gating->zero_grad();
    double loss = 0.0, acc = 0.0;
    int used = 0;
    std::vector<std::vector<int>>& drawn = ps->s.drawn;
    drawn.resize(static_cast<size_t>(Lm));
    for (int l = 0; l < Lm; ++l) {
      drawn[static_cast<size_t>(l)] = ps->buffers[static_cast<size_t>(l)].sample(pc.meta_batch, ps->seed, static_cast<uint32_t>(step), static_cast<uint32_t>(l));
      if (drawn[static_cast<size_t>(l)].empty()) continue;
      double a = 0.0;
      loss += meta_layer(*ps, l, drawn[static_cast<size_t>(l)], a);
      acc += a;
      ++used;
    }
    if (used > 0) {
      const double gnorm = nn::grad_norm(ps->gating->grads.data(), ps->gating->table().total());
      if (std::isfinite(loss) && std::isfinite(gnorm)) {
        ps->gating_opt->step(ps->gating->params.data(), ps->gating->grads.data(), pc.meta_lr * st.lr_mod_gating);
        st.meta = true;
        st.gating_loss = loss / used;
        st.routing_acc = acc / used;
      }
      for (int l = 0; l < Lm; ++l) ps->buffers[static_cast<size_t>(l)].decay(drawn[static_cast<size_t>(l)]);
    }
  }
  for (int l = 0; l < Lm; ++l) {
    st.buffer_size[static_cast<size_t>(l)] = ps->buffers[static_cast<size_t>(l)].size();
    st.prototypes[static_cast<size_t>(l)] = ps->buffers[static_cast<size_t>(l)].active_prototypes();
  }
  return st;
}

template class PilfState<float>;
template class PilfState<double>;
template StepStats train_step<float>(Transformer<float>&, nn::AdamW<float>&, const Batch&, const StepConfig&, int64_t, PilfState<float>*);
template StepStats train_step<double>(Transformer<double>&, nn::AdamW<double>&, const Batch&, const StepConfig&, int64_t, PilfState<double>*);

}  // namespace hyperrnn
