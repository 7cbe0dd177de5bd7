// AdamW step against a hand computation, gradient clipping, and the learning-rate schedule.
#include <catch2/catch.hpp>

#include <cmath>

#include "nn/adamw.hpp"

using namespace hyperrnn;

TEST_CASE("AdamW first two steps equal the hand-computed update", "[adamw]") {
  ParamTable t;
  t.add("w", {2}, TensorKind::Dense, true);
  t.add("b", {1}, TensorKind::Dense, false);
  nn::AdamW<double> opt(t, {0.9, 0.999, 1e-8, 0.1});
  std::vector<double> p = {1.0, -2.0, 0.5}, g = {0.1, -0.3, 2.0};
  opt.step(p.data(), g.data(), 0.01);
  // step 1: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps) = lr * sign(g) (up to eps);
  // decay multiplies decayed tensors by (1 - lr * wd) first.
  CHECK(p[0] == Approx(1.0 * (1 - 0.001) - 0.01 * 0.1 / (0.1 + 1e-8)).epsilon(1e-14));
  CHECK(p[1] == Approx(-2.0 * (1 - 0.001) + 0.01 * 0.3 / (0.3 + 1e-8)).epsilon(1e-14));
  CHECK(p[2] == Approx(0.5 - 0.01 * 2.0 / (2.0 + 1e-8)).epsilon(1e-14));  // no decay on "b"
  const double p0 = p[0];
  opt.step(p.data(), g.data(), 0.01);
  const double m = 0.9 * 0.1 * 0.1 + 0.1 * 0.1;            // m after two steps of g = 0.1
  const double v = 0.999 * 0.001 * 0.01 + 0.001 * 0.01;    // v after two steps
  const double upd = (0.01 / (1 - 0.81)) * m / (std::sqrt(v) / std::sqrt(1 - 0.998001) + 1e-8);
  CHECK(p[0] == Approx(p0 * (1 - 0.001) - upd).epsilon(1e-13));
  CHECK(opt.steps() == 2);
}

TEST_CASE("global-norm clipping", "[adamw]") {
  std::vector<double> g = {3.0, 4.0};
  const double n = nn::grad_norm(g.data(), 2);
  CHECK(n == 5.0);
  CHECK(nn::clip_grads(g.data(), 2, n, 10.0) == 1.0);  // below the threshold: untouched
  CHECK(g[0] == 3.0);
  nn::clip_grads(g.data(), 2, n, 1.0);
  CHECK(nn::grad_norm(g.data(), 2) == Approx(1.0 * 5.0 / (5.0 + 1e-6)).epsilon(1e-14));
}

TEST_CASE("warm-up then cosine decay", "[adamw]") {
  CHECK(nn::lr_at(0, 100, 10, 1.0, 0.1) == Approx(0.1));
  CHECK(nn::lr_at(9, 100, 10, 1.0, 0.1) == Approx(1.0));
  CHECK(nn::lr_at(10, 100, 10, 1.0, 0.1) == Approx(1.0));
  CHECK(nn::lr_at(55, 100, 10, 1.0, 0.1) == Approx(0.1 + 0.9 * 0.5));  // halfway: cos = 0
  CHECK(nn::lr_at(100, 100, 10, 1.0, 0.1) == Approx(0.1));
}

TEST_CASE("AdamW per-kind learning rates and skipped tensors", "[adamw]") {
  ParamTable t;
  t.add("dense", {1}, TensorKind::Dense, false);
  t.add("expert", {1}, TensorKind::Expert, false);
  t.add("gating", {1}, TensorKind::Gating, false);
  t.add("dropped", {1}, TensorKind::Expert, true);
  nn::AdamW<double> opt(t, {0.9, 0.999, 1e-8, 0.1});
  std::vector<double> p = {1.0, 1.0, 1.0, 1.0}, g = {0.5, 0.5, 0.5, 0.5};
  const double lr[3] = {0.1, 0.01, 0.001};
  const uint8_t skip[4] = {0, 0, 0, 1};
  opt.step(p.data(), g.data(), lr, skip);
  // first step: update = lr * g / (|g| + eps) ~ lr
  CHECK(p[0] == Approx(1.0 - 0.1 * 0.5 / (0.5 + 1e-8)).epsilon(1e-14));
  CHECK(p[1] == Approx(1.0 - 0.01 * 0.5 / (0.5 + 1e-8)).epsilon(1e-14));
  CHECK(p[2] == Approx(1.0 - 0.001 * 0.5 / (0.5 + 1e-8)).epsilon(1e-14));
  CHECK(p[3] == 1.0);  // skipped: no decay, no step
  CHECK(opt.m[3] == 0.0);
  CHECK(opt.v[3] == 0.0);
  CHECK(opt.m[1] == Approx(0.05));
}

TEST_CASE("AdamW: a skipped tensor keeps its own update count for bias correction", "[adamw]") {
  ParamTable t;
  t.add("a", {1}, TensorKind::Expert, false);
  t.add("b", {1}, TensorKind::Expert, false);
  nn::AdamW<double> opt(t, {0.9, 0.999, 1e-8, 0.0});
  std::vector<double> p = {0.0, 0.0}, g = {0.5, 0.5};
  const double lr[3] = {0.01, 0.01, 0.01};
  const uint8_t skip_b[2] = {0, 1};
  opt.step(p.data(), g.data(), lr, skip_b);  // b left alone
  CHECK(p[1] == 0.0);
  CHECK(opt.tensor_steps[1] == 0);
  opt.step(p.data(), g.data(), lr, nullptr);
  // b's first real update is a first Adam step: exactly lr * g / (|g| + eps)
  CHECK(p[1] == Approx(-0.01 * 0.5 / (0.5 + 1e-8)).epsilon(1e-14));
  CHECK(opt.tensor_steps[0] == 2);
  CHECK(opt.tensor_steps[1] == 1);
  CHECK(opt.steps() == 2);
}
