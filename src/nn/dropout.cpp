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
// keep[4 l + c] = (w[c][l] >= threshold) for the 64 words of 16 blocks: the word order of the
// stream (block by block), written with fixed trip counts so that it vectorises (compares on the
// four word rows, then byte interleaves); the loop over j % 4 and j / 4 it replaces was scalar.
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
void mask_of_blocks(uint8_t* __restrict keep, const uint32_t (*w)[CounterRng::kLanes], uint32_t threshold) {
  for (int l = 0; l < CounterRng::kLanes; ++l)
    for (int c = 0; c < 4; ++c) keep[4 * l + c] = w[c][l] >= threshold ? 1 : 0;
}
}  // namespace

void dropout_mask(uint8_t* keep, int64_t n, const DropoutKey& key, uint32_t index, uint32_t threshold) {
  const CounterRng rng(key.seed, key.purpose, key.step, index);  // its words, 16 blocks at a time
  constexpr int64_t kWords = 4 * CounterRng::kLanes;
  uint32_t w[4][CounterRng::kLanes];
  for (int64_t base = 0; base < n; base += kWords) {
    rng.blocks(static_cast<uint32_t>(base / 4), w);
    const int64_t m = std::min(kWords, n - base);
    if (m == kWords) {
      mask_of_blocks(keep + base, w, threshold);
    } else {
      for (int64_t j = 0; j < m; ++j) keep[base + j] = w[j % 4][j / 4] >= threshold ? 1 : 0;
    }
  }
}

template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void dropout_forward(T* out, const T* inp, const uint8_t* keep, T scale, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = keep[i] ? inp[i] * scale : T(0);
}

template <class T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void dropout_backward(T* dinp, const T* dout, const uint8_t* keep, T scale, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dinp[i] = keep[i] ? dout[i] * scale : T(0);
}

template void dropout_forward<float>(float*, const float*, const uint8_t*, float, int64_t);
template void dropout_forward<double>(double*, const double*, const uint8_t*, double, int64_t);
template void dropout_backward<float>(float*, const float*, const uint8_t*, float, int64_t);
template void dropout_backward<double>(double*, const double*, const uint8_t*, double, int64_t);

}  // namespace hyperrnn::nn
