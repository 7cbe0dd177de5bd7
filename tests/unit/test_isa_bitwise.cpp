// The vectorised elementwise kernels (cloned for AVX2 next to the baseline, chosen at load time by
// the CPU) must give exactly the bits of their scalar evaluation: that is what keeps a run's
// results the same on every x86-64 machine, whichever clone it picks. The scalar oracles below are
// compiled without vectorisation and written from the definitions (CounterRng's stream, the GELU
// formula of ops.cpp, torch.optim.AdamW's update), so a clone that reorders, fuses or reassociates
// anything fails here. A run checks the clone its CPU selects (AVX2 on the development machine,
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
  WARN("elementwise clone selected by this CPU: " << (__builtin_cpu_supports("avx2") ? "avx2" : "default (SSE2)"));
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
