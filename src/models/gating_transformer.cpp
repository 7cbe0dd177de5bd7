// GatingTransformer forward and backward through the ops of src/nn (post-norm decoder layers).
#include "models/gating_transformer.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "nn/ops.hpp"

namespace hyperrnn {

template <class T>
GatingTransformer<T>::GatingTransformer(const GatingConfig& cfg, int capacity) : cfg_(cfg), cap_(capacity) {
  const int64_t C = cfg.d_model, E = cfg.experts;
  HYPERRNN_CHECK(C > 0 && cfg.heads > 0 && C % cfg.heads == 0, "gating: heads must divide d_model");
  HYPERRNN_CHECK(cfg.layers >= 1 && E >= 1 && cfg.history >= 1 && cfg.banks >= 1, "gating: bad configuration");
  using TK = TensorKind;
  banks_.resize(static_cast<size_t>(cfg.banks));
  for (int b = 0; b < cfg.banks; ++b) {
    Bank& bk = banks_[static_cast<size_t>(b)];
    const std::string pre = "layers." + std::to_string(b) + ".gating.";
    auto mat = [&](const std::string& n, int64_t o, int64_t i) { return table_.add(pre + n, {o, i}, TK::Gating, true, b); };
    auto vec = [&](const std::string& n, int64_t o) { return table_.add(pre + n, {o}, TK::Gating, false, b); };
    for (int j = 0; j < cfg.layers; ++j) {
      const std::string d = "dec." + std::to_string(j) + ".";
      Dec x{};
      x.sa_v_w = mat(d + "self_attn.v.weight", C, C);
      x.sa_v_b = vec(d + "self_attn.v.bias", C);
      x.sa_o_w = mat(d + "self_attn.out.weight", C, C);
      x.sa_o_b = vec(d + "self_attn.out.bias", C);
      x.ln1_w = vec(d + "norm1.weight", C);
      x.ln1_b = vec(d + "norm1.bias", C);
      x.ca_q_w = mat(d + "cross_attn.q.weight", C, C);
      x.ca_q_b = vec(d + "cross_attn.q.bias", C);
      x.ca_kv_w = mat(d + "cross_attn.kv.weight", 2 * C, C);
      x.ca_kv_b = vec(d + "cross_attn.kv.bias", 2 * C);
      x.ca_o_w = mat(d + "cross_attn.out.weight", C, C);
      x.ca_o_b = vec(d + "cross_attn.out.bias", C);
      x.ln2_w = vec(d + "norm2.weight", C);
      x.ln2_b = vec(d + "norm2.bias", C);
      x.ff1_w = mat(d + "ff1.weight", 4 * C, C);
      x.ff1_b = vec(d + "ff1.bias", 4 * C);
      x.ff2_w = mat(d + "ff2.weight", C, 4 * C);
      x.ff2_b = vec(d + "ff2.bias", C);
      x.ln3_w = vec(d + "norm3.weight", C);
      x.ln3_b = vec(d + "norm3.bias", C);
      bk.dec.push_back(x);
    }
    bk.head_w = mat("head.weight", 2 * E * C, C);
    bk.head_b = vec("head.bias", 2 * E * C);
  }
  params.assign(static_cast<size_t>(table_.total()), T(0));
  grads.assign(static_cast<size_t>(table_.total()), T(0));
  HYPERRNN_CHECK(cfg.dropout >= 0.0 && cfg.dropout < 1.0, "gating: dropout must be in [0, 1)");
  acts_.resize(static_cast<size_t>(cfg.layers));
  Carver<T> count;
  Carver<uint8_t> bcount;
  bind(count, bcount);
  arena_.assign(static_cast<size_t>(count.used()), T(0));
  barena_.assign(static_cast<size_t>(bcount.used()), 0);
  Carver<T> f(arena_.data());
  Carver<uint8_t> bf(barena_.data());
  bind(f, bf);
}

template <class T>
void GatingTransformer<T>::bind(Carver<T>& f, Carver<uint8_t>& bk) {
  const int64_t n = cap_, C = cfg_.d_model, Kh = cfg_.history, H = cfg_.heads;
  const bool d = cfg_.dropout > 0.0;
  for (Acts& a : acts_) {
    a.k_sa = a.k_r1 = a.k_ca = a.k_r2 = a.k_ff = a.k_r3 = nullptr;
    a.att_drop = nullptr;
    if (d) {
      a.k_sa = bk.take(n * H); a.k_r1 = bk.take(n * C); a.k_ca = bk.take(n * H * Kh); a.k_r2 = bk.take(n * C);
      a.k_ff = bk.take(n * 4 * C); a.k_r3 = bk.take(n * C);
      a.att_drop = f.take(n * H * Kh);
    }
    a.sa_v = f.take(n * C); a.r1 = f.take(n * C); a.x1 = f.take(n * C); a.m1 = f.take(n); a.s1 = f.take(n);
    a.caq = f.take(n * C); a.kv = f.take(n * Kh * 2 * C); a.att = f.take(n * H * Kh); a.cay = f.take(n * C);
    a.r2 = f.take(n * C); a.x2 = f.take(n * C); a.m2 = f.take(n); a.s2 = f.take(n);
    a.ffh = f.take(n * 4 * C); a.ffa = f.take(n * 4 * C);
    a.r3 = f.take(n * C); a.x3 = f.take(n * C); a.m3 = f.take(n); a.s3 = f.take(n);
  }
  tmp_ = f.take(n * C); d_a_ = f.take(n * C); d_b_ = f.take(n * C); d_c_ = f.take(n * C);
  dff_a_ = f.take(n * 4 * C); dff_h_ = f.take(n * 4 * C);
  dkv_ = f.take(n * Kh * 2 * C); datt_ = f.take(n * H * Kh); dq_ = f.take(n * C);
}

template <class T>
void GatingTransformer<T>::init(uint64_t seed) {
  for (int i = 0; i < table_.size(); ++i) {
    const TensorInfo& t = table_[i];
    T* d = params.data() + t.offset;
    const bool is_norm_w = t.name.find("norm") != std::string::npos && t.name.size() >= 6 &&
                           t.name.compare(t.name.size() - 6, 6, "weight") == 0;
    const double stdv = t.shape.size() == 2 ? cfg_.init_scale / std::sqrt(2.0 * static_cast<double>(t.shape[1])) : 0.0;
    CounterRng rng(seed, RngPurpose::Init, static_cast<uint32_t>(1000000 + i), 0);
    for (int64_t k = 0; k < t.size; ++k) d[k] = static_cast<T>(stdv > 0 ? stdv * rng.normal() : (is_norm_w ? 1.0 : 0.0));
  }
}

template <class T>
void GatingTransformer<T>::zero_grad() {
  std::fill(grads.begin(), grads.end(), T(0));
}

template <class T>
void GatingTransformer<T>::forward(T* out, const T* q, const T* hist, int n, int bank, const nn::DropoutKey* key,
                                   uint32_t first) {
  HYPERRNN_CHECK(n >= 0 && n <= cap_, "gating: more queries than the capacity");
  HYPERRNN_CHECK(bank >= 0 && bank < cfg_.banks, "gating: bank out of range");
  q_ = q;
  hist_ = hist;
  n_ = n;
  bank_ = bank;
  drop_ = key != nullptr && cfg_.dropout > 0.0;
  if (n == 0) return;
  const int C = cfg_.d_model, Kh = cfg_.history, H = cfg_.heads, E = cfg_.experts, hs = C / H;
  const int64_t nC = 1LL * n * C;
  const Bank& bk = banks_[static_cast<size_t>(bank)];
  const T ds = static_cast<T>(1.0 / (1.0 - cfg_.dropout));
  const uint32_t thr = nn::dropout_threshold(cfg_.dropout);
  // query b's mask for one site of decoder layer j: stream index (first + b) x sites + site
  auto masks = [&](uint8_t* keep, size_t j, int site, int64_t per_query) {
    const int s0 = (bank * cfg_.layers + static_cast<int>(j)) * 6 + site;
    for (int b = 0; b < n; ++b)
      nn::dropout_mask(keep + b * per_query, per_query, *key, static_cast<uint32_t>((first + b) * sites() + s0), thr);
  };
  const T* x = q;
  for (size_t j = 0; j < bk.dec.size(); ++j) {
    const Dec& d = bk.dec[j];
    Acts& a = acts_[j];
    // self-attention over the one-token target: softmax over a single key is 1, so the block is
    // exactly out(v(x)) (with dropout: each head's weight 1 kept as 1/(1-p) or dropped); the
    // query/key projections have no effect and are not stored.
    nn::linear_forward<T>(a.sa_v, x, p(d.sa_v_w), p(d.sa_v_b), n, C, C);
    if (drop_) {
      masks(a.k_sa, j, 0, H);
      for (int b = 0; b < n; ++b)
        for (int h = 0; h < H; ++h) {
          const T f = a.k_sa[b * H + h] ? ds : T(0);
          for (int i = 0; i < hs; ++i) a.sa_v[1LL * b * C + h * hs + i] *= f;
        }
    }
    nn::linear_forward<T>(tmp_, a.sa_v, p(d.sa_o_w), p(d.sa_o_b), n, C, C);
    if (drop_) {
      masks(a.k_r1, j, 1, C);
      nn::dropout_forward<T>(tmp_, tmp_, a.k_r1, ds, nC);
    }
    nn::residual_forward<T>(a.r1, x, tmp_, nC);
    nn::layernorm_forward<T>(a.x1, a.m1, a.s1, a.r1, p(d.ln1_w), p(d.ln1_b), n, C);
    nn::linear_forward<T>(a.caq, a.x1, p(d.ca_q_w), p(d.ca_q_b), n, C, C);
    nn::linear_forward<T>(a.kv, hist, p(d.ca_kv_w), p(d.ca_kv_b), n * Kh, C, 2 * C);
    nn::AttnDropout<T> ad{a.k_ca, ds, a.att_drop};
    if (drop_) masks(a.k_ca, j, 2, 1LL * H * Kh);
    nn::cross_attention_forward<T>(a.cay, a.att, a.caq, a.kv, n, 1, Kh, C, H, drop_ ? &ad : nullptr);
    nn::linear_forward<T>(tmp_, a.cay, p(d.ca_o_w), p(d.ca_o_b), n, C, C);
    if (drop_) {
      masks(a.k_r2, j, 3, C);
      nn::dropout_forward<T>(tmp_, tmp_, a.k_r2, ds, nC);
    }
    nn::residual_forward<T>(a.r2, a.x1, tmp_, nC);
    nn::layernorm_forward<T>(a.x2, a.m2, a.s2, a.r2, p(d.ln2_w), p(d.ln2_b), n, C);
    nn::linear_forward<T>(a.ffh, a.x2, p(d.ff1_w), p(d.ff1_b), n, C, 4 * C);
    nn::relu_forward<T>(a.ffa, a.ffh, 4 * nC);
    if (drop_) {
      masks(a.k_ff, j, 4, 4LL * C);
      nn::dropout_forward<T>(a.ffa, a.ffa, a.k_ff, ds, 4 * nC);
    }
    nn::linear_forward<T>(tmp_, a.ffa, p(d.ff2_w), p(d.ff2_b), n, 4 * C, C);
    if (drop_) {
      masks(a.k_r3, j, 5, C);
      nn::dropout_forward<T>(tmp_, tmp_, a.k_r3, ds, nC);
    }
    nn::residual_forward<T>(a.r3, a.x2, tmp_, nC);
    nn::layernorm_forward<T>(a.x3, a.m3, a.s3, a.r3, p(d.ln3_w), p(d.ln3_b), n, C);
    x = a.x3;
  }
  nn::linear_forward<T>(out, x, p(bk.head_w), p(bk.head_b), n, C, 2 * E * C);
}

template <class T>
void GatingTransformer<T>::backward(const T* dout, T* dq, bool param_grads) {
  const int n = n_;
  if (n == 0) return;
  const int C = cfg_.d_model, Kh = cfg_.history, H = cfg_.heads, E = cfg_.experts, hs = C / H;
  const int64_t nC = 1LL * n * C;
  const Bank& bk = banks_[static_cast<size_t>(bank_)];
  const int Ld = static_cast<int>(bk.dec.size());
  const T ds = static_cast<T>(1.0 / (1.0 - cfg_.dropout));
  auto gp = [&](int i) { return param_grads ? g(i) : nullptr; };
  // the gradient of a residual branch's output before its dropout (into tmp_)
  auto branch = [&](const T* d, const uint8_t* keep) -> const T* {
    if (!drop_) return d;
    nn::dropout_backward<T>(tmp_, d, keep, ds, nC);
    return tmp_;
  };
  // d_a_ holds the gradient w.r.t. the current layer's output x3
  nn::linear_backward<T>(d_a_, gp(bk.head_w), gp(bk.head_b), dout, acts_[static_cast<size_t>(Ld - 1)].x3, p(bk.head_w), n, C, 2 * E * C);
  for (int j = Ld - 1; j >= 0; --j) {
    const Dec& d = bk.dec[static_cast<size_t>(j)];
    Acts& a = acts_[static_cast<size_t>(j)];
    const T* x = j == 0 ? q_ : acts_[static_cast<size_t>(j - 1)].x3;
    // x3 = LN3(r3), r3 = x2 + drop(ff(x2))
    std::fill(d_b_, d_b_ + nC, T(0));
    nn::layernorm_backward<T>(d_b_, gp(d.ln3_w), gp(d.ln3_b), d_a_, a.r3, p(d.ln3_w), a.m3, a.s3, n, C);
    nn::linear_backward<T>(dff_a_, gp(d.ff2_w), gp(d.ff2_b), branch(d_b_, a.k_r3), a.ffa, p(d.ff2_w), n, 4 * C, C);
    if (drop_) nn::dropout_backward<T>(dff_a_, dff_a_, a.k_ff, ds, 4 * nC);
    nn::relu_backward<T>(dff_h_, dff_a_, a.ffh, 4 * nC);
    nn::linear_backward<T>(d_c_, gp(d.ff1_w), gp(d.ff1_b), dff_h_, a.x2, p(d.ff1_w), n, C, 4 * C);
    for (int64_t i = 0; i < nC; ++i) d_c_[i] += d_b_[i];  // dx2
    // x2 = LN2(r2), r2 = x1 + drop(ca(x1, hist))
    std::fill(d_b_, d_b_ + nC, T(0));
    nn::layernorm_backward<T>(d_b_, gp(d.ln2_w), gp(d.ln2_b), d_c_, a.r2, p(d.ln2_w), a.m2, a.s2, n, C);
    nn::linear_backward<T>(d_a_, gp(d.ca_o_w), gp(d.ca_o_b), branch(d_b_, a.k_r2), a.cay, p(d.ca_o_w), n, C, C);
    nn::AttnDropout<T> ad{a.k_ca, ds, a.att_drop};
    nn::cross_attention_backward<T>(dq_, dkv_, datt_, d_a_, a.caq, a.kv, a.att, n, 1, Kh, C, H, drop_ ? &ad : nullptr);
    if (param_grads)
      nn::linear_backward<T>(static_cast<T*>(nullptr), g(d.ca_kv_w), g(d.ca_kv_b), dkv_, hist_, p(d.ca_kv_w), n * Kh, C, 2 * C);
    nn::linear_backward<T>(d_c_, gp(d.ca_q_w), gp(d.ca_q_b), dq_, a.x1, p(d.ca_q_w), n, C, C);
    for (int64_t i = 0; i < nC; ++i) d_c_[i] += d_b_[i];  // dx1
    // x1 = LN1(r1), r1 = x + drop(out(drop_heads(v(x))))
    std::fill(d_b_, d_b_ + nC, T(0));
    nn::layernorm_backward<T>(d_b_, gp(d.ln1_w), gp(d.ln1_b), d_c_, a.r1, p(d.ln1_w), a.m1, a.s1, n, C);
    nn::linear_backward<T>(d_c_, gp(d.sa_o_w), gp(d.sa_o_b), branch(d_b_, a.k_r1), a.sa_v, p(d.sa_o_w), n, C, C);
    if (drop_)
      for (int b = 0; b < n; ++b)
        for (int h = 0; h < H; ++h) {
          const T f = a.k_sa[b * H + h] ? ds : T(0);
          for (int i = 0; i < hs; ++i) d_c_[1LL * b * C + h * hs + i] *= f;
        }
    T* dx = j > 0 ? d_a_ : dq;  // the gradient w.r.t. this layer's input (j = 0: q, wanted or not)
    nn::linear_backward<T>(dx, gp(d.sa_v_w), gp(d.sa_v_b), d_c_, x, p(d.sa_v_w), n, C, C);
    if (dx)
      for (int64_t i = 0; i < nC; ++i) dx[i] += d_b_[i];  // dx of this layer = dx3 of the one below
  }
}

template <class T>
uint64_t GatingTransformer<T>::relu_pattern() const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the sign bits
  const int64_t m = 4LL * n_ * cfg_.d_model;
  for (const Acts& a : acts_)
    for (int64_t i = 0; i < m; ++i) h = (h ^ static_cast<uint64_t>(a.ffh[i] > T(0))) * 1099511628211ull;
  return h;
}

template <class T>
double GatingTransformer<T>::forward_flops(int n) const {
  const double C = cfg_.d_model, Kh = cfg_.history, E = cfg_.experts;
  const double per_layer = 2 * C * C * 2 + 2 * C * C + 2 * Kh * C * 2 * C + 4 * Kh * C + 2 * C * C + 2 * 2 * C * 4 * C;
  return n * (cfg_.layers * per_layer + 2 * C * 2 * E * C);
}

template class GatingTransformer<float>;
template class GatingTransformer<double>;

}  // namespace hyperrnn
