// The reproducible shard sum's fixed-point rules (ShardSum in parallel/layout.cpp, and its CUDA
// version in src/cuda/kernels.cu), shared so that both make the same integers and floats from the
// same blocks: blocks of kBlock elements, the block exponent's sentinels, the shift that puts a
// block on its fixed-point grid, and the rounding.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/host_device.hpp"

namespace hyperrnn::fixed_point {

constexpr int64_t kBlock = 256;
constexpr int kZero = -2147483647 - 1;  // INT_MIN: a block of zeros
constexpr int kNonFinite = 2147483647;  // INT_MAX: a block holding inf or NaN

// A block's exponent from its largest magnitude mx (|v| < 2^e for every v of the block; frexp's
// exponent grows with |v|), kNonFinite when the block holds inf or NaN, kZero when it is all zeros.
HYPERRNN_HOST_DEVICE inline int block_exponent(double mx, bool nonfinite) {
  if (nonfinite) return kNonFinite;
  if (mx == 0.0) return kZero;
  int e2 = 0;
  frexp(mx, &e2);
  return e2;
}

// ceil(log2 S): the headroom for summing S terms.
HYPERRNN_HOST_DEVICE inline int headroom(int S) {
  int h = 0;
  while ((int64_t{1} << h) < S) ++h;
  return h;
}

// The shift of a block with exponent ex (|v| < 2^ex): |v| 2^shift < 2^(62 - headroom).
HYPERRNN_HOST_DEVICE inline int shift_of(int ex, int head) { return 62 - head - ex; }

// std::llround for |x| < 2^62, inline: truncate (exact), then step away from zero when the
// remainder (exact too) is at least one half. The same integer as llround for every such x
// (tested in tests/mpi/test_parallel.cpp); libm's llround was a third of ShardSum's time.
HYPERRNN_HOST_DEVICE inline int64_t round_half_away(double x) {
  const int64_t t = static_cast<int64_t>(x);
  const double r = x - static_cast<double>(t);
  return t + (r >= 0.5 ? 1 : 0) - (r <= -0.5 ? 1 : 0);
}

}  // namespace hyperrnn::fixed_point
