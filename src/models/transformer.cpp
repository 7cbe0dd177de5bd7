// Pre-LN Transformer: forward, backward, parameter table, activation arena, FLOP count.
#include "models/transformer.hpp"

#include <cmath>
#include <functional>
#include <limits>
#include <type_traits>

#include "core/blas.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "nn/dropout.hpp"
#include "nn/ops.hpp"
#include "parallel/threads.hpp"

namespace hyperrnn {


const char* to_string(ModelKind k) {
  switch (k) {
    case ModelKind::Dense: return "dense";
    case ModelKind::Moe: return "moe";
    case ModelKind::GaussMoe: return "gauss-moe";
    case ModelKind::Pilf: return "pilf";
    case ModelKind::Rwkv7: return "rwkv7";
  }
  return "?";
}

bool parse_model_kind(const std::string& s, ModelKind& out) {
  for (ModelKind k : {ModelKind::Dense, ModelKind::Moe, ModelKind::GaussMoe, ModelKind::Pilf, ModelKind::Rwkv7})
    if (s == to_string(k)) {
      out = k;
      return true;
    }
  return false;
}

template <class T>
nn::MoeDims Transformer<T>::moe_dims(int N) const {
  // memory-Gaussian routing: one routing set per sample
  const int sets = cfg_.memory_routing() ? N / cfg_.seq_len : 1;
  return nn::MoeDims{N, cfg_.d_model, cfg_.experts, cfg_.top_k, cfg_.d_ff, sets > 0 ? sets : 1, nullptr, cfg_.seq_len};
}

template <class T>
Transformer<T>::Transformer(const ModelConfig& cfg, int batch_capacity, int max_scored, Parallel* par)
    : cfg_(cfg), Bcap_(batch_capacity), Scap_(max_scored),
      own_par_(par ? nullptr : std::make_unique<Parallel>(nullptr, 1, cfg.is_moe() ? cfg.experts : 0)),
      par_(par ? par : own_par_.get()) {
  HYPERRNN_CHECK(!cfg.is_moe() || par_->E == cfg.experts, "parallel layout built for another expert count");
  const int64_t V = cfg.vocab, Tn = cfg.seq_len, C = cfg.d_model, F = cfg.d_ff, E = cfg.experts;
  const int L = cfg.layers;
  HYPERRNN_CHECK(C % cfg.heads == 0, "d_model must be divisible by heads");
  HYPERRNN_CHECK(!cfg.is_moe() || (cfg.top_k >= 1 && cfg.top_k <= cfg.experts), "bad top_k");
  using TK = TensorKind;
  if (cfg.is_image()) {
    HYPERRNN_CHECK(cfg.image_h % cfg.patch == 0 && cfg.image_w % cfg.patch == 0 &&
                   (cfg.image_h / cfg.patch) * (cfg.image_w / cfg.patch) == cfg.patches() && !cfg.tie_embeddings,
                   "image model: patch grid (plus the class token) must equal seq_len, and the head cannot be tied");
    wte_ = table_.add("patch.weight", {C, static_cast<int64_t>(cfg.patch) * cfg.patch}, TK::Dense, true);
    patch_b_ = table_.add("patch.bias", {C}, TK::Dense, false);
    if (cfg.cls_token) cls_ = table_.add("cls", {C}, TK::Dense, false);
  } else {
    wte_ = table_.add("wte", {V, C}, TK::Dense, true);
  }
  layers_.resize(static_cast<size_t>(L));
  if (cfg.is_rwkv()) {
    HYPERRNN_CHECK(!cfg.tie_embeddings && cfg.dropout == 0.0 && !cfg.cls_token,
                   "rwkv7: untied head, no dropout, no class token");
    HYPERRNN_CHECK(cfg.head_size > 0 && C % cfg.head_size == 0 && cfg.heads == C / cfg.head_size, "rwkv7: heads must be d_model / head_size");
    wpe_ = -1;  // no position table: the recurrence orders the tokens
    add_rwkv_tensors();
  } else {
    wpe_ = table_.add("wpe", {Tn, C}, TK::Dense, true);
  }
  for (int l = 0; l < L && !cfg.is_rwkv(); ++l) {
    Layer& Ly = layers_[static_cast<size_t>(l)];
    const std::string pre = "layers." + std::to_string(l) + ".";
    Ly.ln1_w = table_.add(pre + "ln1.weight", {C}, TK::Dense, false, l);
    Ly.ln1_b = table_.add(pre + "ln1.bias", {C}, TK::Dense, false, l);
    Ly.qkv_w = table_.add(pre + "attn.qkv.weight", {3 * C, C}, TK::Dense, true, l);
    Ly.qkv_b = table_.add(pre + "attn.qkv.bias", {3 * C}, TK::Dense, false, l);
    Ly.proj_w = table_.add(pre + "attn.proj.weight", {C, C}, TK::Dense, true, l);
    Ly.proj_b = table_.add(pre + "attn.proj.bias", {C}, TK::Dense, false, l);
    Ly.ln2_w = table_.add(pre + "ln2.weight", {C}, TK::Dense, false, l);
    Ly.ln2_b = table_.add(pre + "ln2.bias", {C}, TK::Dense, false, l);
    if (!cfg.is_moe()) {
      Ly.fc1_w = table_.add(pre + "mlp.fc1.weight", {F, C}, TK::Dense, true, l);
      Ly.fc1_b = table_.add(pre + "mlp.fc1.bias", {F}, TK::Dense, false, l);
      Ly.fc2_w = table_.add(pre + "mlp.fc2.weight", {C, F}, TK::Dense, true, l);
      Ly.fc2_b = table_.add(pre + "mlp.fc2.bias", {C}, TK::Dense, false, l);
    } else {
      // router parameters form PILR's gating group (kind Gating); pilf has none here: its
      // routing Gaussians come from the GatingTransformer
      if (cfg.kind == ModelKind::Moe) {
        Ly.router_a = table_.add(pre + "moe.router.weight", {E, C}, TK::Gating, true, l);
      } else if (cfg.kind == ModelKind::GaussMoe) {
        Ly.router_a = table_.add(pre + "moe.router.mu", {E, C}, TK::Gating, false, l);
        Ly.router_b = table_.add(pre + "moe.router.log_sigma", {E, C}, TK::Gating, false, l);
      }
      for (int e = 0; e < E; ++e) {
        const std::string ep = pre + "moe.experts." + std::to_string(e) + ".";
        const int i0 = table_.add(ep + "fc1.weight", {F, C}, TK::Expert, true, l, e);
        table_.add(ep + "fc1.bias", {F}, TK::Expert, false, l, e);
        table_.add(ep + "fc2.weight", {C, F}, TK::Expert, true, l, e);
        table_.add(ep + "fc2.bias", {C}, TK::Expert, false, l, e);
        for (int i = i0; i < i0 + 4; ++i) table_.set_owner(i, par_->owner(e));
        if (e == 0) Ly.expert0 = i0;
        // the MoE kernels address expert e at expert0 + e * stride: check the layout holds
        HYPERRNN_CHECK(table_[i0].offset == table_[Ly.expert0].offset + e * moe_dims(0).expert_stride(),
                       "expert tensors are not contiguous");
      }
    }
  }
  lnf_w_ = table_.add("lnf.weight", {C}, TK::Dense, false);
  lnf_b_ = table_.add("lnf.bias", {C}, TK::Dense, false);
  head_w_ = cfg.tie_embeddings ? wte_ : table_.add("head.weight", {V, C}, TK::Dense, true);
  if (cfg.is_image() && cfg.cls_token) head_b_ = table_.add("head.bias", {V}, TK::Dense, false);
  HYPERRNN_CHECK(cfg.dropout >= 0.0 && cfg.dropout < 1.0, "dropout must be in [0, 1)");
  // this rank's buffers: replicated tensors and its own experts only; each layer's own experts stay
  // one block addressed as block + (e - first own) * stride
  table_.localize(par_->P > 1 ? par_->rank : -1);
  if (cfg.is_moe()) {
    const int64_t stride = moe_dims(0).expert_stride();
    const int lo = par_->P > 1 ? par_->experts_lo() : 0, hi = par_->P > 1 ? par_->experts_hi() : E;
    for (Layer& Ly : layers_) {
      Ly.expert_here = Ly.expert0 + 4 * lo;  // four tensors per expert, consecutive in the table
      for (int e = lo; e < hi; ++e)
        HYPERRNN_CHECK(table_[Ly.expert0 + 4 * e].offset == table_[Ly.expert_here].offset + (e - lo) * stride,
                       "this rank's experts are not one block");
    }
  }
  params.assign(static_cast<size_t>(table_.total()), T(0));
  grads.assign(static_cast<size_t>(table_.total()), T(0));

  // Activation arena: sized once for the largest batch by a counting pass over the same layout
  // that then binds it; never reallocated in the step loop.
  Carver<T> count_f;
  Carver<int32_t> count_i;
  Carver<uint8_t> count_b;
  bind_activations(count_f, count_i, count_b);
  arena_.assign(static_cast<size_t>(count_f.used()), T(0));
  iarena_.assign(static_cast<size_t>(count_i.used()), 0);
  barena_.assign(static_cast<size_t>(count_b.used()), 0);
  Carver<T> f(arena_.data());
  Carver<int32_t> ip(iarena_.data());
  Carver<uint8_t> bp(barena_.data());
  bind_activations(f, ip, bp);
  if (cfg.is_moe()) expert_tokens_.assign(static_cast<size_t>(L) * E, 0);
  layer_rows_.assign(static_cast<size_t>(L), 0.0);
  entropies_.assign(static_cast<size_t>(Scap_), 0.0);
  replicated_ = table_.replicated_ranges();
  if (par_->S > 1)
    shard_grads_.assign(static_cast<size_t>(par_->local_shards()), std::vector<T>(static_cast<size_t>(table_.total()), T(0)));
  for (const std::vector<T>& g : shard_grads_) shard_ptrs_.push_back(g.data());
  if (par_->P > 1 && cfg.is_moe()) {
    xch_.resize(static_cast<size_t>(L));
    owned_.resize(static_cast<size_t>(L));
  }
}

template <class T>
void Transformer<T>::dropout_masks(uint8_t* keep, int site, int64_t per_sample, int b0, int nb) const {
  const nn::DropoutKey key{seed_, RngPurpose::Dropout, static_cast<uint32_t>(batch_->step)};
  const uint32_t thr = nn::dropout_threshold(cfg_.dropout);
  const int sites = dropout_sites();
  for (int b = b0; b < b0 + nb; ++b)
    nn::dropout_mask(keep + b * per_sample, per_sample, key, static_cast<uint32_t>((batch_->first + b) * sites + site), thr);
}

template <class T>
void Transformer<T>::bind_activations(Carver<T>& f, Carver<int32_t>& ip, Carver<uint8_t>& bp) {
  const int64_t V = cfg_.vocab, Tn = cfg_.seq_len, C = cfg_.d_model, F = cfg_.d_ff;
  const int64_t N = static_cast<int64_t>(Bcap_) * Tn, H = cfg_.heads, S = Scap_;
  const nn::MoeDims md = moe_dims(static_cast<int>(N));
  auto take = [&f](int64_t n) { return f.take(n); };
  const bool rwkv = cfg_.is_rwkv();
  for (size_t l = 0; l < layers_.size() && rwkv; ++l) bind_rwkv_layer(layers_[l], static_cast<int>(l), f);
  for (Layer& Ly : layers_) {
    if (rwkv) break;
    Ly.ln1_out = take(N * C); Ly.ln1_mean = take(N); Ly.ln1_rstd = take(N);
    Ly.qkv = take(N * 3 * C); Ly.att = take(Bcap_ * H * Tn * Tn);
    Ly.atty = take(N * C); Ly.attproj = take(N * C); Ly.res_mid = take(N * C);
    Ly.ln2_out = take(N * C); Ly.ln2_mean = take(N); Ly.ln2_rstd = take(N);
    Ly.ffn_out = take(N * C); Ly.res_out = take(N * C);
    Ly.fc1_h = Ly.fc1_act = nullptr;
    if (cfg_.dropout > 0.0) {
      Ly.att_keep = bp.take(Bcap_ * H * Tn * Tn); Ly.att_drop = take(Bcap_ * H * Tn * Tn);
      Ly.proj_keep = bp.take(N * C); Ly.ffn_keep = bp.take(N * C);
      if (!cfg_.is_moe()) { Ly.hid_keep = bp.take(N * F); Ly.out_keep = bp.take(N * C); }
    }
    if (cfg_.is_moe()) {
      Ly.moe = nn::moe_bind_cache<T>(f, ip, md);
      if (cfg_.memory_routing()) {
        const int64_t E = cfg_.experts;
        Ly.q = take(Bcap_ * C); Ly.mu_ls = take(Bcap_ * 2 * E * C); Ly.dmu_ls = take(Bcap_ * 2 * E * C);
        Ly.k = ip.take(Bcap_);
      }
    } else {
      Ly.fc1_h = take(N * F); Ly.fc1_act = take(N * F);
    }
  }
  patches_ = cfg_.is_image() ? take(static_cast<int64_t>(Bcap_) * cfg_.patches() * cfg_.patch * cfg_.patch) : nullptr;
  patch_emb_ = cfg_.is_image() && cfg_.cls_token ? take(static_cast<int64_t>(Bcap_) * cfg_.patches() * C) : nullptr;
  emb_keep_ = cfg_.dropout > 0.0 ? bp.take(N * C) : nullptr;
  dmask_ = cfg_.dropout > 0.0 ? take(N * C) : nullptr;
  dq_ = cfg_.memory_routing() ? take(Bcap_ * C) : nullptr;
  if (rwkv) {
    x0n_ = take(N * C); ln0_mean_ = take(N); ln0_rstd_ = take(N); vfirst_ = take(N * C); dvfirst_ = take(N * C);
  }
  x0_ = take(N * C); lnf_out_ = take(N * C); lnf_mean_ = take(N); lnf_rstd_ = take(N);
  hs_ = take(S * C); logits_ = take(S * V); probs_ = take(S * V); losses_ = take(S);
  dres_ = take(N * C); dln_ = take(N * C); datty_ = take(N * C); dqkv_ = take(rwkv ? 0 : N * 3 * C);
  datt_ = take(rwkv ? 0 : Bcap_ * H * Tn * Tn);
  dact_ = dh_ = nullptr;
  if (rwkv) {
  } else if (cfg_.is_moe()) {
    moe_scratch_ = nn::moe_bind_scratch<T>(f, md);
  } else {
    dact_ = take(N * F); dh_ = take(N * F);
  }
  dhs_ = take(S * C); dlogits_ = take(S * V);
  scored_rows_ = ip.take(S);
  scored_targets_ = ip.take(S);
}

template <class T>
void Transformer<T>::init(uint64_t seed) {
  seed_ = seed;  // dropout masks are keyed by it
  if (cfg_.is_rwkv()) {
    init_rwkv7(seed);
    return;
  }
  // Matrices N(0, s^2 / (2 fan_in)) with s = init_scale (for a square matrix this is Xavier's
  // 1/(fan_in + fan_out)); embeddings N(0, embed_init_std^2), unit variance by default (as
  // torch.nn.Embedding); LayerNorm (1, 0); biases 0; Gaussian router mu ~ N(0, 1/C), so that x.mu
  // has unit spread across experts for unit-variance inputs, and log_sigma = 0.
  // Why not GPT-2's N(0, 0.02): with it (and with 0.02 embeddings) a 2-layer model sits on the
  // MQAR plateau (accuracy 1/D) for thousands of steps, in PyTorch as well as here; with these
  // scales it leaves the plateau within ~1000 steps (docs/results.md).
  for (int i = 0; i < table_.size(); ++i) {
    const TensorInfo& t = table_[i];
    T* d = params.data() + t.offset;
    const std::string& n = t.name;
    auto ends_with = [&n](const char* s) {
      const std::string suf(s);
      return n.size() >= suf.size() && n.compare(n.size() - suf.size(), suf.size(), suf) == 0;
    };
    double stdv = 0.0, fill = 0.0;
    if (ends_with("ln1.weight") || ends_with("ln2.weight") || n == "lnf.weight") fill = 1.0;
    else if (ends_with(".bias") || ends_with("log_sigma") || n == "cls") fill = 0.0;  // cls: zeros, as the reference
    else if (ends_with("router.mu")) stdv = 1.0 / std::sqrt(static_cast<double>(cfg_.d_model));
    else if (n == "wpe" || n == "wte") stdv = cfg_.embed_init_std;
    else if (n == "patch.weight") stdv = cfg_.init_scale / std::sqrt(static_cast<double>(t.shape.back()));  // unit-scale tokens
    else stdv = cfg_.init_scale / std::sqrt(2.0 * static_cast<double>(t.shape.back()));  // (out, in)
    if (!t.held()) continue;  // another rank's expert (initialised there, from the same stream)
    CounterRng rng(seed, RngPurpose::Init, static_cast<uint32_t>(i), 0);
    for (int64_t k = 0; k < t.size; ++k) d[k] = static_cast<T>(stdv > 0 ? stdv * rng.normal() : fill);
  }
}

template <class T>
void Transformer<T>::zero_grad() {
  std::fill(grads.begin(), grads.end(), T(0));
  for (std::vector<T>& g : shard_grads_) std::fill(g.begin(), g.end(), T(0));
}

template <class T>
nn::MoeWeights<T> Transformer<T>::moe_weights(const Layer& Ly, std::vector<T>& buf) {
  nn::MoeWeights<T> w;
  if (cfg_.memory_routing()) {
    // the routing sets: mu_ls (forward) or its gradient (backward), (B,2,E,C)
    const int64_t EC = static_cast<int64_t>(cfg_.experts) * cfg_.d_model;
    w.router_a = &buf == &params ? Ly.mu_ls : Ly.dmu_ls;
    w.router_b = w.router_a + EC;
    w.set_stride = 2 * EC;
  } else {
    w.router_a = buf.data() + table_[Ly.router_a].offset;
    w.router_b = Ly.router_b >= 0 ? buf.data() + table_[Ly.router_b].offset : nullptr;
  }
  w.experts = buf.data() + table_[Ly.expert_here].offset;  // the first expert this rank holds
  return w;
}

template <class T>
void Transformer<T>::set_shards(const Batch& batch) {
  HYPERRNN_CHECK(batch.B <= Bcap_ && batch.T == cfg_.seq_len, "batch shape does not fit the model");
  batch_ = &batch;
  B_ = batch.B;
  // this rank's canonical shards: sample and token offsets
  const int Sl = batch.shard_samples.empty() ? 1 : static_cast<int>(batch.shard_samples.size());
  HYPERRNN_CHECK(Sl == par_->local_shards(), "batch: one sample count per local shard expected");
  shard_b_.assign(static_cast<size_t>(Sl) + 1, 0);
  for (int s = 0; s < Sl; ++s)
    shard_b_[static_cast<size_t>(s) + 1] = shard_b_[static_cast<size_t>(s)] + (batch.shard_samples.empty() ? B_ : batch.shard_samples[static_cast<size_t>(s)]);
  HYPERRNN_CHECK(shard_b_.back() == B_, "batch: shard sample counts do not add up to B");
  shard_tok_.resize(shard_b_.size());
  for (size_t s = 0; s < shard_b_.size(); ++s) shard_tok_[s] = shard_b_[s] * batch.T;
}

template <class T>
void Transformer<T>::embed_rows(const Batch& batch, int b0, int nb, int r0, int n) {
  const int Tn = batch.T, C = cfg_.d_model;
  const T dscale = static_cast<T>(1.0 / (1.0 - cfg_.dropout));
  if (cfg_.is_image()) {
    const int IH = cfg_.image_h, IW = cfg_.image_w, P = cfg_.patch, Pn = cfg_.patches();
    T* pt = patches_ + 1LL * b0 * Pn * P * P;
    if constexpr (std::is_same_v<T, float>) {
      nn::image_to_patches<T>(pt, batch.images.data() + 1LL * b0 * IH * IW, nb, IH, IW, P);
    } else {
      std::vector<T> img(batch.images.begin() + 1LL * b0 * IH * IW, batch.images.begin() + 1LL * (b0 + nb) * IH * IW);
      nn::image_to_patches<T>(pt, img.data(), nb, IH, IW, P);
    }
    const T* wpe = wpe_ >= 0 ? p(wpe_) : nullptr;  // rwkv7: no position table
    if (!cfg_.cls_token) {
      nn::linear_forward<T>(x0_ + 1LL * r0 * C, pt, p(wte_), p(patch_b_), n, P * P, C);
      for (int b = b0; b < b0 + nb && wpe; ++b)
        for (int64_t i = 0; i < 1LL * Tn * C; ++i) x0_[1LL * b * Tn * C + i] += wpe[i];
    } else {  // [cls, patch_1 .. patch_P] + positions
      nn::linear_forward<T>(patch_emb_ + 1LL * b0 * Pn * C, pt, p(wte_), p(patch_b_), nb * Pn, P * P, C);
      const T* cls = p(cls_);
      for (int b = b0; b < b0 + nb; ++b) {
        T* x = x0_ + 1LL * b * Tn * C;
        for (int i = 0; i < C; ++i) x[i] = cls[i] + wpe[i];
        for (int64_t i = C; i < 1LL * Tn * C; ++i) x[i] = patch_emb_[1LL * b * Pn * C + i - C] + wpe[i];
      }
    }
  } else if (wpe_ < 0) {  // rwkv7: token embedding only
    const T* wte = p(wte_);
    for (int i = r0; i < r0 + n; ++i) std::copy(wte + 1LL * batch.tokens[static_cast<size_t>(i)] * C, wte + (1LL * batch.tokens[static_cast<size_t>(i)] + 1) * C, x0_ + 1LL * i * C);
  } else {
    nn::embedding_forward<T>(x0_ + 1LL * r0 * C, batch.tokens.data() + r0, p(wte_), p(wpe_), nb, Tn, C);
  }
  if (drop_) {
    dropout_masks(emb_keep_, 0, 1LL * Tn * C, b0, nb);
    nn::dropout_forward<T>(x0_ + 1LL * r0 * C, x0_ + 1LL * r0 * C, emb_keep_ + 1LL * r0 * C, dscale, 1LL * n * C);
  }
}

template <class T>
double Transformer<T>::forward(const Batch& batch) {
  set_shards(batch);
  const int Tn = batch.T, C = cfg_.d_model, H = cfg_.heads, F = cfg_.d_ff;
  const int N = B_ * Tn, Sl = nshards();
  const nn::RouterKind rk = cfg_.kind == ModelKind::Moe ? nn::RouterKind::Linear : nn::RouterKind::Gaussian;
  Parallel& par = *par_;
  if (cfg_.is_moe()) par.layer_bytes.resize(layers_.size(), 0);

  // Threads (src/parallel/threads.hpp): everything but the MoE routing and the experts runs as one
  // item per canonical shard, the experts one item per expert (src/nn/moe.cpp).
  auto each_shard = [this](const std::function<void(int s, int b0, int nb, int r0, int n)>& fn) {
    threads().run(nshards(), [&](int s, int) {
      const int b0 = shard_b_[static_cast<size_t>(s)], nb = shard_b_[static_cast<size_t>(s) + 1] - b0;
      if (nb > 0) fn(s, b0, nb, shard_tok_[static_cast<size_t>(s)], nb * cfg_.seq_len);
    });
  };
  drop_ = cfg_.dropout > 0.0 && batch.step >= 0;  // dropout: training only, masks per global sample and site
  const T dscale = static_cast<T>(1.0 / (1.0 - cfg_.dropout));
  if (cfg_.is_image()) {
    const int IH = cfg_.image_h, IW = cfg_.image_w;
    HYPERRNN_CHECK(batch.images.size() >= static_cast<size_t>(B_) * IH * IW, "image batch too small");
  }
  each_shard([&](int, int b0, int nb, int r0, int n) { embed_rows(batch, b0, nb, r0, n); });
  const T* res_in = x0_;
  if (cfg_.is_rwkv()) {
    rwkv_forward_blocks(Tn);
    res_in = layers_.back().res_out;
  }
  for (size_t l = 0; l < layers_.size() && !cfg_.is_rwkv(); ++l) {
    Layer& Ly = layers_[l];
    const int site = 1 + 5 * static_cast<int>(l);  // this layer's dropout sites: site + 0 .. 4
    // attention block and the second LayerNorm, per shard
    each_shard([&](int, int b0, int nb, int r0, int n) {
      const int64_t o = 1LL * r0 * C, oa = 1LL * b0 * H * Tn * Tn;
      nn::layernorm_forward<T>(Ly.ln1_out + o, Ly.ln1_mean + r0, Ly.ln1_rstd + r0, res_in + o, p(Ly.ln1_w), p(Ly.ln1_b), n, C);
      nn::linear_forward<T>(Ly.qkv + 3 * o, Ly.ln1_out + o, p(Ly.qkv_w), p(Ly.qkv_b), n, C, 3 * C);
      nn::AttnDropout<T> ad{drop_ ? Ly.att_keep + oa : nullptr, dscale, drop_ ? Ly.att_drop + oa : nullptr};
      if (drop_) dropout_masks(Ly.att_keep, site, 1LL * H * Tn * Tn, b0, nb);
      {
        const PhaseScope ph(Phase::Attention);
        nn::attention_forward<T>(Ly.atty + o, Ly.att + oa, Ly.qkv + 3 * o, nb, Tn, C, H, cfg_.causal, drop_ ? &ad : nullptr);
      }
      nn::linear_forward<T>(Ly.attproj + o, Ly.atty + o, p(Ly.proj_w), p(Ly.proj_b), n, C, C);
      if (drop_) {
        dropout_masks(Ly.proj_keep, site + 1, 1LL * Tn * C, b0, nb);
        nn::dropout_forward<T>(Ly.attproj + o, Ly.attproj + o, Ly.proj_keep + o, dscale, 1LL * n * C);
      }
      nn::residual_forward<T>(Ly.res_mid + o, res_in + o, Ly.attproj + o, 1LL * n * C);
      nn::layernorm_forward<T>(Ly.ln2_out + o, Ly.ln2_mean + r0, Ly.ln2_rstd + r0, Ly.res_mid + o, p(Ly.ln2_w), p(Ly.ln2_b), n, C);
      if (cfg_.memory_routing()) nn::meanpool_forward<T>(Ly.q + 1LL * b0 * C, Ly.ln2_out + o, nb, Tn, C);
      if (!cfg_.is_moe()) {  // the dense FFN (the reference's: Linear, GELU, Dropout, Linear, Dropout)
        const int64_t of = 1LL * r0 * F;
        nn::linear_forward<T>(Ly.fc1_h + of, Ly.ln2_out + o, p(Ly.fc1_w), p(Ly.fc1_b), n, C, F);
        nn::gelu_forward_grad<T>(Ly.fc1_act + of, Ly.fc1_h + of, Ly.fc1_h + of, 1LL * n * F);  // fc1_h: GELU'
        if (drop_) {
          dropout_masks(Ly.hid_keep, site + 3, 1LL * Tn * F, b0, nb);
          nn::dropout_forward<T>(Ly.fc1_act + of, Ly.fc1_act + of, Ly.hid_keep + of, dscale, 1LL * n * F);
        }
        nn::linear_forward<T>(Ly.ffn_out + o, Ly.fc1_act + of, p(Ly.fc2_w), p(Ly.fc2_b), n, F, C);
        if (drop_) {
          dropout_masks(Ly.out_keep, site + 4, 1LL * Tn * C, b0, nb);
          nn::dropout_forward<T>(Ly.ffn_out + o, Ly.ffn_out + o, Ly.out_keep + o, dscale, 1LL * n * C);
        }
      }
    });
    if (cfg_.is_moe()) {
      nn::MoeDims md = moe_dims(N);
      md.shards = Sl;
      md.shard_rows = shard_tok_.data();
      if (cfg_.memory_routing()) {
        HYPERRNN_CHECK(static_cast<bool>(router_), "model pilf needs a memory router (set_memory_router)");
        std::fill(Ly.k, Ly.k + B_, static_cast<int32_t>(cfg_.top_k));
        const int64_t ls = 2LL * cfg_.experts * C;
        std::vector<RouteShard> shards;
        for (int s = 0; s < Sl; ++s) {  // per shard: the GatingTransformer's GEMMs have shard shapes
          const int b0 = shard_b_[static_cast<size_t>(s)], nb = shard_b_[static_cast<size_t>(s) + 1] - b0;
          if (nb > 0) shards.push_back({b0, nb, Ly.q + 1LL * b0 * C, Ly.mu_ls + b0 * ls, Ly.k + b0, RouteKey{batch.step, batch.first + b0}});
        }
        router_(static_cast<int>(l), shards);
        for (int b = 0; b < B_; ++b)
          HYPERRNN_CHECK(Ly.k[b] >= 1 && Ly.k[b] <= cfg_.top_k, "memory router: k outside [1, top_k]");
        md.sample_k = Ly.k;
      }
      nn::MoeCache<T>& c = Ly.moe;
      T* experts = params.data() + table_[Ly.expert_here].offset;  // this rank's experts' block
      {
        const PhaseScope ph(Phase::Routing);
        nn::moe_route<T>(c, Ly.ln2_out, moe_weights(Ly, params), rk, md);
      }
      const int E = cfg_.experts;
      if (par.P == 1) {
        {
          ScopedTimer tx(par.expert_s);
          nn::moe_experts_forward<T>(c.ys, c.h, c.act, c.xs, c.offsets, E, experts, md);
        }
        for (int e = 0; e < E; ++e) expert_tokens_[l * E + e] = nn::moe_tokens_of(c.offsets, e);
      } else {
        ExpertExchange& X = xch_[l];
        Owned& o = owned_[l];
        X.plan(c.offsets, par, static_cast<int>(l), static_cast<int>(C * sizeof(T)));
        const size_t R = static_cast<size_t>(X.own_rows());
        o.xs.resize(R * C); o.ys.resize(R * C); o.h.resize(R * F); o.act.resize(R * F);
        X.dispatch(c.xs, o.xs.data(), C, par);
        {
          ScopedTimer tx(par.expert_s);
          nn::moe_experts_forward<T>(o.ys.data(), o.h.data(), o.act.data(), o.xs.data(), X.own_offsets(),
                                     par.experts_hi() - par.experts_lo(), experts, md);
        }
        X.give_back(o.ys.data(), c.ys, C, par);
        for (int e = 0; e < E; ++e) expert_tokens_[l * E + e] = X.expert_rows()[static_cast<size_t>(e)];
      }
      double rows = 0.0;
      for (int e = 0; e < E; ++e) rows += expert_tokens_[l * E + e];
      layer_rows_[l] = rows;
      {
        const PhaseScope ph(Phase::Routing);
        nn::moe_combine<T>(Ly.ffn_out, c, md);
      }
    }
    each_shard([&](int, int b0, int nb, int r0, int n) {
      const int64_t o = 1LL * r0 * C;
      if (drop_) {  // the block's dropout on the feed-forward branch
        dropout_masks(Ly.ffn_keep, site + 2, 1LL * Tn * C, b0, nb);
        nn::dropout_forward<T>(Ly.ffn_out + o, Ly.ffn_out + o, Ly.ffn_keep + o, dscale, 1LL * n * C);
      }
      nn::residual_forward<T>(Ly.res_out + o, Ly.res_mid + o, Ly.ffn_out + o, 1LL * n * C);
    });
    res_in = Ly.res_out;
  }
  each_shard([&](int, int, int, int r0, int n) {
    nn::layernorm_forward<T>(lnf_out_ + 1LL * r0 * C, lnf_mean_ + r0, lnf_rstd_ + r0, res_in + 1LL * r0 * C, p(lnf_w_), p(lnf_b_), n, C);
  });
  return head_forward(batch);
}

template <class T>
double Transformer<T>::head_forward(const Batch& batch) {
  const int Tn = batch.T, C = cfg_.d_model, V = cfg_.vocab, Sl = nshards();
  Parallel& par = *par_;
  // Gather the scored positions; only they reach the head. Rows stay in sample order, so each
  // shard's scored rows are one range.
  int S = 0;
  shard_scored_.assign(static_cast<size_t>(Sl) + 1, 0);
  for (int sh = 0; sh < Sl; ++sh) {
    for (int n = shard_tok_[static_cast<size_t>(sh)]; n < shard_tok_[static_cast<size_t>(sh) + 1]; ++n)
      if (batch.targets[static_cast<size_t>(n)] >= 0) {
        HYPERRNN_CHECK(S < Scap_, "more scored positions than the model was sized for");
        HYPERRNN_CHECK(batch.targets[static_cast<size_t>(n)] < V, "target outside the vocabulary");
        scored_rows_[S] = n;
        scored_targets_[S] = batch.targets[static_cast<size_t>(n)];
        ++S;
      }
    shard_scored_[static_cast<size_t>(sh) + 1] = S;
  }
  n_scored_ = S;
  if (cfg_.is_image()) {
    // one scored row per sample (its label at t = 0): the head reads the mean over its tokens
    for (int s = 0; s < S; ++s) {
      HYPERRNN_CHECK(scored_rows_[s] == s * Tn, "image batch: exactly one label per sample, at t = 0");
    }
    HYPERRNN_CHECK(S == B_, "image batch: every sample needs a label");
  }
  const bool masked = batch.class_hi > 0 && (batch.class_lo > 0 || batch.class_hi < V);
  if (masked) {
    HYPERRNN_CHECK(batch.class_lo >= 0 && batch.class_lo < batch.class_hi && batch.class_hi <= V, "bad class range");
    for (int s = 0; s < S; ++s)
      HYPERRNN_CHECK(scored_targets_[s] >= batch.class_lo && scored_targets_[s] < batch.class_hi, "target outside the class range");
  }
  // Per shard: the head on its scored rows, then loss sum, scored rows, correct (sum of per-sample
  // accuracies), samples scored, entropy sum, samples; summed over all shards in shard order (the
  // same for every P and every thread count).
  constexpr int kStats = 6;
  shard_stats_.assign(static_cast<size_t>(Sl) * kStats, 0.0);
  threads().run(Sl, [&](int sh, int) {
    const int r0 = shard_scored_[static_cast<size_t>(sh)], r1 = shard_scored_[static_cast<size_t>(sh) + 1];
    const int b0 = shard_b_[static_cast<size_t>(sh)], nb = shard_b_[static_cast<size_t>(sh) + 1] - b0;
    if (cfg_.is_image() && !cfg_.cls_token) {
      if (nb > 0) nn::meanpool_forward<T>(hs_ + 1LL * b0 * C, lnf_out_ + 1LL * b0 * Tn * C, nb, Tn, C);
    } else {  // token models: the scored positions; class token: position 0 of each sample
      for (int s = r0; s < r1; ++s)
        for (int i = 0; i < C; ++i) hs_[1LL * s * C + i] = lnf_out_[1LL * scored_rows_[s] * C + i];
    }
    if (r1 > r0)
      nn::linear_forward<T>(logits_ + 1LL * r0 * V, hs_ + 1LL * r0 * C, p(head_w_), head_b_ >= 0 ? p(head_b_) : nullptr, r1 - r0, C, V);
    if (masked)  // outputs outside [lo, hi) take no part: logit -inf, probability exactly 0
      for (int s = r0; s < r1; ++s)
        for (int v = 0; v < V; ++v)
          if (v < batch.class_lo || v >= batch.class_hi) logits_[1LL * s * V + v] = -std::numeric_limits<T>::infinity();
    double* st = shard_stats_.data() + static_cast<int64_t>(sh) * kStats;
    st[0] = r1 > r0 ? nn::crossentropy_forward<T>(losses_ + r0, probs_ + 1LL * r0 * V, logits_ + 1LL * r0 * V,
                                                  scored_targets_ + r0, r1 - r0, V)
                    : 0.0;
    if (masked)
      for (int s = r0; s < r1; ++s)
        for (int v = 0; v < V; ++v)
          if (v < batch.class_lo || v >= batch.class_hi) probs_[1LL * s * V + v] = T(0);
    st[1] = r1 - r0;
    // Accuracy: per sample, the share of its scored positions whose argmax is the target; then the
    // mean over samples that have scored positions.
    for (int s = r0; s < r1;) {
      const int b = scored_rows_[s] / Tn;
      int hit = 0, cnt = 0;
      for (; s < r1 && scored_rows_[s] / Tn == b; ++s, ++cnt) {
        const T* lg = logits_ + 1LL * s * V;
        int am = 0;
        for (int v = 1; v < V; ++v) am = lg[v] > lg[am] ? v : am;
        hit += am == scored_targets_[s];
      }
      st[2] += static_cast<double>(hit) / cnt;
      st[3] += 1.0;
    }
    for (int s = r0; s < r1; ++s) {  // kept per row for sample_loss_entropy (pilf's curation)
      entropies_[static_cast<size_t>(s)] = nn::row_entropy(probs_ + 1LL * s * V, V);
      st[4] += entropies_[static_cast<size_t>(s)];
    }
    st[5] = nb;
  });
  double tot[kStats];
  par.sum_over_shards(shard_stats_.data(), kStats, tot);
  scored_global_ = static_cast<int>(tot[1]);
  samples_global_ = static_cast<int>(tot[5]);
  correct_ = tot[2];
  samples_scored_ = static_cast<int>(tot[3]);
  entropy_mean_ = scored_global_ > 0 ? tot[4] / scored_global_ : 0.0;
  accuracy_ = samples_scored_ ? correct_ / samples_scored_ : 0.0;
  return scored_global_ ? tot[0] / scored_global_ : 0.0;
}

template <class T>
void Transformer<T>::backward() {
  HYPERRNN_CHECK(batch_ != nullptr, "backward without forward");
  const int Tn = batch_->T, C = cfg_.d_model, H = cfg_.heads, F = cfg_.d_ff, V = cfg_.vocab;
  const int N = B_ * Tn, Sl = nshards();
  const nn::RouterKind rk = cfg_.kind == ModelKind::Moe ? nn::RouterKind::Linear : nn::RouterKind::Gaussian;
  Parallel& par = *par_;
  if (scored_global_ == 0) return;
  auto each_shard = [this](const std::function<void(int s, int b0, int nb, int r0, int n)>& fn) {
    threads().run(nshards(), [&](int s, int) {
      const int b0 = shard_b_[static_cast<size_t>(s)], nb = shard_b_[static_cast<size_t>(s) + 1] - b0;
      if (nb > 0) fn(s, b0, nb, shard_tok_[static_cast<size_t>(s)], nb * cfg_.seq_len);
    });
  };
  const T dscale = static_cast<T>(1.0 / (1.0 - cfg_.dropout));
  const T* last = layers_.empty() ? x0_ : layers_.back().res_out;
  // the head (accumulates into dwte when tied; the embedding backward adds its part later) and the
  // final LayerNorm, per shard
  each_shard([&](int sh, int b0, int nb, int r0, int n) {
    const int s0 = shard_scored_[static_cast<size_t>(sh)], ns = shard_scored_[static_cast<size_t>(sh) + 1] - s0;
    const int64_t o = 1LL * r0 * C;
    std::fill(dln_ + o, dln_ + o + 1LL * n * C, T(0));
    std::fill(dres_ + o, dres_ + o + 1LL * n * C, T(0));
    if (ns > 0) {
      nn::crossentropy_backward<T>(dlogits_ + 1LL * s0 * V, probs_ + 1LL * s0 * V, scored_targets_ + s0,
                                   static_cast<T>(1.0 / scored_global_), ns, V);
      if (cfg_.l2wrap > 0.0)  // L2Wrap (rwkv7's reference loss): + factor x max logit at each row's argmax
        for (int r = s0; r < s0 + ns; ++r) {
          const T* lg = logits_ + 1LL * r * V;
          int am = 0;
          for (int v = 1; v < V; ++v) am = lg[v] > lg[am] ? v : am;
          dlogits_[1LL * r * V + am] += static_cast<T>(cfg_.l2wrap / scored_global_) * lg[am];
        }
      nn::linear_backward<T>(dhs_ + 1LL * s0 * C, gs(head_w_, sh), head_b_ >= 0 ? gs(head_b_, sh) : nullptr,
                             dlogits_ + 1LL * s0 * V, hs_ + 1LL * s0 * C, p(head_w_), ns, C, V);
    }
    if (cfg_.is_image() && !cfg_.cls_token) {
      nn::meanpool_backward<T>(dln_ + o, dhs_ + 1LL * b0 * C, nb, Tn, C);
    } else {
      for (int s = s0; s < s0 + ns; ++s)
        for (int i = 0; i < C; ++i) dln_[1LL * scored_rows_[s] * C + i] = dhs_[1LL * s * C + i];
    }
    nn::layernorm_backward<T>(dres_ + o, gs(lnf_w_, sh), gs(lnf_b_, sh), dln_ + o, last + o, p(lnf_w_), lnf_mean_ + r0,
                              lnf_rstd_ + r0, n, C);
  });
  if (cfg_.is_rwkv()) rwkv_backward_blocks(Tn);
  for (int l = cfg_.is_rwkv() ? -1 : static_cast<int>(layers_.size()) - 1; l >= 0; --l) {
    Layer& Ly = layers_[static_cast<size_t>(l)];
    const T* res_in = l == 0 ? x0_ : layers_[static_cast<size_t>(l - 1)].res_out;
    // res_out = res_mid + ffn_out: both receive dres unchanged (the branch through its dropout).
    const T* dffn = drop_ ? dmask_ : dres_;
    each_shard([&](int sh, int, int, int r0, int n) {
      const int64_t o = 1LL * r0 * C, nc = 1LL * n * C;
      if (drop_) {
        nn::dropout_backward<T>(dmask_ + o, dres_ + o, Ly.ffn_keep + o, dscale, nc);
        if (!cfg_.is_moe()) nn::dropout_backward<T>(dmask_ + o, dmask_ + o, Ly.out_keep + o, dscale, nc);
      }
      if (!cfg_.is_moe()) {
        const int64_t of = 1LL * r0 * F;
        nn::linear_backward<T>(dact_ + of, gs(Ly.fc2_w, sh), gs(Ly.fc2_b, sh), dffn + o, Ly.fc1_act + of, p(Ly.fc2_w), n, F, C);
        if (drop_) nn::dropout_backward<T>(dact_ + of, dact_ + of, Ly.hid_keep + of, dscale, 1LL * n * F);
        nn::gelu_backward_cached<T>(dh_ + of, dact_ + of, Ly.fc1_h + of, 1LL * n * F);
        nn::linear_backward<T>(dln_ + o, gs(Ly.fc1_w, sh), gs(Ly.fc1_b, sh), dh_ + of, Ly.ln2_out + o, p(Ly.fc1_w), n, C, F);
      }
    });
    if (cfg_.is_moe()) {
      if (cfg_.memory_routing()) std::fill(Ly.dmu_ls, Ly.dmu_ls + routing_grad_size(), T(0));
      nn::MoeDims md = moe_dims(N);
      md.shards = Sl;
      md.shard_rows = shard_tok_.data();
      if (cfg_.memory_routing()) md.sample_k = Ly.k;
      const nn::MoeCache<T>& c = Ly.moe;
      nn::MoeScratch<T>& sc = moe_scratch_;
      {  // the combine's and the router's backward
      const PhaseScope ph(Phase::Routing);
      nn::moe_combine_backward<T>(sc.dys, sc.dgates, dffn, c, md);
      // router gradients: per shard for the replicated router tensors, per sample set for pilf
      router_grads_.resize(static_cast<size_t>(Sl));
      for (int sh = 0; sh < Sl; ++sh) {
        router_grads_[static_cast<size_t>(sh)] = moe_weights(Ly, grads);
        if (!cfg_.memory_routing()) {
          router_grads_[static_cast<size_t>(sh)].router_a = gs(Ly.router_a, sh);
          router_grads_[static_cast<size_t>(sh)].router_b = Ly.router_b >= 0 ? gs(Ly.router_b, sh) : nullptr;
        }
      }
      nn::moe_router_backward<T>(dln_, router_grads_.data(), sc, Ly.ln2_out, c, moe_weights(Ly, params), rk, md);
      }
      T* experts = params.data() + table_[Ly.expert_here].offset;  // this rank's experts' block
      T* gexperts = grads.data() + table_[Ly.expert_here].offset;
      if (par.P == 1) {
        ScopedTimer tx(par.expert_s);
        nn::moe_experts_backward<T>(sc.dxs, gexperts, sc.dys, c.xs, c.h, c.act, c.offsets, cfg_.experts,
                                    experts, md);
      } else {
        ExpertExchange& X = xch_[static_cast<size_t>(l)];
        Owned& o = owned_[static_cast<size_t>(l)];
        const size_t R = static_cast<size_t>(X.own_rows());
        own_dys_.resize(R * C); own_dxs_.resize(R * C);
        X.dispatch(sc.dys, own_dys_.data(), C, par);
        {
          ScopedTimer tx(par.expert_s);
          nn::moe_experts_backward<T>(own_dxs_.data(), gexperts, own_dys_.data(),
                                      o.xs.data(), o.h.data(), o.act.data(), X.own_offsets(),
                                      par.experts_hi() - par.experts_lo(), experts, md);
        }
        X.give_back(own_dxs_.data(), sc.dxs, C, par);
      }
      {
        const PhaseScope ph(Phase::Routing);
        nn::moe_scatter_add<T>(dln_, sc.dxs, c, md);
      }
      if (cfg_.memory_routing() && router_backward_) {
        // the routing gradient through the router into each sample's q = mean of its tokens
        std::vector<RouteGradShard> shards;
        for (int sh = 0; sh < Sl; ++sh) {
          const int b0 = shard_b_[static_cast<size_t>(sh)], nb = shard_b_[static_cast<size_t>(sh) + 1] - b0;
          if (nb > 0) shards.push_back({b0, nb, Ly.dmu_ls + 2LL * b0 * cfg_.experts * C, dq_ + 1LL * b0 * C});
        }
        router_backward_(l, shards);
        each_shard([&](int, int b0, int nb, int r0, int) {
          nn::meanpool_backward<T>(dln_ + 1LL * r0 * C, dq_ + 1LL * b0 * C, nb, Tn, C);
        });
      }
    }
    // the second LayerNorm and the attention block, per shard
    each_shard([&](int sh, int b0, int nb, int r0, int n) {
      const int64_t o = 1LL * r0 * C, nc = 1LL * n * C, oa = 1LL * b0 * H * Tn * Tn;
      nn::layernorm_backward<T>(dres_ + o, gs(Ly.ln2_w, sh), gs(Ly.ln2_b, sh), dln_ + o, Ly.res_mid + o, p(Ly.ln2_w),
                                Ly.ln2_mean + r0, Ly.ln2_rstd + r0, n, C);
      // res_mid = res_in + attproj (through its dropout)
      const T* dproj = dres_ + o;
      if (drop_) {
        nn::dropout_backward<T>(dmask_ + o, dres_ + o, Ly.proj_keep + o, dscale, nc);
        dproj = dmask_ + o;
      }
      nn::linear_backward<T>(datty_ + o, gs(Ly.proj_w, sh), gs(Ly.proj_b, sh), dproj, Ly.atty + o, p(Ly.proj_w), n, C, C);
      nn::AttnDropout<T> ad{drop_ ? Ly.att_keep + oa : nullptr, dscale, drop_ ? Ly.att_drop + oa : nullptr};
      {
        const PhaseScope ph(Phase::Attention);
        nn::attention_backward<T>(dqkv_ + 3 * o, datt_ + oa, datty_ + o, Ly.qkv + 3 * o, Ly.att + oa, nb, Tn, C, H,
                                  cfg_.causal, drop_ ? &ad : nullptr);
      }
      nn::linear_backward<T>(dln_ + o, gs(Ly.qkv_w, sh), gs(Ly.qkv_b, sh), dqkv_ + 3 * o, Ly.ln1_out + o, p(Ly.qkv_w), n, C,
                             3 * C);
      nn::layernorm_backward<T>(dres_ + o, gs(Ly.ln1_w, sh), gs(Ly.ln1_b, sh), dln_ + o, res_in + o, p(Ly.ln1_w),
                                Ly.ln1_mean + r0, Ly.ln1_rstd + r0, n, C);
    });
  }
  // the embeddings, per shard
  each_shard([&](int sh, int b0, int nb, int r0, int n) {
    const int64_t o = 1LL * r0 * C;
    if (drop_) nn::dropout_backward<T>(dres_ + o, dres_ + o, emb_keep_ + o, dscale, 1LL * n * C);
    if (cfg_.is_image()) {
      const int P = cfg_.patch, Pn = cfg_.patches();
      const T* pt = patches_ + 1LL * b0 * Pn * P * P;
      if (!cfg_.cls_token) {
        nn::linear_backward<T>(nullptr, gs(wte_, sh), gs(patch_b_, sh), dres_ + o, pt, p(wte_), n, P * P, C);
      } else {
        for (int b = b0; b < b0 + nb; ++b)  // the patch positions' gradient, contiguous (the forward's patch_emb is free now)
          std::copy(dres_ + (1LL * b * Tn + 1) * C, dres_ + (1LL * b + 1) * Tn * C, patch_emb_ + 1LL * b * Pn * C);
        nn::linear_backward<T>(nullptr, gs(wte_, sh), gs(patch_b_, sh), patch_emb_ + 1LL * b0 * Pn * C, pt, p(wte_), nb * Pn,
                               P * P, C);
        T* dcls = gs(cls_, sh);
        for (int b = b0; b < b0 + nb; ++b)
          for (int i = 0; i < C; ++i) dcls[i] += dres_[1LL * b * Tn * C + i];
      }
      T* dwpe = wpe_ >= 0 ? gs(wpe_, sh) : nullptr;
      for (int b = b0; b < b0 + nb && dwpe; ++b)
        for (int64_t i = 0; i < 1LL * Tn * C; ++i) dwpe[i] += dres_[1LL * b * Tn * C + i];
    } else if (wpe_ < 0) {  // rwkv7: token embedding only
      T* dwte = gs(wte_, sh);
      for (int i = r0; i < r0 + n; ++i) {
        T* row = dwte + 1LL * batch_->tokens[static_cast<size_t>(i)] * C;
        for (int c = 0; c < C; ++c) row[c] += dres_[1LL * i * C + c];
      }
    } else {
      nn::embedding_backward<T>(gs(wte_, sh), gs(wpe_, sh), dres_ + o, batch_->tokens.data() + r0, nb, Tn, C);
    }
  });
  // replicated tensors: the sum over all S shards, reproducible (one shard: already in grads)
  if (!shard_grads_.empty()) shard_sum_.sum(grads.data(), shard_ptrs_, replicated_, par);
}

template <class T>
void Transformer<T>::sample_loss_entropy(double* eps, double* tau) const {
  const int Tn = cfg_.seq_len;
  std::vector<int> cnt(static_cast<size_t>(B_), 0);
  for (int b = 0; b < B_; ++b) eps[b] = tau[b] = 0.0;
  for (int s = 0; s < n_scored_; ++s) {
    const int b = scored_rows_[s] / Tn;
    eps[b] += losses_[s];
    tau[b] += entropies_[static_cast<size_t>(s)];
    ++cnt[static_cast<size_t>(b)];
  }
  for (int b = 0; b < B_; ++b)
    if (cnt[static_cast<size_t>(b)] > 0) {
      eps[b] /= cnt[static_cast<size_t>(b)];
      tau[b] /= cnt[static_cast<size_t>(b)];
    }
}

template <class T>
double Transformer<T>::mean_entropy() const {
  return entropy_mean_;
}

template <class T>
uint64_t Transformer<T>::routing_hash() const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  if (!cfg_.is_moe()) return h;
  const int64_t NK = static_cast<int64_t>(B_) * cfg_.seq_len * cfg_.top_k;
  for (const Layer& Ly : layers_) {
    for (int64_t i = 0; i < NK; ++i) h = (h ^ static_cast<uint64_t>(Ly.moe.idx[i])) * 1099511628211ull;
    if (Ly.k)
      for (int b = 0; b < B_; ++b) h = (h ^ static_cast<uint64_t>(Ly.k[b])) * 1099511628211ull;
  }
  return h;
}

template <class T>
double Transformer<T>::step_flops() const {
  const double N = static_cast<double>(samples_global_) * cfg_.seq_len, C = cfg_.d_model, F = cfg_.d_ff;
  const double Tn = cfg_.seq_len, E = cfg_.experts;
  double fwd = 0.0;
  for (size_t l = 0; l < layers_.size() && cfg_.is_rwkv(); ++l)
    fwd += N * nn::rwkv7_layer_flops(rwkv_dims(static_cast<int>(l), cfg_.seq_len), cfg_.channel_mix);
  for (size_t l = 0; l < layers_.size() && !cfg_.is_rwkv(); ++l) {
    fwd += 2 * N * C * 3 * C + 2 * N * C * C;  // qkv, proj
    fwd += 4 * samples_global_ * Tn * Tn * C;  // QK^T and PV over all heads
    if (cfg_.is_moe()) {
      fwd += (cfg_.kind == ModelKind::Moe ? 2 : 4) * N * C * E;  // router GEMM(s)
      fwd += 4 * layer_rows_[l] * C * F;  // experts on their rows
    } else {
      fwd += 4 * N * C * F;
    }
  }
  fwd += 2.0 * scored_global_ * C * cfg_.vocab;  // head on scored rows
  if (cfg_.is_image()) fwd += 2.0 * samples_global_ * cfg_.patches() * cfg_.patch * cfg_.patch * C;  // patch embedding
  return 3.0 * fwd;
}

template class Transformer<float>;
template class Transformer<double>;

}  // namespace hyperrnn
