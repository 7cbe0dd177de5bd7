// The hyper-step and the PILF state it evolves.
#include "pilf/step.hpp"

#include "core/blas.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.hpp"
#include "nn/ops.hpp"
#include "parallel/threads.hpp"

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
  g.dropout = c.gating_dropout;
  return g;
}
}  // namespace

template <class T>
PilfState<T>::PilfState(const PilfConfig& c, const ModelConfig& m, int batch_capacity, uint64_t sd,
                        const nn::AdamWConfig& gating_adamw)
    : cfg(c), mc(m), seed(sd), pilr_expert(c.pilr_cfg), pilr_gating(c.pilr_cfg) {
  const int L = mc.layers;
  batch_capacity_ = batch_capacity;
  if (mc.memory_routing()) {
    // a replay set holds at most meta_batch items, or the buffer's capacity (meta_batch 0)
    const int replay_cap = c.meta_batch > 0 ? c.meta_batch : c.buffer_capacity;
    gating = std::make_unique<GatingTransformer<T>>(gating_config(c, m), std::max(batch_capacity, replay_cap));
    gating->init(sd);
    gating_opt = std::make_unique<nn::AdamW<T>>(gating->table(), gating_adamw);
    const int nbuf = c.shared_buffer ? 1 : L, width = c.shared_buffer ? L * mc.experts : mc.experts;
    for (int k = 0; k < nbuf; ++k) buffers.emplace_back(c.buffer_capacity, mc.d_model, width, c.priority_decay);
    replay.resize(static_cast<size_t>(nbuf));
    rs_mu.assign(static_cast<size_t>(L), 0.0);
    rs_var.assign(static_cast<size_t>(L), 1.0);
  }
  s.q.resize(static_cast<size_t>(L));
  s.r.resize(static_cast<size_t>(L));
  s.route_q.resize(static_cast<size_t>(L));
  s.route_hist.resize(static_cast<size_t>(L));
}

template <class T>
void PilfState<T>::attach(Transformer<T>& model) {
  if (!model.config().memory_routing()) return;
  using Shards = std::vector<typename Transformer<T>::RouteShard>;
  using GradShards = std::vector<typename Transformer<T>::RouteGradShard>;
  model.set_memory_router([this](int l, const Shards& sh) { route(l, sh); });
  if (cfg.gating_backprop) model.set_memory_router_backward([this](int l, const GradShards& sh) { route_backward(l, sh); });
}

template <class T>
const typename PilfState<T>::ReplaySet& PilfState<T>::replay_set(int k, int64_t step) {
  const pilf::ExperienceBuffer& buf = buffers[static_cast<size_t>(k)];
  auto draw = [&](ReplaySet& r) {
    const int n = cfg.meta_batch > 0 ? cfg.meta_batch : buf.size();
    r.idx = buf.sample(n, seed, static_cast<uint32_t>(step), static_cast<uint32_t>(k));
    const int C = buf.dim(), W = buf.experts();
    r.q.resize(r.idx.size() * static_cast<size_t>(C));
    r.action.resize(r.idx.size() * static_cast<size_t>(W));
    for (size_t j = 0; j < r.idx.size(); ++j) {
      std::copy_n(buf.q(r.idx[j]), C, r.q.begin() + static_cast<std::ptrdiff_t>(j) * C);
      std::copy_n(buf.action(r.idx[j]), W, r.action.begin() + static_cast<std::ptrdiff_t>(j) * W);
    }
  };
  if (cfg.meta_replay == MetaReplay::Fresh) {  // one set per buffer: a meta step uses all of them
    s.fresh.resize(buffers.size());
    draw(s.fresh[static_cast<size_t>(k)]);
    return s.fresh[static_cast<size_t>(k)];
  }
  const int64_t a = cfg.meta_replay == MetaReplay::TaskEpoch ? task : visit;
  std::vector<ReplaySet>& cache = replay[static_cast<size_t>(k)];
  for (const ReplaySet& r : cache)
    if (r.key_a == a && r.key_b == epoch) return r;
  if (cfg.meta_replay == MetaReplay::Epoch) cache.clear();  // only the current epoch's set is ever used again
  cache.emplace_back();
  ReplaySet& r = cache.back();
  r.key_a = a;
  r.key_b = epoch;
  draw(r);
  return r;
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
  // the routing pass; with gating_backprop its recomputation and the backward to q (~ 2 forwards)
  const double route = L * gating->forward_flops(B) * (cfg.gating_backprop ? 3.0 : 1.0);
  // meta-training: forward + backward (3x) on each layer's replay items (meta_batch, or the buffer)
  double items = 0.0;
  for (int l = 0; l < mc.layers && meta; ++l)
    items += cfg.meta_batch > 0 ? cfg.meta_batch : buffers[static_cast<size_t>(buffer_of(l))].size();
  return route + 3.0 * gating->forward_flops(1) * items;
}

// Per-sample Gaussian scores of q under its own routing set: scores (E) for one q.
template <class T, class Scratch>
static void score_one(T* scores, Scratch& s, const T* q, const T* mu_ls, int C, int E) {
  s.sc_w.resize(static_cast<size_t>(E) * C);
  s.sc_m.resize(static_cast<size_t>(E) * C);
  s.sc_c.resize(static_cast<size_t>(E));
  s.sc_sq.resize(static_cast<size_t>(C));
  nn::gaussian_scores_forward<T>(scores, s.sc_w.data(), s.sc_m.data(), s.sc_c.data(), s.sc_sq.data(), q, mu_ls,
                                 mu_ls + static_cast<int64_t>(E) * C, 1, C, E);
}

template <class T>
void PilfState<T>::sync_workers(bool routing) {
  const int n = threads().size();
  if (static_cast<int>(workers_.size()) != n) {
    workers_.resize(static_cast<size_t>(n));
    scratch_.resize(static_cast<size_t>(n));
  }
  // routing: thread 0 routes with `gating` itself, so its copy (meta-training's) need not follow
  for (int w = routing ? 1 : 0; w < n; ++w) {
    std::unique_ptr<GatingTransformer<T>>& g = workers_[static_cast<size_t>(w)];
    if (!g) g = std::make_unique<GatingTransformer<T>>(gating->config(), std::max(batch_capacity_, kMetaChunk));
    g->params = gating->params;
  }
}

template <class T>
void PilfState<T>::route(int l, const std::vector<typename Transformer<T>::RouteShard>& shards) {
  if (shards.empty()) return;
  ScopedTimer timer(route_s);
  const PhaseScope ph(Phase::Pilf);
  const int C = mc.d_model, Kh = cfg.history;
  const size_t L = static_cast<size_t>(l);
  const int n = shards.back().first + shards.back().B;  // this rank's samples
  if (l == 0) sync_workers(true);  // the parameters change between forwards only
  s.q[L].resize(static_cast<size_t>(n) * C);
  s.route_q[L].resize(static_cast<size_t>(n) * C);
  s.route_hist[L].resize(static_cast<size_t>(n) * Kh * C);
  if (cfg.dynamic_top_k) s.r[L].resize(static_cast<size_t>(n));
  s.route_step = shards.front().key.step;
  s.route_first = shards.front().key.global_first - shards.front().first;
  threads().run(static_cast<int>(shards.size()), [&](int i, int w) { route_shard(l, shards[static_cast<size_t>(i)], w); });
}

template <class T>
void PilfState<T>::route_shard(int l, const typename Transformer<T>::RouteShard& sh, int w) {
  const int C = mc.d_model, E = mc.experts, Kh = cfg.history, first = sh.first, B = sh.B;
  const size_t L = static_cast<size_t>(l);
  ThreadScratch& rs = thread_scratch(w);
  const T* q = sh.q;
  float* qf = s.q[L].data() + static_cast<int64_t>(first) * C;
  for (int64_t i = 0; i < static_cast<int64_t>(B) * C; ++i) qf[i] = static_cast<float>(q[i]);
  rs.histf.resize(static_cast<size_t>(B) * Kh * C);
  buffers[static_cast<size_t>(buffer_of(l))].retrieve(rs.histf.data(), qf, B, Kh);
  // kept (in T) for the backward's recomputation
  T* qt = s.route_q[L].data() + static_cast<int64_t>(first) * C;
  T* hist = s.route_hist[L].data() + static_cast<int64_t>(first) * Kh * C;
  std::copy_n(q, static_cast<int64_t>(B) * C, qt);
  std::copy(rs.histf.begin(), rs.histf.end(), hist);
  const nn::DropoutKey dk{seed, RngPurpose::GatingDropout, static_cast<uint32_t>(sh.key.step)};
  GatingTransformer<T>& g = w == 0 ? *gating : worker(w);
  g.forward(sh.mu_ls, qt, hist, B, l, sh.key.step >= 0 ? &dk : nullptr, static_cast<uint32_t>(sh.key.global_first));
  if (!cfg.dynamic_top_k) return;
  // dynamic top-k: each sample's routing surprise, then its k
  rs.scores.resize(static_cast<size_t>(E));
  for (int b = 0; b < B; ++b) {
    score_one<T>(rs.scores.data(), rs, q + static_cast<int64_t>(b) * C, sh.mu_ls + static_cast<int64_t>(b) * 2 * E * C, C, E);
    double best = rs.scores[0];
    for (int e = 1; e < E; ++e) best = std::max(best, static_cast<double>(rs.scores[static_cast<size_t>(e)]));
    double& r = s.r[L][static_cast<size_t>(first + b)];
    r = -best / C;
    sh.k[b] = dynamic_k(r, l);
  }
}

template <class T>
void PilfState<T>::route_backward(int l, const std::vector<typename Transformer<T>::RouteGradShard>& shards) {
  const int C = mc.d_model, Kh = cfg.history, E = mc.experts;
  const size_t L = static_cast<size_t>(l);
  // the GatingTransformer's activations hold another call: recompute this one (same q, history
  // and dropout masks, so the same values), then backward to q only (the reference's task-loss
  // gradient on the GatingTransformer's own parameters is discarded before meta-training)
  threads().run(static_cast<int>(shards.size()), [&](int i, int w) {
    const typename Transformer<T>::RouteGradShard& sh = shards[static_cast<size_t>(i)];
    ThreadScratch& rs = thread_scratch(w);
    rs.route_out.resize(static_cast<size_t>(sh.B) * 2 * E * C);
    const nn::DropoutKey dk{seed, RngPurpose::GatingDropout, static_cast<uint32_t>(s.route_step)};
    GatingTransformer<T>& g = w == 0 ? *gating : worker(w);
    g.forward(rs.route_out.data(), s.route_q[L].data() + static_cast<int64_t>(sh.first) * C,
              s.route_hist[L].data() + static_cast<int64_t>(sh.first) * Kh * C, sh.B, l, s.route_step >= 0 ? &dk : nullptr,
              static_cast<uint32_t>(s.route_first + sh.first));
    g.backward(sh.dmu_ls, sh.dq, false);
  });
}

namespace {

// Meta-training of one MoE layer's GatingTransformer bank on a replay set: BCE with logits between
// the per-expert Gaussian scores of each item's q and its stored SMK action (the layer's columns),
// mean over items and experts; the history comes from the layer's buffer as it is now. Gradients
// accumulate into the GatingTransformer; returns the BCE and sets the routing accuracy.
// Work items: chunks of kMetaChunk items (a decomposition of the set, not of the threads), each on
// its thread's copy of the GatingTransformer with its gradient zeroed first; the chunks' gradients
// (the bank's parameter range) are then added to the GatingTransformer's in chunk order, and the
// per-item losses and accuracies summed in item order.
template <class T>
double meta_layer(PilfState<T>& ps, int l, const typename PilfState<T>::ReplaySet& rs, int64_t step, double& routing_acc) {
  const ModelConfig& mc = ps.mc;
  const int C = mc.d_model, E = mc.experts, Kh = ps.cfg.history, n = rs.size();
  const int64_t EC = static_cast<int64_t>(E) * C;
  const pilf::ExperienceBuffer& buf = ps.buffers[static_cast<size_t>(ps.buffer_of(l))];
  const int W = buf.experts(), off = ps.action_offset(l);
  // the bank's parameters: one contiguous range of the GatingTransformer's table
  const ParamTable& gt = ps.gating->table();
  int64_t lo = -1, hi = -1;
  for (int i = 0; i < gt.size(); ++i)
    if (gt[i].layer == l) {
      if (lo < 0) lo = gt[i].offset;
      HYPERRNN_CHECK(gt[i].offset == (hi < 0 ? lo : hi), "GatingTransformer bank is not one block");
      hi = gt[i].offset + gt[i].size;
    }
  const int chunk = PilfState<T>::kMetaChunk, nch = (n + chunk - 1) / chunk;
  ps.meta_chunk_grads.resize(static_cast<size_t>(std::max<int>(nch, static_cast<int>(ps.meta_chunk_grads.size()))));
  std::vector<double>& item_loss = ps.s.eps;  // (n) per-item BCE sums, then accuracies
  std::vector<double>& item_acc = ps.s.tau;
  item_loss.assign(static_cast<size_t>(n), 0.0);
  item_acc.assign(static_cast<size_t>(n), 0.0);
  const double inv = 1.0 / (static_cast<double>(n) * E);
  const int K = mc.top_k;
  const nn::DropoutKey dk{ps.seed, RngPurpose::MetaDropout, static_cast<uint32_t>(step)};
  threads().run(nch, [&](int c, int w) {
    const int b0 = c * chunk, m = std::min(n, b0 + chunk) - b0;
    typename PilfState<T>::ThreadScratch& s = ps.thread_scratch(w);
    GatingTransformer<T>& g = ps.worker(w);
    std::fill(g.grads.begin() + lo, g.grads.begin() + hi, T(0));
    s.histf.resize(static_cast<size_t>(m) * Kh * C);
    buf.retrieve(s.histf.data(), rs.q.data() + static_cast<int64_t>(b0) * C, m, Kh);
    s.qt.assign(rs.q.begin() + static_cast<int64_t>(b0) * C, rs.q.begin() + static_cast<int64_t>(b0 + m) * C);
    s.hist.assign(s.histf.begin(), s.histf.end());
    s.mu_ls.resize(static_cast<size_t>(m) * 2 * EC);
    s.dmu_ls.assign(static_cast<size_t>(m) * 2 * EC, T(0));
    g.forward(s.mu_ls.data(), s.qt.data(), s.hist.data(), m, l, &dk, static_cast<uint32_t>(b0));
    s.scores.resize(static_cast<size_t>(E));
    s.dscores.resize(static_cast<size_t>(E));
    s.sc_ec.resize(static_cast<size_t>(3 * EC + E));
    s.dq.resize(static_cast<size_t>(C));
    for (int b = 0; b < m; ++b) {
      const T* q = s.qt.data() + static_cast<int64_t>(b) * C;
      const T* mu = s.mu_ls.data() + static_cast<int64_t>(b) * 2 * EC;
      score_one<T>(s.scores.data(), s, q, mu, C, E);
      const uint8_t* y = rs.action.data() + static_cast<int64_t>(b0 + b) * W + off;
      double loss = 0.0;
      for (int e = 0; e < E; ++e) {
        const double x = s.scores[static_cast<size_t>(e)], t = y[e] ? 1.0 : 0.0;
        loss += std::max(x, 0.0) - x * t + std::log1p(std::exp(-std::abs(x)));
        const double sig = x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x));
        s.dscores[static_cast<size_t>(e)] = static_cast<T>((sig - t) * inv);
      }
      item_loss[static_cast<size_t>(b0 + b)] = loss;
      // routing accuracy: share of the top-k experts by score (ties: lower index) in the action
      int hits = 0;
      s.taken.assign(static_cast<size_t>(E), 0);
      for (int j = 0; j < K; ++j) {
        int best = -1;
        for (int e = 0; e < E; ++e)
          if (!s.taken[static_cast<size_t>(e)] && (best < 0 || s.scores[static_cast<size_t>(e)] > s.scores[static_cast<size_t>(best)])) best = e;
        s.taken[static_cast<size_t>(best)] = 1;
        hits += y[best] ? 1 : 0;
      }
      item_acc[static_cast<size_t>(b0 + b)] = static_cast<double>(hits) / K;
      T* dmu = s.dmu_ls.data() + static_cast<int64_t>(b) * 2 * EC;
      nn::gaussian_scores_backward<T>(s.dq.data(), dmu, dmu + EC, s.sc_ec.data(), s.dscores.data(), q, s.sc_sq.data(), mu,
                                      s.sc_w.data(), s.sc_m.data(), 1, C, E);
    }
    g.backward(s.dmu_ls.data());
    ps.meta_chunk_grads[static_cast<size_t>(c)].assign(g.grads.begin() + lo, g.grads.begin() + hi);
  });
  T* out = ps.gating->grads.data() + lo;
  for (int c = 0; c < nch; ++c) {
    const std::vector<T>& cg = ps.meta_chunk_grads[static_cast<size_t>(c)];
    for (int64_t i = 0; i < hi - lo; ++i) out[i] += cg[static_cast<size_t>(i)];
  }
  double loss = 0.0, acc = 0.0;
  for (int b = 0; b < n; ++b) {
    loss += item_loss[static_cast<size_t>(b)];
    acc += item_acc[static_cast<size_t>(b)];
  }
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
  if (ps) ps->route_s = 0.0;
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
  // the reference: the norm of every (non-GatingTransformer) parameter gradient, before SMK
  st.surprise = pc.surprise_routing ? std::hypot(st.expert_surprise, st.gating_surprise) : gn.total;
  if (!std::isfinite(st.grad_norm) || !std::isfinite(st.surprise)) {
    st.skipped = true;
    return st;
  }
  // PI assessment
  st.epsilon = st.loss;
  st.tau = model.mean_entropy();
  st.pi = pilf::predictive_integrity({st.epsilon, st.tau, st.surprise, st.expert_surprise, st.gating_surprise}, pc.pi);

  // Surprise-Min-K per MoE layer.
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
  // Freeze: the dropped experts' tensors are skipped by the optimizer. Step (the reference): their
  // gradients are zeroed and the optimizer steps them; only an expert that received no tokens (no
  // gradient in torch) is skipped. (Another rank's expert is not held here: the optimizer leaves
  // it alone by itself.)
  bool any_skip = false;
  for (int i = 0; i < table.size(); ++i) {
    const TensorInfo& t = table[i];
    if (t.kind != TensorKind::Expert) continue;
    const bool kept = st.smk_mask[static_cast<size_t>(t.layer)] >> t.expert & 1u;
    if (pc.smk_dropped == SmkDropped::Freeze) {
      if (!kept) skip[static_cast<size_t>(i)] = 1;
    } else if (model.expert_tokens()[static_cast<size_t>(t.layer * E + t.expert)] == 0) {
      skip[static_cast<size_t>(i)] = 1;
    } else if (!kept && t.held()) {
      std::fill_n(model.grads.data() + t.offset, t.size, T(0));
    }
    any_skip = any_skip || skip[static_cast<size_t>(i)];
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
  nn::clip_grads(model.grads.data(), n, st.grad_norm, sc.grad_clip);  // by the norm before SMK
  opt.step(model.params.data(), model.grads.data(), lr_by_kind, any_skip ? skip.data() : nullptr);
  st.optimizer_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_opt).count();

  if (!ps || !mc.memory_routing()) return st;
  // PILF's own work from here on (curation, dynamic-k statistics, meta-training) and the routing
  // during the forward: pilf_s, without the collectives (they count as reductions)
  const auto t_pilf = std::chrono::steady_clock::now();
  const PhaseScope pilf_phase(Phase::Pilf);
  const double reduce0 = par.reduce_s;
  auto& s = ps->s;
  const int nbuf = static_cast<int>(ps->buffers.size());
  auto report_buffers = [&] {
    st.buffer_size.resize(static_cast<size_t>(nbuf));
    st.prototypes.resize(static_cast<size_t>(nbuf));
    for (int k = 0; k < nbuf; ++k) {
      st.buffer_size[static_cast<size_t>(k)] = ps->buffers[static_cast<size_t>(k)].size();
      st.prototypes[static_cast<size_t>(k)] = ps->buffers[static_cast<size_t>(k)].active_prototypes();
    }
  };
  // Experience curation (the reference: only with SMK on, whose sets are the actions): each
  // sample of the global batch offers (q, the layer's SMK set) with priority 1 - PI, PI the batch's
  // (reference) or the sample's own from its loss and entropy and the batch's surprise. Every rank
  // gathers all candidates in rank (= global sample) order, so the buffers stay identical.
  const bool curate = pc.smk != SmkMode::Off || pc.curate_without_smk;
  const int B = model.global_samples(), Bl = batch.B;
  HYPERRNN_CHECK(static_cast<int64_t>(Bl) * par.P == B, "curation: every rank holds an equal block of the batch");
  s.pi.resize(static_cast<size_t>(B));
  if (curate && pc.curate_batch_pi) {
    std::fill(s.pi.begin(), s.pi.end(), st.pi);
  } else if (curate) {
    s.eps.resize(static_cast<size_t>(Bl));
    s.tau.resize(static_cast<size_t>(Bl));
    model.sample_loss_entropy(s.eps.data(), s.tau.data());
    s.sample_local.resize(2 * static_cast<size_t>(Bl));
    for (int b = 0; b < Bl; ++b) {
      s.sample_local[2 * static_cast<size_t>(b)] = s.eps[static_cast<size_t>(b)];
      s.sample_local[2 * static_cast<size_t>(b) + 1] = s.tau[static_cast<size_t>(b)];
    }
    s.sample_all.resize(2 * static_cast<size_t>(B));
    par.allgather(s.sample_local.data(), s.sample_local.size() * sizeof(double), s.sample_all.data());
    for (int b = 0; b < B; ++b)
      s.pi[static_cast<size_t>(b)] = pilf::predictive_integrity(
          {s.sample_all[2 * static_cast<size_t>(b)], s.sample_all[2 * static_cast<size_t>(b) + 1], st.surprise, st.expert_surprise, st.gating_surprise}, pc.pi);
  }
  for (int l = 0; l < Lm && curate; ++l) {
    pilf::ExperienceBuffer& buf = ps->buffers[static_cast<size_t>(ps->buffer_of(l))];
    const int W = buf.experts(), off = ps->action_offset(l);
    s.action.assign(static_cast<size_t>(B) * W, 0);
    for (int b = 0; b < B; ++b)
      for (int e = 0; e < E; ++e) s.action[static_cast<size_t>(b) * W + off + e] = st.smk_mask[static_cast<size_t>(l)] >> e & 1u;
    const std::vector<float>& ql = s.q[static_cast<size_t>(l)];
    s.q_all.resize(static_cast<size_t>(B) * mc.d_model);
    par.allgather(ql.data(), static_cast<size_t>(Bl) * mc.d_model * sizeof(float), s.q_all.data());
    buf.add(s.q_all.data(), s.action.data(), s.pi.data(), B);
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

  // Meta-training of the GatingTransformer every meta_every steps, once a buffer holds anything:
  // each MoE layer's bank on its buffer's replay set. A layer whose BCE is not finite takes no
  // part (its bank is not stepped: no gradient in torch); the replayed priorities decay only after
  // a step that was taken.
  bool any_items = false;
  for (const pilf::ExperienceBuffer& b : ps->buffers) any_items = any_items || b.size() > 0;
  if (curate && any_items && (step + 1) % pc.meta_every == 0) {
    std::vector<const typename PilfState<T>::ReplaySet*> sets(static_cast<size_t>(nbuf), nullptr);
    for (int k = 0; k < nbuf; ++k)
      if (ps->buffers[static_cast<size_t>(k)].size() > 0) sets[static_cast<size_t>(k)] = &ps->replay_set(k, step);
    ps->gating->zero_grad();
    ps->sync_workers(false);  // meta-training's chunks run on copies with the current parameters
    const ParamTable& gt = ps->gating->table();
    std::vector<uint8_t>& bank_skip = s.bank_skip;
    bank_skip.assign(static_cast<size_t>(gt.size()), 0);
    std::vector<uint8_t> layer_used(static_cast<size_t>(Lm), 0);
    double loss = 0.0, acc = 0.0;
    int used = 0;
    for (int l = 0; l < Lm; ++l) {
      const auto* rs = sets[static_cast<size_t>(ps->buffer_of(l))];
      if (!rs || rs->size() == 0) continue;
      double a = 0.0;
      const double ll = meta_layer(*ps, l, *rs, step, a);
      if (!std::isfinite(ll)) continue;
      loss += ll;
      acc += a;
      ++used;
      layer_used[static_cast<size_t>(l)] = 1;
    }
    for (int i = 0; i < gt.size(); ++i)
      if (!layer_used[static_cast<size_t>(gt[i].layer)]) {
        bank_skip[static_cast<size_t>(i)] = 1;
        std::fill_n(ps->gating->grads.data() + gt[i].offset, gt[i].size, T(0));
      }
    if (used > 0) {
      if (pc.meta_loss_mean)  // the gradient of the mean over layers (the banks are disjoint)
        for (T& g : ps->gating->grads) g /= static_cast<T>(used);
      const double gnorm = nn::grad_norm(ps->gating->grads.data(), gt.total());
      if (std::isfinite(loss) && std::isfinite(gnorm)) {
        const double glr = pc.meta_lr * st.lr_mod_gating;
        const double lr3[3] = {glr, glr, glr};
        ps->gating_opt->step(ps->gating->params.data(), ps->gating->grads.data(), lr3, bank_skip.data());
        st.meta = true;
        st.gating_loss = loss / used;
        st.routing_acc = acc / used;
        for (int k = 0; k < nbuf; ++k)
          if (sets[static_cast<size_t>(k)]) ps->buffers[static_cast<size_t>(k)].decay(sets[static_cast<size_t>(k)]->idx);
      }
    }
  }
  report_buffers();
  st.pilf_s = ps->route_s + std::chrono::duration<double>(std::chrono::steady_clock::now() - t_pilf).count() -
              (par.reduce_s - reduce0);
  return st;
}

template class PilfState<float>;
template class PilfState<double>;
template StepStats train_step<float>(Transformer<float>&, nn::AdamW<float>&, const Batch&, const StepConfig&, int64_t, PilfState<float>*);
template StepStats train_step<double>(Transformer<double>&, nn::AdamW<double>&, const Batch&, const StepConfig&, int64_t, PilfState<double>*);

}  // namespace hyperrnn
