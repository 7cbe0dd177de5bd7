// PILF components against hand-computed values: PI in both forms, tau, the PILR adaptor
// (plain and inverse EMA, warm-up) and SMK / ASMK selection. The literals were computed by hand
// from the formulas in docs/pilf.md (Python, double precision); the tolerance is a
// few ulp of double.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "nn/ops.hpp"
#include "pilf/assessment.hpp"
#include "pilf/pilr.hpp"
#include "pilf/smk.hpp"

using namespace hyperrnn::pilf;

TEST_CASE("predictive integrity, published and reference-code forms", "[pilf]") {
  PiInputs in;
  in.epsilon = 2.0;
  in.tau = 0.5;
  in.surprise = 3.0;
  in.expert_surprise = 1.0;
  in.gating_surprise = 2.0;
  // published: cost = 0.5 * (2 / 0.5) + 0.5 * 3 = 3.5 (the 1e-9 guard moves eps/tau by 4e-9)
  CHECK(predictive_integrity(in, {1.0, 0.5, PiForm::Published}) == Approx(0.0301973834223185).epsilon(1e-8));
  // reference code: cost = 4 + 0.5 * 1 + 0.5 * 2 = 5.5
  CHECK(predictive_integrity(in, {1.0, 0.5, PiForm::ReferenceCode}) == Approx(0.004086771438464067).epsilon(1e-8));
  // reference code at alpha 0.7, gamma 0.3: cost = 4 + 0.7 * 1 + 0.3 * 2 = 5.3 (gamma weighs the
  // gating group: swapping the groups' weights would give 4 + 0.3 + 1.4 = 5.7)
  CHECK(predictive_integrity(in, {0.7, 0.3, PiForm::ReferenceCode}) == Approx(0.024477523408726803).epsilon(1e-12));
  // alpha 0.2, gamma 0.25: cost = 0.75 * 4 + 0.25 * 3 = 3.75, times 0.2
  CHECK(predictive_integrity(in, {0.2, 0.25, PiForm::Published}) == Approx(0.4723665527410147).epsilon(1e-8));
  // a perfect, confident, still model has PI = 1
  CHECK(predictive_integrity(PiInputs{0.0, 1.0, 0.0, 0.0, 0.0}, {}) == 1.0);
}

TEST_CASE("tau's per-row term is the reference's entropy -sum p log(p + 1e-9)", "[pilf]") {
  const std::vector<double> p = {0.5, 0.5, 0.0, 0.0,    // ln 2 - 2e-9 (to first order)
                                 1.0, 0.0, 0.0, 0.0};   // -log(1 + 1e-9): p = 0 adds nothing
  const double h = hyperrnn::nn::row_entropy(p.data(), 4);
  CHECK(h == Approx(-std::log(0.5 + 1e-9)).epsilon(1e-15));
  CHECK(std::log(2.0) - h == Approx(2e-9).epsilon(1e-6));  // the 1e-9 is there (exact entropy: 0)
  CHECK(hyperrnn::nn::row_entropy(p.data() + 4, 4) == -std::log(1.0 + 1e-9));  // ~ -1e-9
  const std::vector<float> u(8, 0.125f);  // uniform over 8: ln 8
  CHECK(hyperrnn::nn::row_entropy(u.data(), 8) == Approx(std::log(8.0)).epsilon(1e-7));
}

TEST_CASE("PILR adaptor: statistics first, then the modulation", "[pilf]") {
  PilrAdaptor a(PilrConfig{});  // beta 0.1, initial var 1, power 0.5, exponent 2
  // S = 2: mu 0.2, var 0.9 + 0.1 * 1.8^2 = 1.224, lr_mod = exp(-0.5 * 1.8^2 / 1.224)
  CHECK(a.step(2.0) == Approx(0.266194134275846).epsilon(1e-12));
  CHECK(a.step(2.0) == Approx(0.38212968171625994).epsilon(1e-12));
  CHECK(a.step(0.5) == Approx(0.9952651603942875).epsilon(1e-12));
  CHECK(a.mu() == Approx(0.392).epsilon(1e-14));
  CHECK(a.var() == Approx(1.2288024000000002).epsilon(1e-14));

  PilrConfig inv;
  inv.inverse_ema = true;  // var target exp(-0.1 |S - mu|)
  PilrAdaptor b(inv);
  CHECK(b.step(2.0) == Approx(0.1926012700845349).epsilon(1e-12));
  CHECK(b.var() == Approx(0.9835270211411272).epsilon(1e-14));

  PilrConfig warm;
  warm.warmup = 1;
  PilrAdaptor c(warm);
  CHECK(c.step(2.0) == 1.0);  // warm-up: no modulation, statistics still move
  CHECK(c.mu() == Approx(0.2));
  CHECK(c.step(2.0) == Approx(0.38212968171625994).epsilon(1e-12));

  PilrConfig off;
  off.initial_var = 1e12;  // "soft-disabled"
  PilrAdaptor d(off);
  CHECK(d.step(5.0) > 0.999999);
}

TEST_CASE("SMK and ASMK select the lowest-surprise experts", "[pilf]") {
  const double s[4] = {0.5, 0.1, 0.3, 0.2};
  const int32_t tokens[4] = {5, 5, 0, 5};  // expert 2 got no tokens: no gradient, +inf
  uint8_t keep[4];
  CHECK(surprise_min_k(keep, s, tokens, 4, 2, SmkMode::Smk) == 2);
  CHECK(std::vector<int>(keep, keep + 4) == std::vector<int>{0, 1, 0, 1});
  CHECK(surprise_min_k(keep, s, tokens, 4, 4, SmkMode::Smk) == 4);  // the gradient-less one comes last
  CHECK(std::vector<int>(keep, keep + 4) == std::vector<int>{1, 1, 1, 1});
  CHECK(surprise_min_k(keep, s, tokens, 4, 3, SmkMode::Smk) == 3);
  CHECK(std::vector<int>(keep, keep + 4) == std::vector<int>{1, 1, 0, 1});
  CHECK(surprise_min_k(keep, s, tokens, 4, 2, SmkMode::Asmk) == 2);
  CHECK(std::vector<int>(keep, keep + 4) == std::vector<int>{0, 1, 0, 1});
  CHECK(surprise_min_k(keep, s, tokens, 4, 4, SmkMode::Asmk) == 3);  // only activated experts
  CHECK(std::vector<int>(keep, keep + 4) == std::vector<int>{1, 1, 0, 1});
  const double tie[3] = {0.2, 0.2, 0.2};
  const int32_t all[3] = {1, 1, 1};
  CHECK(surprise_min_k(keep, tie, all, 3, 2, SmkMode::Smk) == 2);
  CHECK(std::vector<int>(keep, keep + 3) == std::vector<int>{1, 1, 0});  // ties: lower index
  CHECK(surprise_min_k(keep, s, tokens, 4, 1, SmkMode::Off) == 4);
}

TEST_CASE("gradient norms by kind and per expert follow the table", "[pilf]") {
  using hyperrnn::ParamTable;
  using hyperrnn::TensorKind;
  ParamTable t;
  t.add("dense", {2}, TensorKind::Dense, false);
  t.add("l0.e0", {1}, TensorKind::Expert, false, 0, 0);
  t.add("l0.e1", {2}, TensorKind::Expert, false, 0, 1);
  t.add("l1.e1", {1}, TensorKind::Expert, false, 1, 1);
  t.add("router", {1}, TensorKind::Gating, false, 0);
  const std::vector<float> g = {3, 4, /* e0 */ 1, /* e1 */ 2, 2, /* l1 e1 */ 5, /* gating */ 12};
  std::vector<double> sq;
  tensor_sq(sq, t, g.data(), -1);  // one process: every tensor
  GradNorms n;
  norms_from_sq(n, t, sq, 2, 2);
  CHECK(n.by_kind[0] == Approx(5.0));                 // sqrt(9 + 16)
  CHECK(n.by_kind[1] == Approx(std::sqrt(34.0)));     // 1 + 4 + 4 + 25
  CHECK(n.by_kind[2] == Approx(12.0));
  CHECK(n.total == Approx(std::sqrt(25.0 + 34 + 144)));
  CHECK(n.expert == std::vector<double>{1.0, std::sqrt(8.0), 0.0, 5.0});
  // two ranks: expert 0 on rank 0, expert 1 on rank 1; replicated tensors count on rank 0 only,
  // so the two ranks' vectors have one non-zero term per tensor and add up to the one-process one
  t.set_owner(1, 0);
  t.set_owner(2, 1);
  t.set_owner(3, 1);
  std::vector<double> r0, r1;
  tensor_sq(r0, t, g.data(), 0);
  tensor_sq(r1, t, g.data(), 1);
  CHECK(r0 == std::vector<double>{25.0, 1.0, 0.0, 0.0, 144.0});
  CHECK(r1 == std::vector<double>{0.0, 0.0, 8.0, 25.0, 0.0});
  for (size_t i = 0; i < sq.size(); ++i) CHECK(r0[i] + r1[i] == sq[i]);
}
