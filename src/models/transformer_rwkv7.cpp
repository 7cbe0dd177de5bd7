// Model rwkv7 inside the Transformer harness: its tensors, the reference's initialisation, the
// blocks' forward and backward per shard, and recurrent inference (docs/rwkv7.md).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "models/transformer.hpp"
#include "nn/ops.hpp"
#include "parallel/threads.hpp"

namespace hyperrnn {

namespace {

// The time mix's tensors in Rwkv7AttW order.
constexpr const char* kAttNames[26] = {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "w1", "w2", "a0", "a1", "a2",
                                       "v0", "v1", "v2", "g1", "g2", "k_k", "k_a", "r_k", "receptance.weight",
                                       "key.weight", "value.weight", "output.weight", "ln_x.weight", "ln_x.bias"};
enum AttIdx { XR, XW, XK, XV, XA, XG, W0, W1, W2, A0, A1, A2, V0, V1, V2, G1, G2, KK, KA, RK, WR, WK, WV, WO, LNW, LNB };

// The reference's low-rank size: max(32, round(mult sqrt(C) / 32) x 32) (Python's round: ties to
// even), at most C.
int lora_default(int C, double mult) {
  const double r = std::nearbyint(mult * std::sqrt(static_cast<double>(C)) / 32.0);
  return std::min(C, std::max(32, static_cast<int>(r) * 32));
}

// Orthogonal (rows, cols) matrix times gain from a normal matrix by modified Gram-Schmidt in double:
// orthonormal columns when rows >= cols, orthonormal rows otherwise (as torch.nn.init.orthogonal_).
void orthogonal(std::vector<double>& m, int64_t rows, int64_t cols, double gain, CounterRng& rng) {
  const bool tr = rows < cols;
  const int64_t R = tr ? cols : rows, K = tr ? rows : cols;  // R x K, R >= K, orthonormalise K columns
  std::vector<double> a(static_cast<size_t>(R * K));
  for (double& x : a) x = rng.normal();
  for (int64_t j = 0; j < K; ++j) {
    for (int64_t q = 0; q < j; ++q) {
      double d = 0;
      for (int64_t i = 0; i < R; ++i) d += a[i * K + j] * a[i * K + q];
      for (int64_t i = 0; i < R; ++i) a[i * K + j] -= d * a[i * K + q];
    }
    double n = 0;
    for (int64_t i = 0; i < R; ++i) n += a[i * K + j] * a[i * K + j];
    n = std::sqrt(n);
    for (int64_t i = 0; i < R; ++i) a[i * K + j] /= n;
  }
  m.assign(static_cast<size_t>(rows * cols), 0.0);
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < K; ++j) (tr ? m[j * cols + i] : m[i * cols + j]) = gain * a[i * K + j];
}

}  // namespace

template <class T>
nn::Rwkv7Dims Transformer<T>::rwkv_dims(int layer, int Tn) const {
  nn::Rwkv7Dims d;
  d.T = Tn;
  d.C = cfg_.d_model;
  d.N = cfg_.head_size;
  d.H = d.C / d.N;
  d.Dw = cfg_.lora_w > 0 ? cfg_.lora_w : lora_default(d.C, 2.5);
  d.Da = cfg_.lora_a > 0 ? cfg_.lora_a : lora_default(d.C, 2.5);
  d.Dv = cfg_.lora_v > 0 ? cfg_.lora_v : lora_default(d.C, 1.7);
  d.Dg = cfg_.lora_g > 0 ? cfg_.lora_g : lora_default(d.C, 5.0);
  d.chunk = std::max(1, std::min(cfg_.rwkv_chunk, Tn));
  d.value_residual = cfg_.value_residual && layer > 0;
  d.gate = cfg_.output_gate;
  d.F = cfg_.d_ff;
  return d;
}

template <class T>
void Transformer<T>::add_rwkv_tensors() {
  using TK = TensorKind;
  const int64_t C = cfg_.d_model, F = cfg_.d_ff;
  ln0_w_ = table_.add("ln0.weight", {C}, TK::Dense, false);
  ln0_b_ = table_.add("ln0.bias", {C}, TK::Dense, false);
  for (int l = 0; l < cfg_.layers; ++l) {
    Layer& Ly = layers_[static_cast<size_t>(l)];
    const nn::Rwkv7Dims d = rwkv_dims(l, cfg_.seq_len);
    const std::string pre = "layers." + std::to_string(l) + ".";
    Ly.ln1_w = table_.add(pre + "ln1.weight", {C}, TK::Dense, false, l);
    Ly.ln1_b = table_.add(pre + "ln1.bias", {C}, TK::Dense, false, l);
    for (int i = 0; i < 26; ++i) {
      Ly.ratt[i] = -1;
      if ((i == V0 || i == V1 || i == V2) && !d.value_residual) continue;
      if ((i == XG || i == G1 || i == G2) && !d.gate) continue;
      std::vector<int64_t> shape{C};
      if (i == W1) shape = {C, d.Dw};
      if (i == W2) shape = {d.Dw, C};
      if (i == A1) shape = {C, d.Da};
      if (i == A2) shape = {d.Da, C};
      if (i == V1) shape = {C, d.Dv};
      if (i == V2) shape = {d.Dv, C};
      if (i == G1) shape = {C, d.Dg};
      if (i == G2) shape = {d.Dg, C};
      if (i == RK) shape = {d.H, d.N};
      if (i >= WR && i <= WO) shape = {C, C};
      // weight decay on the 2-D ".weight" tensors only (model.py's optimizer groups)
      Ly.ratt[i] = table_.add(pre + "att." + kAttNames[i], shape, TK::Dense, i >= WR && i <= WO, l);
      if (i == W0) table_.set_lr_scale(Ly.ratt[i], 2.0);  // att.w0: lr x 2, no decay
    }
    Ly.ln2_w = Ly.ln2_b = -1;
    if (cfg_.channel_mix) {
      Ly.ln2_w = table_.add(pre + "ln2.weight", {C}, TK::Dense, false, l);
      Ly.ln2_b = table_.add(pre + "ln2.bias", {C}, TK::Dense, false, l);
      Ly.rffn[0] = table_.add(pre + "ffn.x_k", {C}, TK::Dense, false, l);
      Ly.rffn[1] = table_.add(pre + "ffn.key.weight", {F, C}, TK::Dense, true, l);
      Ly.rffn[2] = table_.add(pre + "ffn.value.weight", {C, F}, TK::Dense, true, l);
    }
  }
}

template <class T>
nn::Rwkv7AttW<T> Transformer<T>::rwkv_att(const Layer& Ly, const std::function<T*(int)>& at) const {
  T* q[26];
  for (int i = 0; i < 26; ++i) q[i] = Ly.ratt[i] >= 0 ? at(Ly.ratt[i]) : nullptr;
  nn::Rwkv7AttW<T> w;
  w.x_r = q[XR]; w.x_w = q[XW]; w.x_k = q[XK]; w.x_v = q[XV]; w.x_a = q[XA]; w.x_g = q[XG];
  w.w0 = q[W0]; w.w1 = q[W1]; w.w2 = q[W2]; w.a0 = q[A0]; w.a1 = q[A1]; w.a2 = q[A2];
  w.v0 = q[V0]; w.v1 = q[V1]; w.v2 = q[V2]; w.g1 = q[G1]; w.g2 = q[G2];
  w.k_k = q[KK]; w.k_a = q[KA]; w.r_k = q[RK];
  w.Wr = q[WR]; w.Wk = q[WK]; w.Wv = q[WV]; w.Wo = q[WO]; w.lnx_w = q[LNW]; w.lnx_b = q[LNB];
  return w;
}

template <class T>
nn::Rwkv7FfnW<T> Transformer<T>::rwkv_ffn(const Layer& Ly, const std::function<T*(int)>& at) const {
  if (Ly.rffn[0] < 0) return {};
  return {at(Ly.rffn[0]), at(Ly.rffn[1]), at(Ly.rffn[2])};
}

template <class T>
void Transformer<T>::bind_rwkv_layer(Layer& Ly, int layer, Carver<T>& f) {
  const int64_t N = static_cast<int64_t>(Bcap_) * cfg_.seq_len, C = cfg_.d_model;
  const nn::Rwkv7Dims d = rwkv_dims(layer, cfg_.seq_len);
  Ly.ln1_out = f.take(N * C); Ly.ln1_mean = f.take(N); Ly.ln1_rstd = f.take(N);
  Ly.attproj = f.take(N * C); Ly.res_mid = f.take(N * C); Ly.res_out = f.take(N * C);
  Ly.rac = nn::rwkv7_att_bind<T>(f, N, Bcap_, d);
  if (cfg_.channel_mix) {
    Ly.ln2_out = f.take(N * C); Ly.ln2_mean = f.take(N); Ly.ln2_rstd = f.take(N); Ly.ffn_out = f.take(N * C);
    Ly.rfc = nn::rwkv7_ffn_bind<T>(f, N, d);
  }
}

template <class T>
void Transformer<T>::init_rwkv7(uint64_t seed) {
  // model.py's __init__ of the time and channel mix, then generate_init_weight's overrides of the
  // 2-D weights (docs/rwkv7.md, Initialisation).
  const int C = cfg_.d_model, L = cfg_.layers, N = cfg_.head_size, V = cfg_.vocab;
  std::vector<double> m;
  for (int ti = 0; ti < table_.size(); ++ti) {
    const TensorInfo& t = table_[ti];
    T* d = params.data() + t.offset;
    CounterRng rng(seed, RngPurpose::Init, static_cast<uint32_t>(ti), 0);
    const std::string& full = t.name;
    const std::string n = t.layer >= 0 ? full.substr(full.find('.', 7) + 1) : full;  // "att.x_r", "ln1.weight", ...
    const int l = t.layer;
    const double r01 = L > 1 ? static_cast<double>(l) / (L - 1) : 0.0;  // ratio_0_to_1 (0 for one layer)
    const double r1a0 = 1.0 - static_cast<double>(l) / L;                 // ratio_1_to_almost0
    auto per_channel = [&](auto f) {
      for (int i = 0; i < C; ++i) d[i] = static_cast<T>(f(i));
    };
    auto linear = [&](int i) { return static_cast<double>(i) / (C - 1) - 0.5; };
    auto zigzag = [&](int i) {
      if (N < 2) return 0.0;
      const double z = ((i % N) - (N - 1) / 2.0) / ((N - 1) / 2.0);
      return z * std::abs(z);
    };
    auto mix = [&](double pw) { per_channel([&](int i) { return 1.0 - std::pow(static_cast<double>(i) / C, pw); }); };
    auto fill = [&](double v) { std::fill(d, d + t.size, static_cast<T>(v)); };
    auto ortho = [&](double gain) {
      orthogonal(m, t.shape[0], t.shape[1], gain, rng);
      for (int64_t k = 0; k < t.size; ++k) d[k] = static_cast<T>(m[static_cast<size_t>(k)]);
    };
    auto lowrank_second = [&] {  // ortho_init(zeros(D, C), 0.1): gain sqrt(rows / cols) when rows > cols
      const double r = static_cast<double>(t.shape[0]), c = static_cast<double>(t.shape[1]);
      ortho(0.1 * (r > c ? std::sqrt(r / c) : 1.0));
    };
    if (n == "wte") {
      for (int64_t k = 0; k < t.size; ++k) d[k] = static_cast<T>(-1e-4 + 2e-4 * rng.uniform_double());
    } else if (n == "head.weight") {
      ortho(V > C ? 0.5 * std::sqrt(static_cast<double>(V) / C) : 0.5);
    } else if (n == "patch.weight") {  // image input (not in the reference): unit-scale tokens
      const double s = 1.0 / std::sqrt(static_cast<double>(t.shape[1]));
      for (int64_t k = 0; k < t.size; ++k) d[k] = static_cast<T>(s * rng.normal());
    } else if (n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0 && t.shape.size() == 1) {
      fill(n == "att.ln_x.weight" ? std::pow((1.0 + l) / L, 0.7) : 1.0);  // LayerNorms; ln_x ((1 + l) / L)^0.7
    } else if (n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0) {
      fill(0.0);
    } else if (n == "att.x_r") mix(0.2 * r1a0);
    else if (n == "att.x_w") mix(0.9 * r1a0);
    else if (n == "att.x_k") mix(0.7 * r1a0);
    else if (n == "att.x_v") mix(0.7 * r1a0);
    else if (n == "att.x_a") mix(0.9 * r1a0);
    else if (n == "att.x_g") mix(0.2 * r1a0);
    else if (n == "ffn.x_k") mix(std::pow(r1a0, 4.0));
    else if (n == "att.w0") {
      per_channel([&](int i) {
        const double www = -6.0 + 6.0 * std::pow(static_cast<double>(i) / (C - 1), 1.0 + std::pow(r01, 0.3));
        return www + 0.5 + 2.5 * zigzag(i);
      });
    } else if (n == "att.a0") per_channel([&](int i) { return -0.19 + 0.3 * zigzag(i) + 0.4 * linear(i); });
    else if (n == "att.v0") per_channel([&](int i) { return 0.73 - 0.4 * linear(i); });
    else if (n == "att.k_k") per_channel([&](int i) { return 0.71 - 0.1 * linear(i); });
    else if (n == "att.k_a") fill(1.02);
    else if (n == "att.r_k") fill(-0.04);
    else if (n == "att.w1" || n == "att.a1" || n == "att.v1" || n == "att.g1") fill(0.0);
    else if (n == "att.w2" || n == "att.a2" || n == "att.v2" || n == "att.g2") lowrank_second();
    else if (n == "att.output.weight" || n == "ffn.value.weight") fill(0.0);
    else if (n == "att.key.weight") ortho(0.1);
    else if (n == "att.receptance.weight" || n == "att.value.weight" || n == "ffn.key.weight") ortho(1.0);
    else HYPERRNN_CHECK(false, "rwkv7 init: no rule for tensor " + full);
  }
}

template <class T>
void Transformer<T>::rwkv_forward_blocks(int Tn) {
  const int C = cfg_.d_model;
  auto P = [this](int i) { return p(i); };
  threads().run(nshards(), [&](int s, int) {
    const int b0 = shard_b_[static_cast<size_t>(s)], nb = shard_b_[static_cast<size_t>(s) + 1] - b0;
    if (nb == 0) return;
    const int r0 = shard_tok_[static_cast<size_t>(s)], n = nb * Tn;
    const int64_t o = 1LL * r0 * C;
    nn::layernorm_forward<T>(x0n_ + o, ln0_mean_ + r0, ln0_rstd_ + r0, x0_ + o, p(ln0_w_), p(ln0_b_), n, C);
    const T* res_in = x0n_;
    for (size_t l = 0; l < layers_.size(); ++l) {
      Layer& Ly = layers_[l];
      const nn::Rwkv7Dims d = rwkv_dims(static_cast<int>(l), Tn);
      nn::layernorm_forward<T>(Ly.ln1_out + o, Ly.ln1_mean + r0, Ly.ln1_rstd + r0, res_in + o, p(Ly.ln1_w), p(Ly.ln1_b), n, C);
      nn::Rwkv7AttCache<T> c = nn::rwkv7_att_at(Ly.rac, r0, b0, d);
      nn::rwkv7_att_forward<T>(Ly.attproj + o, c, vfirst_ + o, Ly.ln1_out + o, rwkv_att(Ly, P), d, nb, nullptr, nullptr,
                               nullptr, l == 0);
      nn::residual_forward<T>(Ly.res_mid + o, res_in + o, Ly.attproj + o, 1LL * n * C);
      if (cfg_.channel_mix) {
        nn::layernorm_forward<T>(Ly.ln2_out + o, Ly.ln2_mean + r0, Ly.ln2_rstd + r0, Ly.res_mid + o, p(Ly.ln2_w), p(Ly.ln2_b), n, C);
        nn::Rwkv7FfnCache<T> fc = nn::rwkv7_ffn_at(Ly.rfc, r0, d);
        nn::rwkv7_ffn_forward<T>(Ly.ffn_out + o, fc, Ly.ln2_out + o, rwkv_ffn(Ly, P), d, nb);
        nn::residual_forward<T>(Ly.res_out + o, Ly.res_mid + o, Ly.ffn_out + o, 1LL * n * C);
      } else {
        std::copy(Ly.res_mid + o, Ly.res_mid + o + 1LL * n * C, Ly.res_out + o);
      }
      res_in = Ly.res_out;
    }
  });
}

template <class T>
void Transformer<T>::rwkv_backward_blocks(int Tn) {
  const int C = cfg_.d_model;
  auto P = [this](int i) { return p(i); };
  int max_rows = 0;
  for (int s = 0; s < nshards(); ++s) max_rows = std::max(max_rows, shard_tok_[static_cast<size_t>(s) + 1] - shard_tok_[static_cast<size_t>(s)]);
  const nn::Rwkv7Dims d0 = rwkv_dims(0, Tn);
  Carver<T> count;
  nn::rwkv7_scratch_bind<T>(count, max_rows, d0);
  rscratch_.resize(static_cast<size_t>(threads().size()));
  for (std::vector<T>& v : rscratch_)
    if (static_cast<int64_t>(v.size()) < count.used()) v.resize(static_cast<size_t>(count.used()));
  threads().run(nshards(), [&](int sh, int th) {
    const int b0 = shard_b_[static_cast<size_t>(sh)], nb = shard_b_[static_cast<size_t>(sh) + 1] - b0;
    if (nb == 0) return;
    const int r0 = shard_tok_[static_cast<size_t>(sh)], n = nb * Tn;
    const int64_t o = 1LL * r0 * C, nc = 1LL * n * C;
    auto G = [this, sh](int i) { return gs(i, sh); };
    Carver<T> cv(rscratch_[static_cast<size_t>(th)].data());
    nn::Rwkv7Scratch<T> sc = nn::rwkv7_scratch_bind<T>(cv, n, d0);
    std::fill(dvfirst_ + o, dvfirst_ + o + nc, T(0));
    for (int l = static_cast<int>(layers_.size()) - 1; l >= 0; --l) {
      Layer& Ly = layers_[static_cast<size_t>(l)];
      const nn::Rwkv7Dims d = rwkv_dims(l, Tn);
      const T* res_in = l == 0 ? x0n_ : layers_[static_cast<size_t>(l - 1)].res_out;
      // dres_: the gradient at the block's output; res_out = res_mid + ffn(ln2(res_mid))
      if (cfg_.channel_mix) {
        nn::rwkv7_ffn_backward<T>(dln_ + o, rwkv_ffn(Ly, G), dres_ + o, nn::rwkv7_ffn_at(Ly.rfc, r0, d), Ly.ln2_out + o,
                                  rwkv_ffn(Ly, P), d, nb, sc);
        nn::layernorm_backward<T>(dres_ + o, G(Ly.ln2_w), G(Ly.ln2_b), dln_ + o, Ly.res_mid + o, p(Ly.ln2_w),
                                  Ly.ln2_mean + r0, Ly.ln2_rstd + r0, n, C);
      }
      // res_mid = res_in + att(ln1(res_in))
      nn::rwkv7_att_backward<T>(dln_ + o, dvfirst_ + o, rwkv_att(Ly, G), dres_ + o, nn::rwkv7_att_at(Ly.rac, r0, b0, d),
                                vfirst_ + o, Ly.ln1_out + o, rwkv_att(Ly, P), d, nb, sc, l == 0);
      nn::layernorm_backward<T>(dres_ + o, G(Ly.ln1_w), G(Ly.ln1_b), dln_ + o, res_in + o, p(Ly.ln1_w), Ly.ln1_mean + r0,
                                Ly.ln1_rstd + r0, n, C);
    }
    // the residual stream starts as ln0(embedding)
    std::fill(datty_ + o, datty_ + o + nc, T(0));
    nn::layernorm_backward<T>(datty_ + o, G(ln0_w_), G(ln0_b_), dres_ + o, x0_ + o, p(ln0_w_), ln0_mean_ + r0, ln0_rstd_ + r0, n, C);
    std::copy(datty_ + o, datty_ + o + nc, dres_ + o);
  });
}

template <class T>
double Transformer<T>::forward_recurrent(const Batch& batch) {
  HYPERRNN_CHECK(cfg_.is_rwkv(), "recurrent inference needs model rwkv7");
  set_shards(batch);
  const int Tn = batch.T, C = cfg_.d_model;
  drop_ = false;
  auto P = [this](int i) { return p(i); };
  threads().run(nshards(), [&](int s, int) {
    const int b0 = shard_b_[static_cast<size_t>(s)], nb = shard_b_[static_cast<size_t>(s) + 1] - b0;
    if (nb == 0) return;
    const int r0 = shard_tok_[static_cast<size_t>(s)];
    embed_rows(batch, b0, nb, r0, nb * Tn);
    // this shard's state (per layer: the two token-shift rows and the wkv state of every sample)
    // and one token's work buffers
    const size_t L = layers_.size();
    const nn::Rwkv7Dims d1 = rwkv_dims(0, 1);
    const int64_t SS = static_cast<int64_t>(d1.H) * d1.N * d1.N, BC = 1LL * nb * C;
    std::vector<T> att_prev(L * BC, T(0)), ffn_prev(L * BC, T(0)), wkv(L * nb * SS, T(0));
    std::vector<T> x(BC), a(BC), out(BC), vf(BC), mean(nb), rstd(nb);
    Carver<T> count;
    nn::rwkv7_att_bind<T>(count, nb, nb, d1);
    nn::rwkv7_ffn_bind<T>(count, nb, d1);
    std::vector<T> arena(static_cast<size_t>(count.used()));
    Carver<T> cv(arena.data());
    nn::Rwkv7AttCache<T> ac = nn::rwkv7_att_bind<T>(cv, nb, nb, d1);
    nn::Rwkv7FfnCache<T> fc = nn::rwkv7_ffn_bind<T>(cv, nb, d1);
    for (int t = 0; t < Tn; ++t) {
      for (int b = 0; b < nb; ++b)
        std::copy(x0_ + (1LL * (b0 + b) * Tn + t) * C, x0_ + (1LL * (b0 + b) * Tn + t + 1) * C, x.data() + 1LL * b * C);
      nn::layernorm_forward<T>(x.data(), mean.data(), rstd.data(), x.data(), p(ln0_w_), p(ln0_b_), nb, C);
      for (size_t l = 0; l < L; ++l) {
        Layer& Ly = layers_[l];
        const nn::Rwkv7Dims d = rwkv_dims(static_cast<int>(l), 1);
        nn::layernorm_forward<T>(a.data(), mean.data(), rstd.data(), x.data(), p(Ly.ln1_w), p(Ly.ln1_b), nb, C);
        T* st = wkv.data() + l * nb * SS;
        nn::rwkv7_att_forward<T>(out.data(), ac, vf.data(), a.data(), rwkv_att(Ly, P), d, nb, att_prev.data() + l * BC, st, st,
                                 l == 0);
        std::copy(a.begin(), a.end(), att_prev.begin() + static_cast<int64_t>(l) * BC);
        for (int64_t i = 0; i < BC; ++i) x[i] += out[i];
        if (cfg_.channel_mix) {
          nn::layernorm_forward<T>(a.data(), mean.data(), rstd.data(), x.data(), p(Ly.ln2_w), p(Ly.ln2_b), nb, C);
          nn::rwkv7_ffn_forward<T>(out.data(), fc, a.data(), rwkv_ffn(Ly, P), d, nb, ffn_prev.data() + l * BC);
          std::copy(a.begin(), a.end(), ffn_prev.begin() + static_cast<int64_t>(l) * BC);
          for (int64_t i = 0; i < BC; ++i) x[i] += out[i];
        }
      }
      for (int b = 0; b < nb; ++b) {
        const int64_t row = 1LL * (b0 + b) * Tn + t;
        nn::layernorm_forward<T>(lnf_out_ + row * C, lnf_mean_ + row, lnf_rstd_ + row, x.data() + 1LL * b * C, p(lnf_w_),
                                 p(lnf_b_), 1, C);
      }
    }
  });
  return head_forward(batch);
}

template <class T>
int64_t Transformer<T>::state_floats_per_sequence(int64_t positions) const {
  if (cfg_.is_rwkv()) {
    int64_t s = 0;
    for (int l = 0; l < cfg_.layers; ++l) s += nn::rwkv7_state_floats(rwkv_dims(l, 1), cfg_.channel_mix);
    return s;
  }
  return 2LL * cfg_.layers * positions * cfg_.d_model;  // K and V of every layer and position
}

#define HYPERRNN_TRANSFORMER_RWKV7(T)                                                                       \
  template nn::Rwkv7Dims Transformer<T>::rwkv_dims(int, int) const;                                         \
  template void Transformer<T>::add_rwkv_tensors();                                                        \
  template nn::Rwkv7AttW<T> Transformer<T>::rwkv_att(const Layer&, const std::function<T*(int)>&) const;    \
  template nn::Rwkv7FfnW<T> Transformer<T>::rwkv_ffn(const Layer&, const std::function<T*(int)>&) const;    \
  template void Transformer<T>::bind_rwkv_layer(Layer&, int, Carver<T>&);                                   \
  template void Transformer<T>::init_rwkv7(uint64_t);                                                       \
  template void Transformer<T>::rwkv_forward_blocks(int);                                                   \
  template void Transformer<T>::rwkv_backward_blocks(int);                                                  \
  template double Transformer<T>::forward_recurrent(const Batch&);                                          \
  template int64_t Transformer<T>::state_floats_per_sequence(int64_t) const;
HYPERRNN_TRANSFORMER_RWKV7(float)
HYPERRNN_TRANSFORMER_RWKV7(double)

}  // namespace hyperrnn
