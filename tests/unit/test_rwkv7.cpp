// RWKV-7 (src/nn/rwkv7.*, model rwkv7): finite-difference gradients (double; tolerance derived in
// gradcheck.hpp) of the time mix alone, the channel mix alone and the whole model with every
// option combination; gradients bitwise independent of the checkpoint interval; recurrent
// inference against the training forward; the reference's initialisation; state sizes.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "fixtures.hpp"
#include "gradcheck.hpp"
#include "models/transformer.hpp"
#include "nn/rwkv7.hpp"
#include "tasks/mqar.hpp"

using namespace hyperrnn;
using test::mqar_batch;
using test::small_rwkv7;
using namespace hyperrnn::nn;
using test::check_gradient;
using test::dot;
using test::require_ok;
using test::uniform;
using V = std::vector<double>;

namespace {

// Every time-mix tensor in one buffer (the order of Rwkv7AttW), with pointers into it.
struct AttParams {
  V buf;
  std::vector<std::pair<int64_t, int64_t>> spans;  // offset, size per tensor
  Rwkv7AttW<double> at(V& b) const {
    double* q[26];
    for (int i = 0; i < 26; ++i) q[i] = spans[i].second ? b.data() + spans[i].first : nullptr;
    Rwkv7AttW<double> w;
    w.x_r = q[0]; w.x_w = q[1]; w.x_k = q[2]; w.x_v = q[3]; w.x_a = q[4]; w.x_g = q[5];
    w.w0 = q[6]; w.w1 = q[7]; w.w2 = q[8]; w.a0 = q[9]; w.a1 = q[10]; w.a2 = q[11];
    w.v0 = q[12]; w.v1 = q[13]; w.v2 = q[14]; w.g1 = q[15]; w.g2 = q[16];
    w.k_k = q[17]; w.k_a = q[18]; w.r_k = q[19];
    w.Wr = q[20]; w.Wk = q[21]; w.Wv = q[22]; w.Wo = q[23]; w.lnx_w = q[24]; w.lnx_b = q[25];
    return w;
  }
};
AttParams att_params(const Rwkv7Dims& d, uint64_t seed) {
  const int64_t C = d.C;
  const int64_t sizes[26] = {C, C, C, C, C, d.gate ? C : 0, C, C * d.Dw, d.Dw * C, C, C * d.Da, d.Da * C,
                             d.value_residual ? C : 0, d.value_residual ? C * d.Dv : 0, d.value_residual ? d.Dv * C : 0,
                             d.gate ? C * d.Dg : 0, d.gate ? d.Dg * C : 0, C, C, C, C * C, C * C, C * C, C * C, C, C};
  AttParams p;
  int64_t o = 0;
  for (int64_t s : sizes) {
    p.spans.push_back({o, s});
    o += s;
  }
  p.buf = uniform(o, seed, 0.5);
  for (int64_t i = 0; i < C; ++i) p.buf[static_cast<size_t>(p.spans[24].first + i)] += 1.0;  // ln_x weight near 1
  return p;
}

Rwkv7Dims dims(int T, bool vres, bool gate) {
  Rwkv7Dims d;
  d.T = T;
  d.C = 8;
  d.N = 4;
  d.H = 2;
  d.Dw = 3;
  d.Da = 2;
  d.Dv = 3;
  d.Dg = 4;
  d.chunk = 3;
  d.value_residual = vres;
  d.gate = gate;
  d.F = 12;
  return d;
}


// Random parameters of moderate size everywhere (the reference's initialisation has exact zeros,
// W_o among them, under which most gradients vanish and a check proves little).
void randomise(Transformer<double>& m, uint64_t seed) {
  for (const TensorInfo& t : m.table().entries()) {
    const V u = uniform(t.size, seed++, 0.4);
    const bool norm_w = t.name.find("ln") != std::string::npos && t.name.find(".weight") != std::string::npos;
    for (int64_t i = 0; i < t.size; ++i) m.params[static_cast<size_t>(t.offset + i)] = u[static_cast<size_t>(i)] + (norm_w ? 1.0 : 0.0);
  }
}

}  // namespace

TEST_CASE("rwkv7 time mix: gradients of its input, v_first and every parameter", "[rwkv7][grad]") {
  for (const auto& [vres, gate] : {std::pair{true, true}, std::pair{false, true}, std::pair{true, false}, std::pair{false, false}}) {
    for (bool first : {false, true}) {
      if (first && vres) continue;  // layer 0 keeps v_first, never mixes it in
      INFO("value residual " << vres << ", gate " << gate << ", first layer " << first);
      const int nb = 2, T = 7;
      const Rwkv7Dims d = dims(T, vres, gate);
      const int64_t RC = static_cast<int64_t>(nb) * T * d.C;
      AttParams p = att_params(d, 5);
      V xa = uniform(RC, 6, 1.0), vf = uniform(RC, 7, 1.0), R = uniform(RC, 8, 1.0), R2 = uniform(RC, 9, 1.0);
      Carver<double> count;
      rwkv7_att_bind<double>(count, nb * T, nb, d);
      V cache(static_cast<size_t>(count.used()));
      Carver<double> cv(cache.data());
      Rwkv7AttCache<double> c = rwkv7_att_bind<double>(cv, nb * T, nb, d);
      V out(RC), vf_work(RC);
      // L = sum(out R) (+ sum(v_first R2) on the first layer, which writes v_first)
      auto f = [&] {
        vf_work = vf;
        rwkv7_att_forward<double>(out.data(), c, vf_work.data(), xa.data(), p.at(p.buf), d, nb, nullptr, nullptr, nullptr, first);
        return dot(out, R) + (first ? dot(vf_work, R2) : 0.0);
      };
      f();
      V g(p.buf.size(), 0.0), dxa(RC), dvf = first ? R2 : V(RC, 0.0);
      Carver<double> cs;
      rwkv7_scratch_bind<double>(cs, nb * T, d);
      V scr(static_cast<size_t>(cs.used()));
      Carver<double> sv(scr.data());
      Rwkv7Scratch<double> sc = rwkv7_scratch_bind<double>(sv, nb * T, d);
      rwkv7_att_backward<double>(dxa.data(), dvf.data(), p.at(g), R.data(), c, vf.data(), xa.data(), p.at(p.buf), d, nb, sc, first);
      require_ok(check_gradient(f, p.buf.data(), g.data(), static_cast<int64_t>(p.buf.size()), 400), "parameters");
      require_ok(check_gradient(f, xa.data(), dxa.data(), RC, 64), "input");
      if (vres) require_ok(check_gradient(f, vf.data(), dvf.data(), RC, 64), "v_first");
    }
  }
}

TEST_CASE("rwkv7 channel mix: gradients of its input and parameters", "[rwkv7][grad]") {
  const int nb = 2, T = 5;
  const Rwkv7Dims d = dims(T, false, false);
  const int64_t RC = static_cast<int64_t>(nb) * T * d.C;
  V w = uniform(d.C + 2LL * d.C * d.F, 3, 0.6), xb = uniform(RC, 4, 1.0), R = uniform(RC, 5, 1.0);
  auto at = [&](V& b) { return Rwkv7FfnW<double>{b.data(), b.data() + d.C, b.data() + d.C + d.C * d.F}; };
  Carver<double> count;
  rwkv7_ffn_bind<double>(count, nb * T, d);
  V cache(static_cast<size_t>(count.used()));
  Carver<double> cv(cache.data());
  Rwkv7FfnCache<double> c = rwkv7_ffn_bind<double>(cv, nb * T, d);
  V out(RC);
  auto f = [&] {
    rwkv7_ffn_forward<double>(out.data(), c, xb.data(), at(w), d, nb);
    return dot(out, R);
  };
  f();
  Carver<double> cs;
  rwkv7_scratch_bind<double>(cs, nb * T, d);
  V scr(static_cast<size_t>(cs.used()));
  Carver<double> sv(scr.data());
  Rwkv7Scratch<double> sc = rwkv7_scratch_bind<double>(sv, nb * T, d);
  V g(w.size(), 0.0), dxb(RC);
  rwkv7_ffn_backward<double>(dxb.data(), at(g), R.data(), c, xb.data(), at(w), d, nb, sc);
  require_ok(check_gradient(f, w.data(), g.data(), static_cast<int64_t>(w.size()), 200), "parameters");
  require_ok(check_gradient(f, xb.data(), dxb.data(), RC, 64), "input");
}

TEST_CASE("rwkv7 model: every tensor's gradient, every option combination", "[rwkv7][grad][model]") {
  for (int combo = 0; combo < 8; ++combo) {
    const bool vres = combo & 1, gate = combo & 2, cmix = combo & 4;
    INFO("value residual " << vres << ", gate " << gate << ", channel mix " << cmix);
    const ModelConfig mc = small_rwkv7(vres, gate, cmix);
    const int B = 3, D = 3;
    Transformer<double> model(mc, B, B * D);
    model.init(7);
    randomise(model, 100);
    const Batch batch = mqar_batch(mc, B, D);
    model.forward(batch);
    model.zero_grad();
    model.backward();
    auto f = [&] { return model.forward(batch); };
    int checked = 0;
    for (const TensorInfo& t : model.table().entries()) {
      const auto r = check_gradient(f, model.params.data() + t.offset, model.grads.data() + t.offset, t.size, 24);
      INFO("tensor " << t.name << ": " << r.first_failure << " worst " << r.worst);
      REQUIRE(r.failed == 0);
      checked += r.checked;
    }
    CHECK(checked > 200);
  }
}

TEST_CASE("rwkv7 model: L2Wrap adds factor x max logit / scored rows at each row's argmax", "[rwkv7][model]") {
  ModelConfig mc = small_rwkv7(true, true, true);
  const int B = 3, D = 3;
  Transformer<double> a(mc, B, B * D);
  mc.l2wrap = 0.25;  // large, so that the difference is far above rounding
  Transformer<double> b(mc, B, B * D);
  a.init(7);
  randomise(a, 100);
  b.params = a.params;
  const Batch batch = mqar_batch(mc, B, D);
  const double la = a.forward(batch), lb = b.forward(batch);
  CHECK(la == lb);  // the forward loss is plain cross-entropy
  a.zero_grad();
  b.zero_grad();
  a.backward();
  b.backward();
  // the head's gradient differs by 0.25 / S x max logit x h at the argmax class of each scored row
  const int head = a.table().find("head.weight");
  REQUIRE(head >= 0);
  const int Vn = mc.vocab, C = mc.d_model, S = a.scored();
  const double* lg = a.scored_logits();
  // hs (the final-norm rows fed to the head) is not exposed: recover the difference's structure
  // instead: rows of the difference are nonzero only at argmax classes
  std::vector<int> is_argmax(static_cast<size_t>(Vn), 0);
  for (int s = 0; s < S; ++s) {
    int am = 0;
    for (int v = 1; v < Vn; ++v) am = lg[s * Vn + v] > lg[s * Vn + am] ? v : am;
    is_argmax[static_cast<size_t>(am)] = 1;
  }
  double diff = 0;
  for (int v = 0; v < Vn; ++v)
    for (int c = 0; c < C; ++c) {
      const size_t i = static_cast<size_t>(a.table()[head].offset + v * C + c);
      const double dd = std::abs(b.grads[i] - a.grads[i]);
      if (!is_argmax[static_cast<size_t>(v)]) CHECK(dd < 1e-15);
      diff += dd;
    }
  CHECK(diff > 1e-6);
}

TEST_CASE("rwkv7 model: gradients bitwise independent of the checkpoint interval", "[rwkv7][model]") {
  std::vector<double> ref;
  for (int chunk : {1, 4, 5, 12}) {
    const ModelConfig mc = small_rwkv7(true, true, true, chunk);
    Transformer<double> model(mc, 3, 9);
    model.init(7);
    randomise(model, 100);
    const Batch batch = mqar_batch(mc, 3, 3);
    model.forward(batch);
    model.zero_grad();
    model.backward();
    if (ref.empty()) ref = model.grads;
    else CHECK(model.grads == ref);
  }
}

TEST_CASE("rwkv7 recurrent inference equals the training forward position by position", "[rwkv7][recurrent]") {
  // Float, the training precision. The two paths do the same arithmetic per token except the
  // GEMMs' row blocking (T x B rows at once against B rows per token), which may reorder each dot
  // product of length C: a relative difference of a few float epsilons (1.2e-7) per op, growing
  // through the 2 layers' ~20 ops and the recurrence's state; logits of size ~1 then agree to
  // ~1e-5. Bound: 1e-4 absolute on the logits (a wrong state or token shift is off by O(1e-1)).
  for (bool cmix : {true, false}) {
    ModelConfig mc = small_rwkv7(true, true, cmix, 4);
    mc.seq_len = 16;
    Transformer<float> model(mc, 4, 4 * 16);
    model.init(3);
    {  // random weights: the reference's zeros would make every layer's output 0
      Transformer<double> dm(mc, 1, 1);
      randomise(dm, 200);
      for (size_t i = 0; i < dm.params.size(); ++i) model.params[i] = static_cast<float>(dm.params[i]);
    }
    MqarGenerator gen(test::small_mqar(mc.vocab, 16, 3));
    Batch batch;
    batch.resize(4, 16);
    gen.fill(batch, 3, RngPurpose::TestData, 0, 0, 4);
    for (int i = 0; i < 4 * 16; ++i) batch.targets[static_cast<size_t>(i)] = batch.tokens[static_cast<size_t>(i)] % mc.vocab;  // score every position
    const double lp = model.forward(batch);
    const std::vector<float> par(model.scored_logits(), model.scored_logits() + static_cast<size_t>(model.scored_rows()) * mc.vocab);
    const double acc = model.accuracy();
    const double lr = model.forward_recurrent(batch);
    REQUIRE(model.scored_rows() == 4 * 16);
    double worst = 0;
    for (size_t i = 0; i < par.size(); ++i) worst = std::max(worst, static_cast<double>(std::abs(par[i] - model.scored_logits()[i])));
    INFO("channel mix " << cmix << ": worst logit difference " << worst);
    CHECK(worst < 1e-4);
    CHECK(std::abs(lp - lr) < 1e-5);
    CHECK(model.accuracy() == Approx(acc).margin(1.0 / 64));
  }
}

TEST_CASE("rwkv7 state and KV-cache sizes per sequence", "[rwkv7]") {
  ModelConfig mc = small_rwkv7(true, true, true);
  Transformer<float> r(mc, 1, 1);
  // per layer: two token-shift rows (C) and H N^2 wkv state: 2 layers x (16 + 2 x 16)
  CHECK(r.state_floats_per_sequence(12) == 2 * (2 * 8 + 2 * 4 * 4));
  CHECK(r.state_floats_per_sequence(1000) == r.state_floats_per_sequence(12));  // fixed
  mc.channel_mix = false;
  CHECK(Transformer<float>(mc, 1, 1).state_floats_per_sequence(12) == 2 * (8 + 2 * 4 * 4));
  const ModelConfig dm = test::small_model(ModelKind::Dense, 20, 12, 8, 2, 2, 0, 0, 12);
  CHECK(Transformer<float>(dm, 1, 1).state_floats_per_sequence(12) == 2 * 2 * 12 * 8);  // K and V
}

TEST_CASE("rwkv7 initialisation follows the reference's", "[rwkv7]") {
  ModelConfig mc = small_rwkv7(true, true, true);
  mc.layers = 3;
  mc.vocab = 20;
  Transformer<double> m(mc, 1, 1);
  m.init(5);
  auto t = [&](const std::string& n) {
    const int i = m.table().find(n);
    REQUIRE(i >= 0);
    return std::vector<double>(m.params.begin() + m.table()[i].offset, m.params.begin() + m.table()[i].offset + m.table()[i].size);
  };
  const int C = 8, N = 4;
  // layer 1 of 3: ratio_0_to_1 = 0.5, ratio_1_to_almost0 = 2/3
  const double r01 = 0.5, r1 = 1.0 - 1.0 / 3;
  const auto w0 = t("layers.1.att.w0"), xr = t("layers.1.att.x_r"), fk = t("layers.1.ffn.x_k"), a0 = t("layers.1.att.a0");
  for (int i = 0; i < C; ++i) {
    const double lin = static_cast<double>(i) / (C - 1) - 0.5;
    const double z = ((i % N) - (N - 1) / 2.0) / ((N - 1) / 2.0), zig = z * std::abs(z);
    const double www = -6.0 + 6.0 * std::pow(static_cast<double>(i) / (C - 1), 1.0 + std::pow(r01, 0.3));
    CHECK(w0[static_cast<size_t>(i)] == Approx(www + 0.5 + 2.5 * zig).epsilon(1e-12));
    CHECK(a0[static_cast<size_t>(i)] == Approx(-0.19 + 0.3 * zig + 0.4 * lin).epsilon(1e-12));
    CHECK(xr[static_cast<size_t>(i)] == Approx(1.0 - std::pow(static_cast<double>(i) / C, 0.2 * r1)).epsilon(1e-12));
    CHECK(fk[static_cast<size_t>(i)] == Approx(1.0 - std::pow(static_cast<double>(i) / C, std::pow(r1, 4))).epsilon(1e-12));
  }
  for (const char* z : {"layers.1.att.output.weight", "layers.1.ffn.value.weight", "layers.1.att.w1", "layers.1.att.g1"})
    for (double v : t(z)) CHECK(v == 0.0);
  for (double v : t("wte")) CHECK(std::abs(v) <= 1e-4);
  for (double v : t("layers.2.att.ln_x.weight")) CHECK(v == Approx(1.0).epsilon(1e-12));  // ((1 + 2) / 3)^0.7
  // orthogonal: receptance^T receptance = I (gain 1); key gain 0.1
  const auto wr = t("layers.0.att.receptance.weight"), wk = t("layers.0.att.key.weight");
  for (int i = 0; i < C; ++i)
    for (int j = 0; j < C; ++j) {
      double sr = 0, sk = 0;
      for (int q = 0; q < C; ++q) {
        sr += wr[static_cast<size_t>(q * C + i)] * wr[static_cast<size_t>(q * C + j)];
        sk += wk[static_cast<size_t>(q * C + i)] * wk[static_cast<size_t>(q * C + j)];
      }
      CHECK(sr == Approx(i == j ? 1.0 : 0.0).margin(1e-12));
      CHECK(sk == Approx(i == j ? 0.01 : 0.0).margin(1e-12));
    }
  // the optimizer groups: w0 at twice the learning rate, decay only on the 2-D .weight matrices
  CHECK(m.table()[m.table().find("layers.0.att.w0")].lr_scale == 2.0);
  CHECK(m.table()[m.table().find("layers.0.att.receptance.weight")].decay);
  CHECK_FALSE(m.table()[m.table().find("layers.0.att.w1")].decay);
}

TEST_CASE("rwkv7 on patch sequences: every tensor's gradient", "[rwkv7][grad][vit]") {
  // 8x8 images, 4x4 patches -> 4 tokens in raster order; 5 classes; the head reads the mean
  ModelConfig mc = small_rwkv7(true, true, true, 3);
  mc.vocab = 5;
  mc.seq_len = 4;
  mc.image_h = mc.image_w = 8;
  mc.patch = 4;
  mc.causal = false;
  const int B = 3;
  Transformer<double> model(mc, B, B);
  model.init(5);
  randomise(model, 300);
  Batch batch;
  batch.resize(B, 4);
  const std::vector<double> px = uniform(B * 64, 32, 1.0);
  batch.images.assign(px.begin(), px.end());
  for (int b = 0; b < B; ++b) batch.targets[static_cast<size_t>(b * 4)] = (2 * b + 1) % 5;
  const double loss = model.forward(batch);
  model.zero_grad();
  model.backward();
  CHECK(model.table().find("wpe") < 0);  // the recurrence orders the patches
  auto f = [&] { return model.forward(batch); };
  for (const TensorInfo& t : model.table().entries()) {
    const auto r = check_gradient(f, model.params.data() + t.offset, model.grads.data() + t.offset, t.size, 24);
    INFO("tensor " << t.name << ": " << r.first_failure);
    REQUIRE(r.failed == 0);
  }
  batch.images[63] += 1.0f;  // the last patch of the last image reaches its pooled output
  CHECK(model.forward(batch) != loss);
}
