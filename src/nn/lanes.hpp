// Row reductions in a fixed order that the compiler can vectorise: element i goes to partial sum
// i % kLanes, the tail (C % kLanes elements) to a ninth sum, and the partial sums combine in one
// fixed tree. The order is written in the source, not chosen by the vectoriser, so the result is
// the same bits on every ISA clone and every compiler that honours -ffp-contract=off (checked by
// tests/unit/test_isa_bitwise.cpp against a scalar evaluation of the same order), and on the GPU
// (nvcc --fmad=false), where the MoE combine's backward uses the same lane_sum. A plain
// left-to-right sum in double cannot be vectorised without -ffast-math and runs at the latency of
// one dependent add per element (layernorm was 12% of a moe step that way).
#pragma once
#include <cstdint>

#include "core/host_device.hpp"

namespace hyperrnn::nn {

inline constexpr int kLanes = 8;

// sum over i in [0, n) of f(i), accumulated in double in the lane order above.
template <class F>
[[gnu::always_inline]] HYPERRNN_HOST_DEVICE inline double lane_sum(int n, F f) {
  double s[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) s[l] += f(i + l);
  double tail = 0.0;
  for (; i < n; ++i) tail += f(i);
  return (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) + tail;
}

// max over i in [0, n) of v[i], n >= 1 (exact whatever the order; lanes only let it vectorise).
template <class T>
[[gnu::always_inline]] inline T lane_max(const T* v, int n) {
  T m[kLanes];
  for (int l = 0; l < kLanes; ++l) m[l] = v[0];
  int i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) m[l] = v[i + l] > m[l] ? v[i + l] : m[l];
  T r = m[0];
  for (int l = 1; l < kLanes; ++l) r = m[l] > r ? m[l] : r;
  for (; i < n; ++i) r = v[i] > r ? v[i] : r;
  return r;
}

}  // namespace hyperrnn::nn
