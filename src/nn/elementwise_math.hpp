// erf and exp for elementwise ops in the op's precision. float: branch-free approximations that
// the compiler vectorises (libm calls are not vectorised without -ffast-math, and GELU's erf/exp
// were ~40% of a training step); tested against libm in tests/unit/test_ops.cpp: |error| <= 9e-7
// (erf, absolute; measured 4.2e-7) and <= 7.5e-7 (exp, relative; measured 2.5e-7). double: libm
// itself, so the double instantiation used by the gradient checks stays the exact oracle.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace hyperrnn::nn {

// erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (outside, erf is +-1 to float precision): a rational
// minimax fit of degree 13/8, max error 6.5e-8 when evaluated exactly.
inline float erf_elementwise(float x) {
  x = x < -4.0f ? -4.0f : x;  // written as selects (not std::clamp) so that the loop vectorises
  x = x > 4.0f ? 4.0f : x;
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

// exp(x) for x in [-87, 88]: x = n ln2 + r with |r| <= ln2/2 (two-constant Cody-Waite split),
// exp(r) by its degree-6 Taylor polynomial (truncation r^7/7! < 1.2e-7 relative), times 2^n built
// in the exponent bits. Inputs are clamped to that range.
inline float exp_elementwise(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline double erf_elementwise(double x) { return std::erf(x); }
inline double exp_elementwise(double x) { return std::exp(x); }

}  // namespace hyperrnn::nn
