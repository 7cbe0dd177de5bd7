// The hyper-step's guard: a step with a non-finite loss or gradient changes nothing.
#include <catch2/catch.hpp>

#include <cmath>
#include <algorithm>
#include <cstring>
#include <limits>

#include "fixtures.hpp"
#include "pilf/step.hpp"

using namespace hyperrnn;

TEST_CASE("a step with NaN loss is skipped and changes nothing", "[step]") {
  Transformer<float> model(test::small_model(ModelKind::GaussMoe, 40, 16, 8, 1, 2, 2, 1, 8), 4, 8);
  model.init(1);
  nn::AdamW<float> opt(model.table(), {});
  MqarGenerator gen(test::small_mqar(40, 16, 2));
  Batch batch;
  batch.resize(4, 16);
  gen.fill(batch, 1, RngPurpose::TestData, 0, 0, 4);
  StepConfig sc;
  sc.total_steps = 10;
  const StepStats ok = train_step(model, opt, batch, sc, 0);  // one good step first: moments non-zero
  REQUIRE_FALSE(ok.skipped);
  REQUIRE(opt.steps() == 1);
  model.params[model.table()[model.table().find("lnf.weight")].offset] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> p = model.params, m = opt.m, v = opt.v;
  const StepStats bad = train_step(model, opt, batch, sc, 1);
  CHECK(bad.skipped);
  CHECK(std::isnan(bad.loss));
  CHECK(opt.steps() == 1);  // the optimizer did not step
  CHECK(opt.m == m);
  CHECK(opt.v == v);
  for (size_t i = 0; i < p.size(); ++i)  // bitwise unchanged (NaN compares unequal: compare bits)
    REQUIRE(std::memcmp(&p[i], &model.params[i], sizeof(float)) == 0);
}

using test::StepFixture;

TEST_CASE("hyper-step: dual PILR gives each group its own modulated rate", "[step][pilf]") {
  StepFixture fx(ModelKind::GaussMoe);
  PilfConfig pc;
  pc.pilr = PilrMode::Dual;
  pc.pilr_cfg.beta = 0.5;
  PilfState<double> ps(pc, fx.mc, 6, 1, {});
  fx.sc.gating_lr = 3.0 * fx.sc.lr;  // the gating group's own peak rate
  const std::vector<double> before = fx.model.params;
  const StepStats st = train_step(fx.model, fx.opt, fx.batch, fx.sc, 0, &ps);
  REQUIRE_FALSE(st.skipped);
  // Hand computation of one adaptor step from mu = 0, var = 1: mu' = beta S,
  // var' = (1-beta) + beta (S - mu')^2, lr_mod = exp(-0.5 (|S - mu'| / sqrt(var' + 1e-9))^2).
  auto mod = [](double S) {
    const double mu = 0.5 * S, dev = std::abs(S - mu), var = 0.5 + 0.5 * dev * dev;
    return std::exp(-0.5 * std::pow(dev / (std::sqrt(var + 1e-9) + 1e-9), 2.0));
  };
  CHECK(st.lr_mod_expert == Approx(mod(st.expert_surprise)).epsilon(1e-12));
  CHECK(st.lr_mod_gating == Approx(mod(st.gating_surprise)).epsilon(1e-12));
  CHECK(st.surprise == Approx(std::hypot(st.expert_surprise, st.gating_surprise)).epsilon(1e-14));
  CHECK(std::abs(st.lr_mod_expert - st.lr_mod_gating) > 1e-3);  // the two groups really differ here
  // AdamW's first step moves every coordinate with |g| >> eps by lr_t exactly (m_hat/sqrt(v_hat) =
  // sign g) plus decay: router mu (Gating, no decay) by lr * lr_mod_gating, a LayerNorm weight
  // (Dense, no decay) by lr * lr_mod_expert; the gating group from its own peak rate (3x).
  const double lr = st.lr;
  auto moved = [&](const std::string& name) {
    const TensorInfo& t = fx.model.table()[fx.model.table().find(name)];
    return std::abs(fx.model.params[static_cast<size_t>(t.offset)] - before[static_cast<size_t>(t.offset)]);
  };
  CHECK(moved("layers.0.moe.router.mu") == Approx(3.0 * lr * st.lr_mod_gating).epsilon(1e-6));
  CHECK(moved("layers.1.ln1.weight") == Approx(lr * st.lr_mod_expert).epsilon(1e-6));
}

namespace {
// The SMK/ASMK set of each of the fixture's 2 layers (4 experts, min-k 2) computed by hand from the
// model's current gradients: the 2 lowest per-expert L2 norms (per routed token if asked), experts
// without tokens last (SMK) or excluded (ASMK); ties by lower index.
std::vector<uint32_t> expected_smk(const Transformer<double>& model, pilf::SmkMode mode, bool per_token) {
  const std::vector<int32_t>& tokens = model.expert_tokens();
  std::vector<double> norm(8, 0.0);
  for (const TensorInfo& t : model.table().entries())
    if (t.kind == TensorKind::Expert)
      for (int64_t k = 0; k < t.size; ++k) norm[static_cast<size_t>(t.layer * 4 + t.expert)] += std::pow(model.grads[static_cast<size_t>(t.offset + k)], 2);
  for (size_t i = 0; i < norm.size(); ++i) norm[i] = std::sqrt(norm[i]) / (per_token && tokens[i] > 0 ? tokens[i] : 1);
  std::vector<uint32_t> masks;
  for (int l = 0; l < 2; ++l) {
    std::vector<int> order = {0, 1, 2, 3};
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      const bool ia = tokens[static_cast<size_t>(l * 4 + a)] == 0, ib = tokens[static_cast<size_t>(l * 4 + b)] == 0;
      if (ia != ib) return ib;
      return norm[static_cast<size_t>(l * 4 + a)] < norm[static_cast<size_t>(l * 4 + b)];
    });
    uint32_t m = 0;
    for (int j = 0; j < 2; ++j)
      if (mode == pilf::SmkMode::Smk || tokens[static_cast<size_t>(l * 4 + order[static_cast<size_t>(j)])] > 0) m |= 1u << order[static_cast<size_t>(j)];
    masks.push_back(m);
  }
  return masks;
}
}  // namespace

TEST_CASE("hyper-step: SMK keeps min_k experts per layer and leaves the others untouched", "[step][pilf]") {
  for (const auto& [mode, per_token] : {std::pair{pilf::SmkMode::Smk, false}, std::pair{pilf::SmkMode::Asmk, false},
                                        std::pair{pilf::SmkMode::Smk, true}}) {
    INFO((mode == pilf::SmkMode::Smk ? "SMK" : "ASMK") << (per_token ? ", per-token norms" : ""));
    StepFixture fx(ModelKind::GaussMoe);
    PilfConfig pc;
    pc.smk = mode;
    pc.min_k = 2;
    pc.smk_per_token = per_token;
    PilfState<double> ps(pc, fx.mc, 6, 1, {});
    // the gradients the step will see (same parameters, same batch); for the per-token variant,
    // the first batch on which the two criteria choose differently (so the test can tell them apart)
    std::vector<uint32_t> expect;
    for (uint32_t data = 0; data < 64; ++data) {
      fx.gen.fill(fx.batch, 1, RngPurpose::TestData, data, 0, 6);
      fx.model.forward(fx.batch);
      fx.model.zero_grad();
      fx.model.backward();
      expect = expected_smk(fx.model, mode, per_token);
      if (!per_token || expect != expected_smk(fx.model, mode, false)) break;
    }
    if (per_token) REQUIRE(expect != expected_smk(fx.model, mode, false));
    const std::vector<double> before = fx.model.params;
    const StepStats st = train_step(fx.model, fx.opt, fx.batch, fx.sc, 0, &ps);
    REQUIRE(st.smk_mask == expect);
    for (int l = 0; l < 2; ++l) {
      const uint32_t mask = st.smk_mask[static_cast<size_t>(l)];
      CHECK(__builtin_popcount(mask) >= 1);
      for (const TensorInfo& t : fx.model.table().entries()) {
        if (t.kind != TensorKind::Expert || t.layer != l) continue;
        bool changed = false;
        for (int64_t k = 0; k < t.size; ++k)
          changed |= fx.model.params[static_cast<size_t>(t.offset + k)] != before[static_cast<size_t>(t.offset + k)];
        INFO(t.name);
        CHECK(changed == static_cast<bool>(mask >> t.expert & 1u));
      }
    }
  }
}

TEST_CASE("hyper-step (pilf): curation fills the buffers, meta-training moves the GatingTransformer", "[step][pilf]") {
  StepFixture fx(ModelKind::Pilf);
  PilfConfig pc;
  pc.smk = pilf::SmkMode::Smk;
  pc.min_k = 2;
  pc.pilr = PilrMode::Single;
  pc.buffer_capacity = 8;
  pc.history = 3;
  pc.meta_every = 2;
  pc.meta_batch = 5;
  PilfState<double> ps(pc, fx.mc, 6, 1, {});
  ps.attach(fx.model);
  const std::vector<double> g0 = ps.gating->params;
  const StepStats s1 = train_step(fx.model, fx.opt, fx.batch, fx.sc, 0, &ps);
  REQUIRE_FALSE(s1.skipped);
  CHECK_FALSE(s1.meta);
  CHECK(ps.gating->params == g0);  // no meta step yet
  // PI near 0 at initialisation: budget floor(6 (1 - mean PI)) = 6, up to the capacity 8
  for (int l = 0; l < 2; ++l) {
    const pilf::ExperienceBuffer& b = ps.buffers[static_cast<size_t>(l)];
    CHECK(b.size() == s1.buffer_size[static_cast<size_t>(l)]);
    CHECK(b.size() >= 1);
    CHECK(b.size() <= 6);
    for (int i = 0; i < b.size(); ++i)
      for (int e = 0; e < 4; ++e) CHECK(b.action(i)[e] == (s1.smk_mask[static_cast<size_t>(l)] >> e & 1u));
  }
  fx.gen.fill(fx.batch, 1, RngPurpose::TestData, 1, 0, 6);
  const StepStats s2 = train_step(fx.model, fx.opt, fx.batch, fx.sc, 1, &ps);
  REQUIRE(s2.meta);
  CHECK(std::isfinite(s2.gating_loss));
  CHECK(s2.gating_loss > 0.0);
  CHECK(s2.routing_acc >= 0.0);
  CHECK(s2.routing_acc <= 1.0);
  CHECK(ps.gating->params != g0);
  CHECK(ps.gating_opt->steps() == 1);
  for (int l = 0; l < 2; ++l) CHECK(ps.buffers[static_cast<size_t>(l)].size() <= 8);
}

TEST_CASE("hyper-step (pilf): same seed and data, bitwise the same hyper-state", "[step][pilf]") {
  auto run = [](PilfConfig pc) {
    StepFixture fx(ModelKind::Pilf);
    PilfState<double> ps(pc, fx.mc, 6, 1, {});
    ps.attach(fx.model);
    std::vector<double> ks;
    for (int step = 0; step < 4; ++step) {
      fx.gen.fill(fx.batch, 1, RngPurpose::TestData, static_cast<uint32_t>(step), 0, 6);
      const StepStats st = train_step(fx.model, fx.opt, fx.batch, fx.sc, step, &ps);
      ks.push_back(st.k_mean);
    }
    std::vector<double> all = fx.model.params;
    all.insert(all.end(), ps.gating->params.begin(), ps.gating->params.end());
    for (const auto& b : ps.buffers)
      for (int i = 0; i < b.size(); ++i) all.push_back(b.priority(i));
    all.insert(all.end(), ks.begin(), ks.end());
    return all;
  };
  PilfConfig pc;
  pc.smk = pilf::SmkMode::Asmk;
  pc.pilr = PilrMode::Dual;
  pc.meta_every = 1;
  pc.meta_batch = 4;
  pc.dynamic_top_k = true;
  CHECK(run(pc) == run(pc));
}

TEST_CASE("dynamic top-k rule: k = k_min + round((top_k - k_min) Phi(z))", "[step][pilf]") {
  const ModelConfig mc = test::small_model(ModelKind::Pilf, 40, 16, 8, 1, 2, 8, 5, 8);
  PilfConfig pc;
  pc.dynamic_top_k = true;
  pc.k_min = 1;
  PilfState<double> ps(pc, mc, 4, 1, {});
  CHECK(ps.dynamic_k(123.0, 0) == 3);  // before any statistics: z = 0, the middle 1 + round(4 * 0.5)
  ps.rs_steps = 1;
  ps.rs_mu[0] = 2.0;
  ps.rs_var[0] = 0.25;  // sigma 0.5
  CHECK(ps.dynamic_k(2.0, 0) == 3);   // z = 0
  CHECK(ps.dynamic_k(2.5, 0) == 4);   // z = 1: Phi 0.841, 1 + round(3.37) = 4
  CHECK(ps.dynamic_k(3.0, 0) == 5);   // z = 2: Phi 0.977, 1 + round(3.91) = 5
  CHECK(ps.dynamic_k(1.5, 0) == 2);   // z = -1: Phi 0.159, 1 + round(0.63) = 2
  CHECK(ps.dynamic_k(0.0, 0) == 1);   // z = -4
}

TEST_CASE("hyper-step (pilf): a NaN step leaves the whole hyper-state alone", "[step][pilf]") {
  StepFixture fx(ModelKind::Pilf);
  PilfConfig pc;
  pc.smk = pilf::SmkMode::Smk;
  pc.pilr = PilrMode::Dual;
  pc.meta_every = 1;
  pc.dynamic_top_k = true;
  PilfState<double> ps(pc, fx.mc, 6, 1, {});
  ps.attach(fx.model);
  REQUIRE_FALSE(train_step(fx.model, fx.opt, fx.batch, fx.sc, 0, &ps).skipped);
  fx.model.params[static_cast<size_t>(fx.model.table()[fx.model.table().find("lnf.weight")].offset)] = std::nan("");
  const std::vector<double> p = fx.model.params, g = ps.gating->params;
  const double mu = ps.pilr_expert.mu(), var = ps.pilr_gating.var(), rs = ps.rs_mu[0];
  const int size0 = ps.buffers[0].size();
  std::vector<double> prio;
  for (int i = 0; i < size0; ++i) prio.push_back(ps.buffers[0].priority(i));
  const StepStats st = train_step(fx.model, fx.opt, fx.batch, fx.sc, 1, &ps);
  CHECK(st.skipped);
  CHECK(ps.gating->params == g);
  CHECK(ps.gating_opt->steps() == 1);
  CHECK(ps.pilr_expert.mu() == mu);
  CHECK(ps.pilr_gating.var() == var);
  CHECK(ps.rs_mu[0] == rs);
  CHECK(ps.rs_steps == 1);
  CHECK(ps.buffers[0].size() == size0);
  for (int i = 0; i < size0; ++i) CHECK(ps.buffers[0].priority(i) == prio[static_cast<size_t>(i)]);
  for (size_t i = 0; i < p.size(); ++i) REQUIRE(std::memcmp(&p[i], &fx.model.params[i], sizeof(double)) == 0);
}

TEST_CASE("dynamic top-k statistics: EMA of the batch's routing-surprise mean and variance", "[step][pilf]") {
  // top-k 2 of 4 experts with k-min 1; the variance term (mean - mu)^2 of the EMA is checked
  // against the step's own routing surprises (a run where it could not matter would not see it)
  StepFixture fx(ModelKind::Pilf);
  PilfConfig pc;
  pc.smk = pilf::SmkMode::Smk;
  pc.dynamic_top_k = true;
  pc.k_min = 1;
  PilfState<double> ps(pc, fx.mc, 6, 1, {});
  ps.attach(fx.model);
  auto moments = [&](double& mean, double& var) {
    const std::vector<double>& r = ps.s.r[0];
    mean = var = 0.0;
    for (double v : r) mean += v;
    mean /= static_cast<double>(r.size());
    for (double v : r) var += (v - mean) * (v - mean);
    var /= static_cast<double>(r.size());
  };
  REQUIRE_FALSE(train_step(fx.model, fx.opt, fx.batch, fx.sc, 0, &ps).skipped);
  double m0 = 0, v0 = 0;
  moments(m0, v0);
  CHECK(ps.rs_mu[0] == m0);  // the first batch initialises
  CHECK(ps.rs_var[0] == v0);
  fx.gen.fill(fx.batch, 1, RngPurpose::TestData, 1, 0, 6);
  REQUIRE_FALSE(train_step(fx.model, fx.opt, fx.batch, fx.sc, 1, &ps).skipped);
  double m1 = 0, v1 = 0;
  moments(m1, v1);
  const double beta = pc.pilr_cfg.beta;
  const double mu = (1.0 - beta) * m0 + beta * m1;
  CHECK(ps.rs_mu[0] == Approx(mu).epsilon(1e-14));
  const double want = (1.0 - beta) * v0 + beta * (v1 + (m1 - mu) * (m1 - mu));
  CHECK(ps.rs_var[0] == Approx(want).epsilon(1e-14));
  CHECK(std::abs(m1 - mu) * std::abs(m1 - mu) * beta > 1e-6 * want);  // the term is not negligible here
}
