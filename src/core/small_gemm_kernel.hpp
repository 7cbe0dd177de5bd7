// The register-tiled kernel of core/small_gemm.hpp, included by one translation unit per ISA
// (small_gemm_avx512.cpp: AVX-512VL, 32 vector registers; small_gemm_avx2.cpp: AVX2, 16), each
// compiled with its own -m flags. Everything here has internal linkage (and it instantiates no
// standard-library template), so the two instantiations
// cannot be merged by the linker. Vectors are 8 floats (ymm) on both: a Zen 4 core runs a 512-bit
// FMA as two 256-bit halves, and the head sizes (8, 16) fill ymm registers exactly.
//
// A tile holds MR rows x NV vectors of C in registers; per k it loads NV vectors of B's row k and
// broadcasts MR values of A, one FMA per accumulator. The chain per element is the one the header
// defines (fma over increasing k from +0, then * alpha), so the tile shape never shows in the bits.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "core/small_gemm.hpp"

namespace {

constexpr int kW = 8;  // floats per vector
// no standard-library templates here: an inline template instantiated in a file compiled for
// AVX-512 could be the copy the linker keeps for the whole program
constexpr int imin(int a, int b) { return a < b ? a : b; }

#if defined(__AVX512VL__)
constexpr int kMaxNV = 4;
// accumulators + NV loads of B + one broadcast within 32 registers
constexpr int mr_of(int nv) { return nv == 1 ? 16 : nv == 2 ? 12 : nv == 3 ? 8 : 6; }
using Mask = __mmask8;
inline Mask make_mask(int lanes) { return static_cast<__mmask8>((1u << lanes) - 1u); }
inline __m256 load_part(const float* p, Mask m) { return _mm256_maskz_loadu_ps(m, p); }
inline void store_part(float* p, Mask m, __m256 v) { _mm256_mask_storeu_ps(p, m, v); }
#else
constexpr int kMaxNV = 3;
// within 16 registers
constexpr int mr_of(int nv) { return nv == 1 ? 12 : nv == 2 ? 6 : 4; }
using Mask = __m256i;
inline Mask make_mask(int lanes) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
inline __m256 load_part(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
inline void store_part(float* p, Mask m, __m256 v) { _mm256_maskstore_ps(p, m, v); }
#endif

struct TileArgs {
  const float* a;  // A at row i0, k = 0
  int64_t ais, aks;
  const float* b;  // B at row 0, column j0
  int64_t ldb;
  float* c;  // C at row i0, column j0
  int64_t ldc;
  int kb, ke;
  float alpha;
  Mask mask;  // lanes of the last vector (unused when Full)
};

template <int MR, int NV, bool Full>
[[gnu::always_inline]] inline void tile(const TileArgs& t) {
  __m256 acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int k = t.kb; k < t.ke; ++k) {
    const float* b = t.b + k * t.ldb;
    __m256 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = (Full || v < NV - 1) ? _mm256_loadu_ps(b + kW * v) : load_part(b + kW * v, t.mask);
    const float* a = t.a + k * t.aks;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * t.ais);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  const __m256 al = _mm256_set1_ps(t.alpha);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* c = t.c + r * t.ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __m256 x = _mm256_mul_ps(acc[r][v], al);
      if (Full || v < NV - 1)
        _mm256_storeu_ps(c + kW * v, x);
      else
        store_part(c + kW * v, t.mask, x);
    }
  }
}

// rows in [1, R]
template <int NV, bool Full, int R>
inline void tile_rows(int rows, const TileArgs& t) {
  if constexpr (R > 0) {
    if (rows == R)
      tile<R, NV, Full>(t);
    else
      tile_rows<NV, Full, R - 1>(rows, t);
  }
}

template <int NV>
inline void tile_cols(int rows, int last, TileArgs& t) {
  if (last == kW) {
    tile_rows<NV, true, mr_of(NV)>(rows, t);
  } else {
    t.mask = make_mask(last);
    tile_rows<NV, false, mr_of(NV)>(rows, t);
  }
}

inline int64_t run_tiles(const hyperrnn::SmallGemm& g) {
  using hyperrnn::Tri;
  int64_t madds = 0;
  for (int j0 = 0; j0 < g.N; j0 += kMaxNV * kW) {
    const int jb = imin(g.N, j0 + kMaxNV * kW);
    // one row-tile height per column block (its widest tiles'); a tile cut narrower by the
    // triangle keeps it, which its fewer vectors leave room for (mr_of falls with NV)
    const int mr = mr_of((jb - j0 + kW - 1) / kW);
    for (int i0 = 0; i0 < g.M; i0 += mr) {
      const int i1 = imin(g.M, i0 + mr);
      const int je = g.tri == Tri::cols_to_row_end ? imin(jb, (i1 + 15) & ~15) : jb;
      if (je <= j0) continue;
      TileArgs t{g.A + i0 * g.ais, g.ais, g.aks, g.B + j0, g.ldb, g.C + i0 * g.ldc + j0, g.ldc, 0, g.K, g.alpha, {}};
      if (g.tri == Tri::k_to_row_end) t.ke = imin(g.K, i1);
      if (g.tri == Tri::k_from_row_begin) t.kb = imin(g.K, i0);
      const int w = je - j0, nv = (w + kW - 1) / kW, last = w - kW * (nv - 1);
      switch (nv) {
        case 1: tile_cols<1>(i1 - i0, last, t); break;
        case 2: tile_cols<2>(i1 - i0, last, t); break;
        case 3: tile_cols<3>(i1 - i0, last, t); break;
#if defined(__AVX512VL__)
        case 4: tile_cols<4>(i1 - i0, last, t); break;
#endif
        default: break;
      }
      madds += static_cast<int64_t>(i1 - i0) * w * (t.ke - t.kb);
    }
  }
  return madds;
}

}  // namespace
