// The vectorised elementwise kernels and row reductions (cloned for AVX-512 and AVX2 next to the baseline, chosen by
// the CPU) must give exactly the bits of their scalar evaluation: that is what keeps a run's
// results the same on every x86-64 machine, whichever clone it picks. The scalar oracles below are
// compiled without vectorisation and written from the definitions (CounterRng's stream, the GELU
// formula of ops.cpp, torch.optim.AdamW's update), so a clone that reorders, fuses or reassociates
// anything fails here. A run checks the clone its CPU selects (AVX-512 or AVX2 on the development machines,
// the SSE2 baseline on a CPU without AVX2); the first test case says which.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <numbers>
#include <vector>

#include "core/param_table.hpp"
#include "core/rng.hpp"
#include "nn/adamw.hpp"
#include "nn/dropout.hpp"
#include "nn/elementwise_math.hpp"
#include "nn/lanes.hpp"
#include "nn/ops.hpp"

using namespace hyperrnn;
using namespace hyperrnn::nn;

namespace {
#define SCALAR __attribute__((noinline, optimize("no-tree-vectorize", "no-tree-slp-vectorize")))

SCALAR float gelu_scalar(float x) {
  const float inv_sqrt2 = static_cast<float>(1.0 / std::numbers::sqrt2);
  return 0.5f * x * (1.0f + erf_elementwise(x * inv_sqrt2));
}

SCALAR float gelu_grad_scalar(float x, float d) {
  const float inv_sqrt2 = static_cast<float>(1.0 / std::numbers::sqrt2);
  const float inv_sqrt2pi = static_cast<float>(1.0 / std::sqrt(2.0 * std::numbers::pi));
  const float g = 0.5f * (1.0f + erf_elementwise(x * inv_sqrt2)) + x * inv_sqrt2pi * exp_elementwise(-0.5f * x * x);
  return g * d;
}

// layernorm's forward as ops.cpp writes it, with lanes.hpp's sums, evaluated scalar
SCALAR void layernorm_scalar(float* out, float* mean, float* rstd, const float* inp, const float* w, const float* b,
                             int N, int C) {
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<int64_t>(n) * C;
    const double m = lane_sum(C, [&](int i) { return static_cast<double>(x[i]); }) / C;
    const double v = lane_sum(C, [&](int i) { return (x[i] - m) * (x[i] - m); });
    const double r = 1.0 / std::sqrt(v / C + 1e-5);
    for (int i = 0; i < C; ++i) out[static_cast<int64_t>(n) * C + i] = static_cast<float>((x[i] - m) * r) * w[i] + b[i];
    mean[n] = static_cast<float>(m);
    rstd[n] = static_cast<float>(r);
  }
}

SCALAR double crossentropy_scalar(float* losses, float* probs, const float* logits, const int32_t* tg, int N, int V) {
  double total = 0.0;
  for (int n = 0; n < N; ++n) {
    const float* l = logits + static_cast<int64_t>(n) * V;
    float* p = probs + static_cast<int64_t>(n) * V;
    const float mx = lane_max(l, V);
    for (int v = 0; v < V; ++v) p[v] = exp_elementwise(l[v] - mx);
    const double s = lane_sum(V, [&](int v) { return static_cast<double>(p[v]); });
    const float inv = static_cast<float>(1.0 / s);
    for (int v = 0; v < V; ++v) p[v] *= inv;
    const double loss = std::log(s) + static_cast<double>(mx) - static_cast<double>(l[tg[n]]);
    losses[n] = static_cast<float>(loss);
    total += loss;
  }
  return total;
}

std::vector<float> floats(int64_t n, uint32_t seed, float scale) {
  CounterRng r(seed, RngPurpose::Init, 0, 0);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = scale * (2.0f * r.uniform() - 1.0f);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
}  // namespace

TEST_CASE("dropout masks are CounterRng's stream word by word, at every length", "[isa][dropout]") {
  WARN("elementwise clone selected by this CPU: " << (__builtin_cpu_supports("avx512f") ? "avx512f"
                                                       : __builtin_cpu_supports("avx2") ? "avx2" : "default (SSE2)"));
  const DropoutKey key{0x123456789abcdefULL, RngPurpose::Dropout, 4000000000u};
  const uint32_t thr = dropout_threshold(0.37);
  for (int64_t n : {1, 3, 4, 5, 63, 64, 65, 127, 1000, 4099}) {
    for (uint32_t index : {0u, 7u, 0xfffffff0u}) {
      std::vector<uint8_t> keep(static_cast<size_t>(n), 2);
      dropout_mask(keep.data(), n, key, index, thr);
      CounterRng rng(key.seed, key.purpose, key.step, index);
      int64_t bad = 0;
      for (int64_t i = 0; i < n; ++i) bad += keep[static_cast<size_t>(i)] != (rng.next_u32() >= thr ? 1 : 0);
      INFO("n " << n << ", index " << index);
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("CounterRng::blocks: the selected Philox and the portable one give the same words", "[isa][rng]") {
  for (uint64_t seed : {0ULL, 1ULL, 0xfedcba9876543210ULL})
    for (uint32_t first : {0u, 1u, 0xfffffff8u, 0xfffffff0u, 0xfffffffcu}) {  // the counter's low word wraps
      const CounterRng rng(seed, RngPurpose::Dropout, 77u, 0xabcdefu);
      uint32_t a[4][CounterRng::kLanes], b[4][CounterRng::kLanes];
      rng.blocks(first, a);
      const Philox4x32Ctr ctr{first, 0xabcdefu, 77u, static_cast<uint32_t>(RngPurpose::Dropout)};
      const Philox4x32Key key{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
      detail::philox_lanes_portable(b, ctr, key);
      CHECK(std::memcmp(a, b, sizeof a) == 0);
      for (int path = 1; path <= 2; ++path) {  // every vector path this CPU has, not only the selected one
        uint32_t c[4][CounterRng::kLanes] = {};
        if (!detail::philox_lanes_path(path, c, ctr, key)) continue;
        INFO("path " << path);
        CHECK(std::memcmp(c, b, sizeof c) == 0);
      }
      for (int l = 0; l < CounterRng::kLanes; ++l) {  // and philox4x32_10 itself, block by block
        const Philox4x32Ctr w = philox4x32_10({first + static_cast<uint32_t>(l), 0xabcdefu, 77u,
                                               static_cast<uint32_t>(RngPurpose::Dropout)},
                                              {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
        for (int j = 0; j < 4; ++j) CHECK(a[j][l] == w[static_cast<size_t>(j)]);
      }
    }
}

TEST_CASE("gelu forward and backward (float) equal their scalar evaluation bit for bit", "[isa][ops]") {
  const int64_t n = 100003;  // not a multiple of any vector width
  const std::vector<float> x = floats(n, 1, 6.0f), d = floats(n, 2, 1.0f);
  std::vector<float> y(static_cast<size_t>(n)), dx(static_cast<size_t>(n)), ys(y.size()), dxs(y.size());
  gelu_forward(y.data(), x.data(), n);
  gelu_backward(dx.data(), d.data(), x.data(), n);
  for (size_t i = 0; i < x.size(); ++i) {
    ys[i] = gelu_scalar(x[i]);
    dxs[i] = gelu_grad_scalar(x[i], d[i]);
  }
  CHECK(same_bits(y, ys));
  CHECK(same_bits(dx, dxs));
  // the training pair (GELU' kept from the forward, in place over the input) gives the same bits
  std::vector<float> g = x, yc(y.size()), dxc(y.size());
  gelu_forward_grad(yc.data(), g.data(), g.data(), n);
  gelu_backward_cached(dxc.data(), d.data(), g.data(), n);
  CHECK(same_bits(yc, ys));
  CHECK(same_bits(dxc, dxs));
}

TEST_CASE("dropout forward/backward and AdamW (float) equal their scalar evaluation bit for bit", "[isa][adamw]") {
  const int64_t n = 40001;
  const std::vector<float> x = floats(n, 3, 2.0f);
  std::vector<uint8_t> keep(static_cast<size_t>(n));
  dropout_mask(keep.data(), n, DropoutKey{9, RngPurpose::Dropout, 1}, 2, dropout_threshold(0.25));
  std::vector<float> y(x.size()), dx(x.size());
  dropout_forward(y.data(), x.data(), keep.data(), 1.0f / 0.75f, n);
  dropout_backward(dx.data(), x.data(), keep.data(), 1.0f / 0.75f, n);
  int64_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = keep[i] ? x[i] * (1.0f / 0.75f) : 0.0f;
    bad += std::memcmp(&y[i], &want, 4) != 0 || std::memcmp(&dx[i], &want, 4) != 0;
  }
  CHECK(bad == 0);

  ParamTable t;
  t.add("w", {n}, TensorKind::Dense, true);
  AdamW<float> opt(t, {0.9, 0.95, 1e-8, 0.1});
  std::vector<float> p = floats(n, 4, 1.0f), g = floats(n, 5, 0.01f), ps = p, m(p.size(), 0.0f), v(p.size(), 0.0f);
  for (int s = 1; s <= 3; ++s) {
    opt.step(p.data(), g.data(), 1e-3);
    // torch.optim.AdamW in float with this code's constants (float b1, b2, eps; step size, decay
    // and sqrt of the bias correction rounded once from double)
    const float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
    const float step_size = static_cast<float>(1e-3 / (1.0 - std::pow(0.9, s)));
    const float decay = static_cast<float>(1.0 - 1e-3 * 0.1);
    const float sqrt_bc2 = static_cast<float>(std::sqrt(1.0 - std::pow(0.95, s)));
    [&]() SCALAR {
      for (size_t i = 0; i < ps.size(); ++i) {
        ps[i] *= decay;
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        ps[i] -= step_size * m[i] / (std::sqrt(v[i]) / sqrt_bc2 + eps);
      }
    }();
    INFO("step " << s);
    CHECK(same_bits(p, ps));
  }
}

TEST_CASE("row reductions (layernorm, cross-entropy) sum in the written lane order on every clone", "[isa][ops]") {
  for (int C : {1, 5, 8, 64, 67, 509}) {
    const int N = 37;
    const std::vector<float> x = floats(static_cast<int64_t>(N) * C, 11, 3.0f), w = floats(C, 12, 1.0f),
                             b = floats(C, 13, 1.0f);
    std::vector<float> y(x.size()), m(N), r(N), ys(x.size()), ms(N), rs(N);
    layernorm_forward(y.data(), m.data(), r.data(), x.data(), w.data(), b.data(), N, C);
    layernorm_scalar(ys.data(), ms.data(), rs.data(), x.data(), w.data(), b.data(), N, C);
    INFO("C " << C);
    CHECK(same_bits(y, ys));
    CHECK(same_bits(m, ms));
    CHECK(same_bits(r, rs));
    std::vector<int32_t> tg(N);
    for (int n = 0; n < N; ++n) tg[static_cast<size_t>(n)] = (n * 7) % C;
    std::vector<float> lo(N), p(x.size()), los(N), ps(x.size());
    const double t = crossentropy_forward(lo.data(), p.data(), x.data(), tg.data(), N, C);
    const double ts = crossentropy_scalar(los.data(), ps.data(), x.data(), tg.data(), N, C);
    CHECK(std::memcmp(&t, &ts, sizeof t) == 0);
    CHECK(same_bits(lo, los));
    CHECK(same_bits(p, ps));
  }
}
