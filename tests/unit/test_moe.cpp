// MoE layer: dispatch/combine against a per-token reference, token counts, an expert that gets no
// tokens, and finite-difference gradients for both routers (skipping points next to top-k ties).
#include <catch2/catch.hpp>

#include <cmath>

#include "gradcheck.hpp"
#include "nn/moe.hpp"
#include "nn/ops.hpp"

using namespace hyperrnn;
using namespace hyperrnn::nn;
using V = std::vector<double>;

namespace {
struct MoeFixture {
  MoeDims d;
  RouterKind router;
  V params, grads, inp, R, out, cache_f, scratch_f;
  std::vector<int32_t> cache_i;
  MoeCache<double> cache{};
  MoeScratch<double> scratch{};
  MoeFixture(int N, int C, int E, int K, int F, RouterKind rk, uint64_t seed) : d{N, C, E, K, F}, router(rk) {
    const int64_t nrouter = 2LL * E * C;
    params = test::uniform(nrouter + E * d.expert_stride(), seed, 0.5);
    if (rk == RouterKind::Gaussian)
      for (int64_t i = E * C; i < 2LL * E * C; ++i) params[i] *= 0.4;  // log_sigma in [-0.2, 0.2]
    grads.assign(params.size(), 0.0);
    inp = test::uniform(N * C, seed + 1, 1.0);
    R = test::uniform(N * C, seed + 2, 1.0);
    out.resize(N * C);
    Carver<double> count_f, count_s;
    Carver<int32_t> count_i;
    moe_bind_cache<double>(count_f, count_i, d);
    moe_bind_scratch<double>(count_s, d);
    cache_f.resize(static_cast<size_t>(count_f.used()));
    cache_i.resize(static_cast<size_t>(count_i.used()));
    scratch_f.resize(static_cast<size_t>(count_s.used()));
    Carver<double> f(cache_f.data()), s(scratch_f.data());
    Carver<int32_t> i(cache_i.data());
    cache = moe_bind_cache<double>(f, i, d);
    scratch = moe_bind_scratch<double>(s, d);
  }
  MoeWeights<double> w(V& buf) { return {buf.data(), buf.data() + d.E * d.C, buf.data() + 2LL * d.E * d.C}; }
  double f() {
    moe_forward(out.data(), cache, inp.data(), w(params), router, d);
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += out[i] * R[i];
    return s;
  }
  uint64_t routing() const {
    uint64_t h = 0;
    for (int64_t i = 0; i < d.assignments(); ++i) h = h * 131 + static_cast<uint64_t>(cache.idx[i]);
    return h;
  }
};
}  // namespace

TEST_CASE("MoE output equals the per-token weighted sum of its chosen experts", "[moe]") {
  for (RouterKind rk : {RouterKind::Linear, RouterKind::Gaussian}) {
    MoeFixture m(9, 4, 3, 2, 5, rk, 30);
    m.f();
    const MoeDims& d = m.d;
    int total = 0;
    for (int e = 0; e < d.E; ++e) total += moe_tokens_of(m.cache.offsets, e);
    CHECK(total == d.N * d.K);
    for (int n = 0; n < d.N; ++n) {
      std::vector<double> ref(d.C, 0.0), h(d.F), a(d.F), y(d.C);
      for (int j = 0; j < d.K; ++j) {
        const int e = m.cache.idx[n * d.K + j];
        const double* p = m.params.data() + 2LL * d.E * d.C + e * d.expert_stride();
        linear_forward(h.data(), m.inp.data() + n * d.C, p, p + d.F * d.C, 1, d.C, d.F);
        gelu_forward(a.data(), h.data(), d.F);
        linear_forward(y.data(), a.data(), p + d.F * d.C + d.F, p + 2 * d.F * d.C + d.F, 1, d.F, d.C);
        for (int i = 0; i < d.C; ++i) ref[i] += m.cache.gates[n * d.K + j] * y[i];
      }
      for (int i = 0; i < d.C; ++i) REQUIRE(m.out[n * d.C + i] == Approx(ref[i]).epsilon(1e-12).margin(1e-14));
    }
  }
}

TEST_CASE("MoE with an expert that receives no tokens", "[moe]") {
  MoeFixture m(6, 4, 3, 1, 5, RouterKind::Linear, 40);
  // Router weights of expert 2 strongly negative along every input: it is never chosen.
  for (int i = 0; i < m.d.C; ++i) m.params[2 * m.d.C + i] = 0.0;
  for (int n = 0; n < m.d.N; ++n) m.inp[n * m.d.C] = 1.0 + std::abs(m.inp[n * m.d.C]);
  m.params[2 * m.d.C] = -100.0;
  m.f();
  CHECK(moe_tokens_of(m.cache.offsets, 2) == 0);
  // Its gradients stay exactly zero, the others' do not.
  V dinp(m.inp.size());
  moe_backward(dinp.data(), m.w(m.grads), m.scratch, m.R.data(), m.inp.data(), m.cache, m.w(m.params), m.router, m.d);
  const double* g2 = m.grads.data() + 2LL * m.d.E * m.d.C + 2 * m.d.expert_stride();
  const double* g0 = m.grads.data() + 2LL * m.d.E * m.d.C;
  double n2 = 0, n0 = 0;
  for (int64_t i = 0; i < m.d.expert_stride(); ++i) {
    n2 += g2[i] * g2[i];
    n0 += g0[i] * g0[i] + g0[i + m.d.expert_stride()] * g0[i + m.d.expert_stride()];
  }
  CHECK(n2 == 0.0);
  CHECK(n0 > 0.0);
}

TEST_CASE("MoE backward matches finite differences for both routers", "[moe][grad]") {
  for (RouterKind rk : {RouterKind::Linear, RouterKind::Gaussian}) {
    INFO((rk == RouterKind::Linear ? "linear router" : "gaussian router"));
    MoeFixture m(8, 4, 4, 2, 6, rk, rk == RouterKind::Linear ? 50 : 60);
    m.f();
    V dinp(m.inp.size());
    moe_backward(dinp.data(), m.w(m.grads), m.scratch, m.R.data(), m.inp.data(), m.cache, m.w(m.params), m.router, m.d);
    auto f = [&] { return m.f(); };
    auto sig = [&] { return m.routing(); };
    const auto ri = test::check_gradient(f, m.inp.data(), dinp.data(), static_cast<int64_t>(m.inp.size()), 64, sig);
    INFO("inp: " << ri.first_failure << " worst " << ri.worst);
    CHECK(ri.checked > 16);
    CHECK(ri.failed == 0);
    const auto rp = test::check_gradient(f, m.params.data(), m.grads.data(), static_cast<int64_t>(m.params.size()), 400, sig);
    INFO("params: " << rp.first_failure << " worst " << rp.worst);
    CHECK(rp.checked > 100);
    CHECK(rp.failed == 0);
  }
}

TEST_CASE("MoE dynamic top-k: each sample uses its own k, output and gradients", "[moe][grad]") {
  // 3 samples of 4 tokens, K = 3 of 4 experts, k per sample = 1, 3, 2.
  const std::vector<int32_t> ks = {1, 3, 2};
  for (RouterKind rk : {RouterKind::Linear, RouterKind::Gaussian}) {
    MoeFixture m(12, 4, 4, 3, 5, rk, 70);
    m.d.sample_k = ks.data();
    m.d.sample_tokens = 4;
    m.f();
    const MoeDims& d = m.d;
    int total = 0;
    for (int e = 0; e < d.E; ++e) total += moe_tokens_of(m.cache.offsets, e);
    CHECK(total == 4 * (1 + 3 + 2));
    for (int n = 0; n < d.N; ++n) {
      const int k = ks[static_cast<size_t>(n / 4)];
      // the softmax over the k best scores, recomputed here
      const double* sc = m.cache.scores + n * d.E;
      double z = 0;
      for (int j = 0; j < k; ++j) z += std::exp(sc[m.cache.idx[n * d.K + j]]);
      std::vector<double> ref(d.C, 0.0), h(d.F), a(d.F), y(d.C);
      for (int j = 0; j < d.K; ++j) {
        const double gate = m.cache.gates[n * d.K + j];
        if (j >= k) {
          REQUIRE(gate == 0.0);
          REQUIRE(m.cache.pos[n * d.K + j] == -1);
          continue;
        }
        REQUIRE(gate == Approx(std::exp(sc[m.cache.idx[n * d.K + j]]) / z).epsilon(1e-12));
        const double* p = m.params.data() + 2LL * d.E * d.C + m.cache.idx[n * d.K + j] * d.expert_stride();
        linear_forward(h.data(), m.inp.data() + n * d.C, p, p + d.F * d.C, 1, d.C, d.F);
        gelu_forward(a.data(), h.data(), d.F);
        linear_forward(y.data(), a.data(), p + d.F * d.C + d.F, p + 2 * d.F * d.C + d.F, 1, d.F, d.C);
        for (int i = 0; i < d.C; ++i) ref[i] += gate * y[i];
      }
      for (int i = 0; i < d.C; ++i) REQUIRE(m.out[n * d.C + i] == Approx(ref[i]).epsilon(1e-12).margin(1e-14));
    }
    V dinp(m.inp.size());
    moe_backward(dinp.data(), m.w(m.grads), m.scratch, m.R.data(), m.inp.data(), m.cache, m.w(m.params), m.router, m.d);
    auto f = [&] { return m.f(); };
    auto sig = [&] { return m.routing(); };
    const auto ri = test::check_gradient(f, m.inp.data(), dinp.data(), static_cast<int64_t>(m.inp.size()), 48, sig);
    const auto rp = test::check_gradient(f, m.params.data(), m.grads.data(), static_cast<int64_t>(m.params.size()), 400, sig);
    INFO(ri.first_failure << rp.first_failure);
    CHECK(ri.failed == 0);
    CHECK(rp.failed == 0);
    CHECK(rp.checked > 100);
  }
}
