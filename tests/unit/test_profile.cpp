// The reference profile's mechanics of the hyper-step (docs/pilf.md), each against the behaviour
// of the other profile, so that every test fails when the step does the other thing: SMK's dropped
// experts step by momentum, no clipping or decay, PI and surprise as the PILF-2 loop calls them,
// one shared buffer with the batch PI, curation only with SMK, meta-training every step on replay
// sets cached per (task, epoch), its mean over layers, and priorities decayed only after a gating
// step that was taken.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "fixtures.hpp"
#include "pilf/step.hpp"

using namespace hyperrnn;

namespace {
// The fixture's pilf model with Adam (no decay, as the reference) and a PilfState; step(s) trains
// on the TestData stream's batch s with dropout keyed by s.
struct Fx : test::StepFixture {
  PilfState<double> ps;
  explicit Fx(const PilfConfig& pc) : StepFixture(ModelKind::Pilf, 6, {0.9, 0.999, 1e-8, 0.0}), ps(pc, mc, 6, 3, {0.9, 0.999, 1e-8, 0.0}) {
    ps.attach(model);
    sc.lr_min_ratio = 1.0;
  }
  StepStats step(int64_t s) {
    gen.fill(batch, 1, RngPurpose::TestData, static_cast<uint32_t>(s), 0, 6);
    batch.step = s;
    return train_step(model, opt, batch, sc, s, &ps);
  }
};

// The reference profile as PilfConfig (options.cpp's table for model pilf).
PilfConfig reference() {
  PilfConfig pc;
  pc.pi.form = pilf::PiForm::ReferenceLoop;
  pc.surprise_routing = false;
  pc.pilr = PilrMode::Off;
  pc.smk = pilf::SmkMode::Smk;
  pc.min_k = 2;
  pc.smk_dropped = SmkDropped::Step;
  pc.gating_backprop = true;
  pc.shared_buffer = true;
  pc.buffer_capacity = 16;
  pc.curate_batch_pi = true;
  pc.curate_without_smk = false;
  pc.history = 3;
  pc.gating_dropout = 0.1;
  pc.meta_every = 1;
  pc.meta_replay = MetaReplay::TaskEpoch;
  pc.meta_batch = 0;
  pc.meta_loss_mean = true;
  return pc;
}

bool moved(const std::vector<double>& a, const std::vector<double>& b, const TensorInfo& t) {
  for (int64_t k = 0; k < t.size; ++k)
    if (a[static_cast<size_t>(t.offset + k)] != b[static_cast<size_t>(t.offset + k)]) return true;
  return false;
}
}  // namespace

TEST_CASE("reference SMK: a dropped expert that received tokens still moves by its momentum", "[profile][pilf]") {
  // grad.zero_() then torch.optim.Adam.step(): the dropped expert's m decays and moves it, its step
  // count advances; an expert without tokens has no gradient and is left alone. Under freeze the
  // dropped expert does not move at all.
  for (SmkDropped mode : {SmkDropped::Step, SmkDropped::Freeze}) {
    INFO((mode == SmkDropped::Step ? "step" : "freeze"));
    PilfConfig pc = reference();
    pc.smk_dropped = mode;
    Fx fx(pc);
    std::vector<uint32_t> kept_once(2, 0u);
    bool seen = false;
    for (int64_t s = 0; s < 12 && !seen; ++s) {
      const std::vector<double> before = fx.model.params;
      const std::vector<int64_t> steps_before = fx.opt.tensor_steps;
      const StepStats st = fx.step(s);
      REQUIRE_FALSE(st.skipped);
      for (int i = 0; i < fx.model.table().size(); ++i) {
        const TensorInfo& t = fx.model.table()[i];
        if (t.kind != TensorKind::Expert) continue;
        const bool kept = st.smk_mask[static_cast<size_t>(t.layer)] >> t.expert & 1u;
        const int32_t tokens = fx.model.expert_tokens()[static_cast<size_t>(t.layer * 4 + t.expert)];
        const int64_t counted = fx.opt.tensor_steps[static_cast<size_t>(i)] - steps_before[static_cast<size_t>(i)];
        INFO("step " << s << " " << t.name << " kept " << kept << " tokens " << tokens);
        if (tokens == 0) {
          CHECK_FALSE(moved(before, fx.model.params, t));
          CHECK(counted == 0);
        } else if (kept) {
          CHECK(counted == 1);
        } else if (mode == SmkDropped::Step) {
          CHECK(counted == 1);  // Adam stepped it
          if (kept_once[static_cast<size_t>(t.layer)] >> t.expert & 1u) {
            CHECK(moved(before, fx.model.params, t));  // by its momentum alone
            seen = true;
          }
        } else {
          CHECK(counted == 0);
          CHECK_FALSE(moved(before, fx.model.params, t));
        }
      }
      for (int l = 0; l < 2; ++l) kept_once[static_cast<size_t>(l)] |= st.smk_mask[static_cast<size_t>(l)];
    }
    if (mode == SmkDropped::Step) CHECK(seen);  // the case happened within these steps
  }
}

TEST_CASE("reference optimizer: Adam without clipping or decay sees the raw gradient", "[profile][pilf]") {
  // After the first step v = (1 - beta2) g^2 with the gradient the backward produced (no clip) and
  // p moved by lr m_hat / (sqrt(v_hat) + eps) only (no decay); clip 1 scales g before v.
  for (double clip : {0.0, 0.05}) {
    INFO("clip " << clip);
    Fx fx(reference());
    fx.sc.grad_clip = clip;
    fx.gen.fill(fx.batch, 1, RngPurpose::TestData, 0, 0, 6);
    fx.batch.step = 0;
    fx.model.forward(fx.batch);
    fx.model.zero_grad();
    fx.model.backward();
    const std::vector<double> g = fx.model.grads, p0 = fx.model.params;
    const StepStats st = fx.step(0);
    REQUIRE(st.grad_norm > 0.05);  // the clip would bite
    const double scale = clip > 0 ? clip / (st.grad_norm + 1e-6) : 1.0;
    const TensorInfo& t = fx.model.table()[fx.model.table().find("layers.0.attn.qkv.weight")];
    for (int64_t k = 0; k < t.size; k += 7) {
      const size_t i = static_cast<size_t>(t.offset + k);
      const double gi = g[i] * scale;
      CHECK(fx.opt.v[i] == Approx(0.001 * gi * gi).epsilon(1e-12));
      const double expect = p0[i] - 1e-2 * (0.1 * gi / 0.1) / (std::sqrt(0.001 * gi * gi / 0.001) + 1e-8);
      CHECK(fx.model.params[i] == Approx(expect).epsilon(1e-12));
    }
  }
}

TEST_CASE("reference PI: eps/(tau + 1e-9) + surprise over parameter gradients only, gamma unused", "[profile][pilf]") {
  pilf::PiInputs in{2.0, 0.5, 3.0, 1.0, 2.0};
  for (double gamma : {0.0, 0.5, 1.0})
    CHECK(pilf::predictive_integrity(in, {1.0, gamma, pilf::PiForm::ReferenceLoop}) == Approx(std::exp(-(2.0 / (0.5 + 1e-9) + 3.0))));
  for (bool routing : {false, true}) {
    PilfConfig pc = reference();
    pc.surprise_routing = routing;
    Fx fx(pc);
    const StepStats st = fx.step(0);
    REQUIRE(st.gating_surprise > 0.0);  // the routing gradient exists
    if (routing) {
      CHECK(st.surprise == Approx(std::hypot(st.grad_norm, st.gating_surprise)).epsilon(1e-14));
    } else {
      CHECK(st.surprise == st.grad_norm);  // every (non-GatingTransformer) parameter gradient, before SMK
    }
    CHECK(st.pi == Approx(std::exp(-(st.epsilon / (st.tau + 1e-9) + st.surprise))).epsilon(1e-12));
  }
}

TEST_CASE("reference buffer: one for all layers, actions over layers x experts, batch PI", "[profile][pilf]") {
  for (bool shared : {true, false}) {
    INFO("shared " << shared);
    PilfConfig pc = reference();
    pc.shared_buffer = shared;
    pc.curate_batch_pi = shared;
    pc.meta_every = 2;  // no replay (and decay) in step 0
    Fx fx(pc);
    const StepStats st = fx.step(0);
    REQUIRE(fx.ps.buffers.size() == (shared ? 1u : 2u));
    const pilf::ExperienceBuffer& b = fx.ps.buffers[0];
    CHECK(b.experts() == (shared ? 8 : 4));
    CHECK(b.size() > 0);
    // budget floor(6 (1 - PI)) per layer offer; layer 0's items come first, each with only its
    // layer's columns set (the SMK set)
    const int per_layer = static_cast<int>(std::floor(6 * (1 - st.pi)));
    CHECK(b.size() == (shared ? std::min(2 * per_layer, 16) : per_layer));
    bool priorities_equal = true;
    for (int i = 0; i < b.size(); ++i) {
      const int layer = shared && i >= per_layer ? 1 : 0;
      for (int l = 0; l < (shared ? 2 : 1); ++l)
        for (int e = 0; e < 4; ++e)
          CHECK(b.action(i)[l * 4 + e] == (l == layer || !shared ? (st.smk_mask[static_cast<size_t>(layer)] >> e & 1u) : 0u));
      priorities_equal = priorities_equal && b.priority(i) == 1.0f - static_cast<float>(st.pi);
    }
    CHECK(priorities_equal == shared);  // batch PI vs each sample's own
  }
}

TEST_CASE("reference curation needs SMK; meta-training runs every step once the buffer holds items", "[profile][pilf]") {
  for (bool without : {false, true}) {
    PilfConfig pc = reference();
    pc.smk = pilf::SmkMode::Off;
    pc.curate_without_smk = without;
    Fx fx(pc);
    const StepStats st = fx.step(0);
    CHECK((fx.ps.buffers[0].size() > 0) == without);
    CHECK(st.meta == without);
    if (without)
      for (int e = 0; e < 8; ++e) CHECK(fx.ps.buffers[0].action(0)[e] == (e < 4 ? 1 : 0));  // every expert of layer 0
  }
  Fx fx(reference());
  for (int64_t s = 0; s < 3; ++s) CHECK(fx.step(s).meta);
  CHECK(fx.ps.gating_opt->steps() == 3);
}

TEST_CASE("reference replay sets: drawn once per (task, epoch) and reused, in later cycles too", "[profile][pilf]") {
  for (MetaReplay mode : {MetaReplay::TaskEpoch, MetaReplay::Epoch, MetaReplay::Fresh}) {
    PilfConfig pc = reference();
    pc.meta_replay = mode;
    Fx fx(pc);
    auto at = [&](int64_t s, int task, int64_t visit, int64_t epoch) {
      fx.ps.task = task;
      fx.ps.visit = visit;
      fx.ps.epoch = epoch;
      REQUIRE(fx.step(s).meta);
      if (mode == MetaReplay::Fresh) return fx.ps.s.fresh[0].idx;
      const int64_t key = mode == MetaReplay::TaskEpoch ? task : visit;
      for (const auto& r : fx.ps.replay[0])
        if (r.key_a == key && r.key_b == epoch) return r.idx;
      FAIL("no cached set for the step's key");
      return std::vector<int>{};
    };
    const std::vector<int> a0 = at(0, 0, 0, 1);  // drawn: the buffer's size then
    CHECK(static_cast<int>(a0.size()) < fx.ps.buffers[0].capacity());
    const std::vector<int> a1 = at(1, 0, 0, 1);
    const std::vector<int> b = at(2, 0, 0, 2);  // a new epoch
    at(3, 1, 1, 1);                             // the next task
    const std::vector<int> c = at(4, 0, 2, 1);  // task 0 epoch 1 again, in the next cycle
    if (mode == MetaReplay::Fresh) {
      CHECK(a1 != a0);
      continue;
    }
    CHECK(a1 == a0);  // the same set within the epoch
    CHECK(b.size() > a0.size());
    if (mode == MetaReplay::TaskEpoch) {
      CHECK(c == a0);  // the reference's cache key has no cycle
      CHECK(fx.ps.replay[0].size() == 3);
    } else {
      CHECK(c != a0);  // redrawn
      CHECK(fx.ps.replay[0].size() == 1);
    }
  }
}

TEST_CASE("reference meta loss: the mean over layers (its gradient is the sum's / layers)", "[profile][pilf]") {
  std::vector<double> g[2];
  double loss[2];
  for (int mean = 0; mean < 2; ++mean) {
    PilfConfig pc = reference();
    pc.meta_loss_mean = mean == 1;
    Fx fx(pc);
    const StepStats st = fx.step(0);
    REQUIRE(st.meta);
    g[mean] = fx.ps.gating->grads;
    loss[mean] = st.gating_loss;
  }
  CHECK(loss[0] == loss[1]);  // logged as the mean either way
  for (size_t i = 0; i < g[0].size(); ++i) REQUIRE(g[1][i] == g[0][i] / 2.0);
}

TEST_CASE("reference decay: replayed priorities decay only after a gating step that was taken", "[profile][pilf]") {
  PilfConfig pc = reference();
  pc.buffer_capacity = 64;  // room for three steps' items: no replacement, so priorities only decay
  Fx fx(pc);
  REQUIRE(fx.step(0).meta);
  const pilf::ExperienceBuffer& b = fx.ps.buffers[0];
  PilfState<double>::ReplaySet& rs = fx.ps.replay[0][0];  // (task 0, epoch 1), reused below
  auto priorities = [&] {
    std::vector<double> p;
    for (int i = 0; i < b.size(); ++i) p.push_back(b.priority(i));
    return p;
  };
  // a non-finite item in the cached replay set makes the next meta loss non-finite: no gating
  // step, and no decay
  rs.q[0] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<double> p1 = priorities();
  const std::vector<double> gt = fx.ps.gating->params;
  const StepStats st = fx.step(1);
  REQUIRE_FALSE(st.skipped);
  CHECK_FALSE(st.meta);
  CHECK(fx.ps.gating->params == gt);
  for (size_t i = 0; i < p1.size(); ++i) CHECK(b.priority(static_cast<int>(i)) == p1[i]);
  // finite again: the step is taken and each slot of the set decays once (repeats included)
  rs.q[0] = 0.5f;
  const std::vector<double> p2 = priorities();
  REQUIRE(fx.step(2).meta);
  for (size_t i = 0; i < p2.size(); ++i) {
    bool replayed = false;
    for (int j : rs.idx) replayed = replayed || j == static_cast<int>(i);
    CHECK(b.priority(static_cast<int>(i)) == (replayed ? static_cast<float>(p2[i]) * 0.99f : static_cast<float>(p2[i])));
  }
}
