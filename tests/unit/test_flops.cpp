// The analytic FLOP counter (Transformer::step_flops: GEMMs, backward = 2 x forward; rwkv7 adds its
// recurrence) against a hand count of a small model of each kind, and against the operations the
// GEMMs actually did (core/blas's per-call count, 2 M N K each) in one forward and backward.
#include <catch2/catch.hpp>

#include "core/blas.hpp"
#include "fixtures.hpp"
#include "models/transformer.hpp"

using namespace hyperrnn;

namespace {
// One forward + backward of B MQAR samples; returns {analytic, counted GEMM flops}.
std::pair<double, double> step_count(const ModelConfig& mc, int B, int D) {
  Transformer<double> model(mc, B, B * D);
  model.init(3);
  if (mc.memory_routing()) {  // pilf: a fixed routing table in place of the GatingTransformer
    const int64_t n = 2LL * B * mc.experts * mc.d_model;
    model.set_memory_router(Transformer<double>::in_order([n](int, int, const double*, int, double* mu_ls, int32_t*, const Transformer<double>::RouteKey&) {
      for (int64_t i = 0; i < n; ++i) mu_ls[i] = 0.01 * static_cast<double>(i % 7);
    }));
  }
  const Batch batch = test::mqar_batch(mc, B, D);
  set_accounting(true);
  reset_gemm_account();
  model.forward(batch);
  model.zero_grad();
  model.backward();
  set_accounting(false);
  return {model.step_flops(), gemm_account().flops};
}
}  // namespace

TEST_CASE("FLOP counter: hand counts and the GEMMs' own count", "[flops]") {
  // V 20, T 12, C 8, L 2, H 2, F 12; B 3 samples with 3 scored positions each: N = 36 rows, S = 9
  const double N = 36, S = 9, C = 8, T = 12, F = 12, V = 20, L = 2, Bs = 3;
  const double head = 2 * S * C * V;
  const double attn = 2 * N * C * 3 * C + 2 * N * C * C + 4 * Bs * T * T * C;  // qkv, proj, QK^T and PV
  // The analytic count takes the causal attention's products whole (the model's FLOPs, as a dense
  // implementation such as the PyTorch peer performs them); the GEMMs skip the block of rows
  // [0, m) and columns [m, T), m = T / 2, where P and dZ are zero: 2 m (T - m) C per product and
  // sample summed over heads, 2 products forward and 4 backward, per layer.
  const double m = 6, skipped = 3 * 2 * L * Bs * 2 * m * (T - m) * C;
  SECTION("dense") {
    const auto [an, counted] = step_count(test::small_model(ModelKind::Dense, 20, 12, 8, 2, 2, 0, 0, 12), 3, 3);
    // attn = 13,824 + 4,608 + 13,824 = 32,256; FFN 13,824; head 2,880: 3 x (2 x 46,080 + 2,880)
    const double hand = 3 * (L * (attn + 4 * N * C * F) + head);
    CHECK(hand == 285120.0);
    CHECK(an == hand);
    CHECK(skipped == 20736.0);
    CHECK(counted == hand - skipped);
  }
  SECTION("moe and gauss-moe: the router GEMMs and the experts on their rows") {
    for (ModelKind k : {ModelKind::Moe, ModelKind::GaussMoe}) {
      const auto [an, counted] = step_count(test::small_model(k, 20, 12, 8, 2, 2, 4, 2, 12), 3, 3);
      // top-2 of 4: every token reaches 2 experts, 2 N rows per layer; router 2 N C E (linear) or
      // two GEMMs 4 N C E (Gaussian: x^2 w^T and x m^T)
      const double router = (k == ModelKind::Moe ? 2 : 4) * N * C * 4;
      const double hand = 3 * (L * (attn + router + 4 * (2 * N) * C * F) + head);
      INFO(to_string(k));
      CHECK(an == hand);
      CHECK(counted == hand - skipped);
    }
  }
  SECTION("pilf: the memory-Gaussian router's GEMMs per sample set") {
    const auto [an, counted] = step_count(test::small_model(ModelKind::Pilf, 20, 12, 8, 2, 2, 4, 2, 12), 3, 3);
    const double hand = 3 * (L * (attn + 4 * N * C * 4 + 4 * (2 * N) * C * F) + head);
    CHECK(an == hand);
    CHECK(counted == hand - skipped);
  }
  SECTION("rwkv7: projections, low-rank paths, channel mix, and the recurrence (not a GEMM)") {
    const auto [an, counted] = step_count(test::small_rwkv7(), 3, 3);
    const double Nh = 4;  // head size
    // per token and layer, 2 flops per multiply-add: r k v o (8 C^2); each low-rank pair C -> D -> C
    // (4 C D; w 3, a 2 and gate 4 on both layers, the value residual's 3 on layer 1 only); the
    // channel mix C -> F -> C (4 C F): layer 0 512 + 288 + 384, layer 1 512 + 384 + 384
    const double gemm = N * ((8 * C * C + 4 * C * 9 + 4 * C * F) + (8 * C * C + 4 * C * 12 + 4 * C * F)) + head;
    CHECK(gemm == 36.0 * 2464 + 2880);
    const double wkv = N * L * 9 * C * Nh;  // per state entry: S a (2), S w + sa b + v k (5), S r (2)
    CHECK(an == 3 * (gemm + wkv));
    CHECK(counted == 3 * gemm);
  }
}
