// The register-tiled kernel of core/small_gemm.hpp, included by one translation unit per ISA
// (small_gemm_avx512.cpp: AVX-512F/VL, 32 vector registers; small_gemm_avx2.cpp: AVX2, 16), each
// compiled with its own -m flags. Everything here has internal linkage (and it instantiates no
// standard-library template), so the two instantiations cannot be merged by the linker.
//
// A tile holds MR rows x NV vectors of C in registers; per k it loads NV vectors of B's row k and
// broadcasts MR values of A, one FMA per accumulator. The chain per element is the one the header
// defines (fma over increasing k from +0, then * alpha), so neither the tile shape nor the vector
// width ever shows in the bits.
//
// Vectors: the AVX2 path uses 8 floats (ymm). The AVX-512 path uses 16 (zmm) for column blocks
// wider than 8 and ymm for those of at most 8 (a head size of 8 would leave half of each zmm
// idle). On a core with full-width 512-bit FMA units (Zen 5 here, Intel server cores) a zmm tile
// does twice a ymm tile's work per instruction; on one that splits them (Zen 4) it should do the
// same work as two ymm tiles (not measured).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "core/small_gemm.hpp"

namespace {

// no standard-library templates here: an inline template instantiated in a file compiled for
// AVX-512 could be the copy the linker keeps for the whole program
constexpr int imin(int a, int b) { return a < b ? a : b; }

// the ymm operations both paths share; each path adds its own masks (AVX-512VL's k registers, AVX2's
// lane vectors)
struct Ymm {
  using V = __m256;
  static constexpr int kW = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
};

#if defined(__AVX512VL__)
constexpr int kMaxNV = 4;
// accumulators + NV loads of B + one broadcast within 32 registers
constexpr int mr_of(int nv) { return nv == 1 ? 16 : nv == 2 ? 12 : nv == 3 ? 8 : 6; }
struct Vec8 : Ymm {  // ymm with AVX-512VL masks
  using Mask = __mmask8;
  static Mask mask(int lanes) { return static_cast<__mmask8>((1u << lanes) - 1u); }
  static V load_part(const float* p, Mask m) { return _mm256_maskz_loadu_ps(m, p); }
  static void store_part(float* p, Mask m, V v) { _mm256_mask_storeu_ps(p, m, v); }
};
struct Vec16 {  // zmm
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int kW = 16;
  static Mask mask(int lanes) { return static_cast<__mmask16>((1u << lanes) - 1u); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_part(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_part(float* p, Mask m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
};
using Wide = Vec16;
#else
constexpr int kMaxNV = 3;
// within 16 registers
constexpr int mr_of(int nv) { return nv == 1 ? 12 : nv == 2 ? 6 : 4; }
struct Vec8 : Ymm {  // ymm with AVX2 masks
  using Mask = __m256i;
  static Mask mask(int lanes) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
  static V load_part(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static void store_part(float* p, Mask m, V v) { _mm256_maskstore_ps(p, m, v); }
};
using Wide = Vec8;
#endif

// A's rows at a run-time stride each need an address register in the k loop: with 16 of them GCC
// kept the row offsets in vector registers and on the stack, and the broadcasts waited on those
// moves (perf annotate of the zmm 16 x 16 tile). So wide tiles over such an A are at most 8 rows
// high (in cache: P v at 64 x 16 x 64 about 177 GFLOP/s against 142-156); A with unit row stride
// (A^T of a TN product) keeps the full height, its rows being constant displacements from one
// pointer, and so do the narrow ymm tiles, which need their 16 rows of independent chains.
constexpr int kStridedRows = 8;

struct TileArgs {
  const float* a;  // A at row i0, k = 0
  int64_t ais, aks;
  const float* b;  // B at row 0, column j0
  int64_t ldb;
  float* c;  // C at row i0, column j0
  int64_t ldc;
  int kb, ke;
  float alpha;
  int last;  // lanes of the last vector (unused when Full)
};

// Unit: A's row stride is 1 (A^T of a TN product), so its rows are constant displacements
template <class X, int MR, int NV, bool Full, bool Unit>
[[gnu::always_inline]] inline void tile(const TileArgs& t) {
  using V = typename X::V;
  const int64_t ais = Unit ? 1 : t.ais;
  constexpr int kW = X::kW;
  const typename X::Mask mask = X::mask(Full ? 1 : t.last);
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = X::zero();
  for (int k = t.kb; k < t.ke; ++k) {
    const float* b = t.b + k * t.ldb;
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = (Full || v < NV - 1) ? X::load(b + kW * v) : X::load_part(b + kW * v, mask);
    const float* a = t.a + k * t.aks;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const V av = X::bcast(a + r * ais);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = X::fma(av, bv[v], acc[r][v]);
    }
  }
  const V al = X::set1(t.alpha);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* c = t.c + r * t.ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const V x = X::mul(acc[r][v], al);
      if (Full || v < NV - 1)
        X::store(c + kW * v, x);
      else
        X::store_part(c + kW * v, mask, x);
    }
  }
}

// rows in [1, R]
template <class X, int NV, bool Full, bool Unit, int R>
inline void tile_rows(int rows, const TileArgs& t) {
  if constexpr (R > 0) {
    if (rows == R)
      tile<X, R, NV, Full, Unit>(t);
    else
      tile_rows<X, NV, Full, Unit, R - 1>(rows, t);
  }
}

template <class X, int NV>
inline void tile_cols(int rows, TileArgs& t) {
  const bool full = t.last == X::kW;
  if (t.ais == 1) {
    if (full)
      tile_rows<X, NV, true, true, mr_of(NV)>(rows, t);
    else
      tile_rows<X, NV, false, true, mr_of(NV)>(rows, t);
  } else {
    if (full)
      tile_rows<X, NV, true, false, mr_of(NV)>(rows, t);
    else
      tile_rows<X, NV, false, false, mr_of(NV)>(rows, t);
  }
}

// one row tile of w columns (w <= kMaxNV * X::kW) in vectors of X
template <class X>
inline void tile_width(int rows, int w, TileArgs& t) {
  const int nv = (w + X::kW - 1) / X::kW;
  t.last = w - X::kW * (nv - 1);
  switch (nv) {
    case 1: tile_cols<X, 1>(rows, t); break;
    case 2: tile_cols<X, 2>(rows, t); break;
    case 3: tile_cols<X, 3>(rows, t); break;
#if defined(__AVX512VL__)
    case 4: tile_cols<X, 4>(rows, t); break;
#endif
    default: break;
  }
}

inline int64_t run_tiles(const hyperrnn::SmallGemm& g) {
  using hyperrnn::Tri;
  constexpr int kBlock = kMaxNV * Wide::kW;  // columns per block
  int64_t madds = 0;
  for (int j0 = 0; j0 < g.N; j0 += kBlock) {
    const int jb = imin(g.N, j0 + kBlock);
    // narrow blocks (at most 8 columns) in ymm on every path; wider ones in the path's widest vectors
    const bool narrow = jb - j0 <= Vec8::kW;
    // one row-tile height per column block (its widest tiles'); a tile cut narrower by the
    // triangle keeps it, which its fewer vectors leave room for (mr_of falls with NV)
    const int vw = narrow ? Vec8::kW : Wide::kW;
    int mr = mr_of((jb - j0 + vw - 1) / vw);
    if (!narrow && g.ais != 1) mr = imin(mr, kStridedRows);
    for (int i0 = 0; i0 < g.M; i0 += mr) {
      const int i1 = imin(g.M, i0 + mr);
      const int je = g.tri == Tri::cols_to_row_end ? imin(jb, (i1 + 15) & ~15) : jb;
      if (je <= j0) continue;
      TileArgs t{g.A + i0 * g.ais, g.ais, g.aks, g.B + j0, g.ldb, g.C + i0 * g.ldc + j0, g.ldc, 0, g.K, g.alpha, 0};
      if (g.tri == Tri::k_to_row_end) t.ke = imin(g.K, i1);
      if (g.tri == Tri::k_from_row_begin) t.kb = imin(g.K, i0);
      const int w = je - j0;
      if (narrow)
        tile_width<Vec8>(i1 - i0, w, t);
      else
        tile_width<Wide>(i1 - i0, w, t);
      madds += static_cast<int64_t>(i1 - i0) * w * (t.ke - t.kb);
    }
  }
  return madds;
}

}  // namespace
