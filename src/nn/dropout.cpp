// Dropout masks and their application.
#include "nn/dropout.hpp"

#include <algorithm>
#include <cmath>

namespace hyperrnn::nn {

uint32_t dropout_threshold(double p) {
  if (!(p > 0.0)) return 0u;
  const double t = std::floor(p * 4294967296.0);
  return t >= 4294967295.0 ? 4294967295u : static_cast<uint32_t>(t);
}

namespace {
// Philox4x32-10 on kLanes consecutive counters at once, written lane by lane so that the compiler
// vectorises it (32 x 32 -> 64-bit products as vpmuludq); the words are those of CounterRng's
// stream (block c gives words 4c .. 4c + 3), which tests/unit/test_dropout.cpp checks.
constexpr int kLanes = 16;
__attribute__((target_clones("avx2", "default")))
void philox_blocks(uint32_t out[4][kLanes], uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  uint32_t x0[kLanes], x1[kLanes], x2[kLanes], x3[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    x0[l] = c0 + static_cast<uint32_t>(l);
    x1[l] = c1;
    x2[l] = c2;
    x3[l] = c3;
  }
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    for (int l = 0; l < kLanes; ++l) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * x0[l];
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * x2[l];
      const uint32_t y0 = static_cast<uint32_t>(p1 >> 32) ^ x1[l] ^ k0;
      const uint32_t y2 = static_cast<uint32_t>(p0 >> 32) ^ x3[l] ^ k1;
      x1[l] = static_cast<uint32_t>(p1);
      x3[l] = static_cast<uint32_t>(p0);
      x0[l] = y0;
      x2[l] = y2;
    }
  }
  for (int l = 0; l < kLanes; ++l) {
    out[0][l] = x0[l];
    out[1][l] = x1[l];
    out[2][l] = x2[l];
    out[3][l] = x3[l];
  }
}
}  // namespace

void dropout_mask(uint8_t* keep, int64_t n, const DropoutKey& key, uint32_t index, uint32_t threshold) {
  // the stream of CounterRng(seed, purpose, step, index): counter {c, index, step, purpose}
  const uint32_t k0 = static_cast<uint32_t>(key.seed), k1 = static_cast<uint32_t>(key.seed >> 32);
  uint32_t w[4][kLanes];
  for (int64_t base = 0; base < n; base += 4 * kLanes) {
    philox_blocks(w, static_cast<uint32_t>(base / 4), index, key.step, static_cast<uint32_t>(key.purpose), k0, k1);
    const int64_t m = std::min<int64_t>(4 * kLanes, n - base);
    for (int64_t j = 0; j < m; ++j) keep[base + j] = w[j % 4][j / 4] >= threshold ? 1 : 0;
  }
}

template <class T>
__attribute__((target_clones("avx2", "default"))) void dropout_forward(T* out, const T* inp, const uint8_t* keep, T scale, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = keep[i] ? inp[i] * scale : T(0);
}

template <class T>
__attribute__((target_clones("avx2", "default"))) void dropout_backward(T* dinp, const T* dout, const uint8_t* keep, T scale, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dinp[i] = keep[i] ? dout[i] * scale : T(0);
}

template void dropout_forward<float>(float*, const float*, const uint8_t*, float, int64_t);
template void dropout_forward<double>(double*, const double*, const uint8_t*, double, int64_t);
template void dropout_backward<float>(float*, const float*, const uint8_t*, float, int64_t);
template void dropout_backward<double>(double*, const double*, const uint8_t*, double, int64_t);

}  // namespace hyperrnn::nn
