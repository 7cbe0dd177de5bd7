// Philox4x32-10 and the CounterRng stream built on it.
#include "core/rng.hpp"

#include "core/philox.hpp"

#include <cmath>
#include <numbers>

#if defined(__x86_64__)
// GCC 12's AVX-512 shift intrinsics, used inside a target("avx512f") function, pass
// _mm512_undefined_epi32() to their masked builtins, which -Wuninitialized reports (GCC bug 105593)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

namespace hyperrnn {

namespace {
using philox::kM0;
using philox::kM1;
using philox::kW0;
using philox::kW1;
}  // namespace

Philox4x32Ctr philox4x32_10(Philox4x32Ctr ctr, Philox4x32Key key) {
  philox::block(ctr.data(), key.data());
  return ctr;
}

namespace {
// Philox4x32-10 on kLanes consecutive counters. Integer operations only, so every variant gives
// the same words; tests/unit/test_isa_bitwise.cpp checks the one the CPU selects against next_u32.
constexpr int kLanes = CounterRng::kLanes;

}  // namespace

// Portable: philox4x32_10's round written lane by lane.
void detail::philox_lanes_portable(uint32_t out[4][kLanes], Philox4x32Ctr ctr, Philox4x32Key key) {
  uint32_t x0[kLanes], x1[kLanes], x2[kLanes], x3[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    x0[l] = ctr[0] + static_cast<uint32_t>(l);
    x1[l] = ctr[1];
    x2[l] = ctr[2];
    x3[l] = ctr[3];
  }
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += kW0;
      key[1] += kW1;
    }
    for (int l = 0; l < kLanes; ++l) {  // philox4x32_10's round, lane l
      const uint64_t p0 = static_cast<uint64_t>(kM0) * x0[l];
      const uint64_t p1 = static_cast<uint64_t>(kM1) * x2[l];
      const uint32_t y0 = static_cast<uint32_t>(p1 >> 32) ^ x1[l] ^ key[0];
      const uint32_t y2 = static_cast<uint32_t>(p0 >> 32) ^ x3[l] ^ key[1];
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

namespace {
#if defined(__x86_64__)
// AVX2, 8 lanes per register. GCC does not vectorise the portable loop's 32 x 32 -> 64-bit
// products (it stayed scalar: 15% of a pilf step), so they are written out: vpmuludq multiplies
// the even 32-bit lanes, the odd ones after a 64-bit shift; the high and low halves are then
// interleaved back into 32-bit lanes.
__attribute__((target("avx2"))) inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                          // lanes 0,2,4,6 as 64 bit
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);    // lanes 1,3,5,7
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

__attribute__((target("avx2"))) void philox_lanes_avx2(uint32_t out[4][kLanes], Philox4x32Ctr ctr, Philox4x32Key key) {
  static_assert(kLanes % 8 == 0);
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kM0)), m1 = _mm256_set1_epi32(static_cast<int>(kM1));
  for (int g = 0; g < kLanes; g += 8) {
    __m256i x0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(ctr[0] + static_cast<uint32_t>(g))),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i x1 = _mm256_set1_epi32(static_cast<int>(ctr[1]));
    __m256i x2 = _mm256_set1_epi32(static_cast<int>(ctr[2]));
    __m256i x3 = _mm256_set1_epi32(static_cast<int>(ctr[3]));
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; ++round) {
      if (round > 0) {
        k0 += kW0;
        k1 += kW1;
      }
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(x0, m0, hi0, lo0);
      mulhilo8(x2, m1, hi1, lo1);
      x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32(static_cast<int>(k0)));
      x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32(static_cast<int>(k1)));
      x1 = lo1;
      x3 = lo0;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[0][g]), x0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[1][g]), x1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[2][g]), x2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[3][g]), x3);
  }
}

// AVX-512F, all 16 lanes in one register; the same products and interleave with mask blends, the
// two XORs of a round as one ternary-logic instruction. On a core with full-width 512-bit units
// (Zen 5 here) it takes 0.33 ns per word against the AVX2 version's 0.77 (2.3x; the dropout masks'
// Philox was 8% of a vit-pilf-32 step); on one that splits them (Zen 4) it should be no slower
// (not measured).
__attribute__((target("avx512f"))) inline void mulhilo16(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

__attribute__((target("avx512f"))) void philox_lanes_avx512(uint32_t out[4][kLanes], Philox4x32Ctr ctr, Philox4x32Key key) {
  static_assert(kLanes == 16);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kM0)), m1 = _mm512_set1_epi32(static_cast<int>(kM1));
  __m512i x0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(ctr[0])),
                                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512i x1 = _mm512_set1_epi32(static_cast<int>(ctr[1]));
  __m512i x2 = _mm512_set1_epi32(static_cast<int>(ctr[2]));
  __m512i x3 = _mm512_set1_epi32(static_cast<int>(ctr[3]));
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    __m512i hi0, lo0, hi1, lo1;
    mulhilo16(x0, m0, hi0, lo0);
    mulhilo16(x2, m1, hi1, lo1);
    x0 = _mm512_ternarylogic_epi32(hi1, x1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);  // a ^ b ^ c
    x2 = _mm512_ternarylogic_epi32(hi0, x3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
    x1 = lo1;
    x3 = lo0;
  }
  _mm512_storeu_si512(&out[0][0], x0);
  _mm512_storeu_si512(&out[1][0], x1);
  _mm512_storeu_si512(&out[2][0], x2);
  _mm512_storeu_si512(&out[3][0], x3);
}

const int kBestPath = [] {
  __builtin_cpu_init();  // may run before the resolvers that would otherwise initialise it
  if (__builtin_cpu_supports("avx512f")) return 2;
  return __builtin_cpu_supports("avx2") ? 1 : 0;
}();
#else
const int kBestPath = 0;
#endif
}  // namespace

bool detail::philox_lanes_path(int path, uint32_t out[4][kLanes], Philox4x32Ctr ctr, Philox4x32Key key) {
  if (path < 0 || path > kBestPath) return false;
#if defined(__x86_64__)
  if (path == 2) {
    philox_lanes_avx512(out, ctr, key);
    return true;
  }
  if (path == 1) {
    philox_lanes_avx2(out, ctr, key);
    return true;
  }
#endif
  philox_lanes_portable(out, ctr, key);
  return true;
}

void CounterRng::blocks(uint32_t first, uint32_t out[4][kLanes]) const {
  detail::philox_lanes_path(kBestPath, out, {first, ctr_[1], ctr_[2], ctr_[3]}, key_);
}

CounterRng::CounterRng(uint64_t seed, RngPurpose purpose, uint32_t step, uint32_t index)
    : key_{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)},
      ctr_{0u, index, step, static_cast<uint32_t>(purpose)} {}

uint32_t CounterRng::next_u32() {
  if (used_ == 4) {
    block_ = philox4x32_10(ctr_, key_);
    ++ctr_[0];
    used_ = 0;
  }
  return block_[used_++];
}

float CounterRng::uniform() { return static_cast<float>(next_u32() >> 8) * 0x1.0p-24f; }

double CounterRng::uniform_double() {
  const uint64_t hi = next_u32() >> 5, lo = next_u32() >> 6;  // 27 + 26 bits
  return static_cast<double>((hi << 26) | lo) * 0x1.0p-53;
}

uint32_t CounterRng::below(uint32_t n) {
  return static_cast<uint32_t>((static_cast<uint64_t>(next_u32()) * n) >> 32);
}

double CounterRng::normal() {
  const double u1 = 1.0 - uniform_double();  // (0, 1]
  const double u2 = uniform_double();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

}  // namespace hyperrnn
