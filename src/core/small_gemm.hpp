// Register-tiled small float products for the attention's per-head matrices (T x T by head size),
// where OpenBLAS's per-call packing and dispatch cost more than the arithmetic (36-46 GFLOP/s at
// 50 x 50 x 8 and 64 x 64 x 16, docs/performance.md).
//
//   C[i][j] = alpha * sum_{k in [kb, ke)} a(i, k) * B[k * ldb + j],   a(i, k) = A[i * ais + k * aks]
//
// B's rows are contiguous (ldb >= N); A is read through two strides, so A, A^T and any view of
// them come at the same price (an NT product takes B as an explicit transposed copy). beta is 0.
//
// Every element is one fused-multiply-add chain over k in increasing order from +0, then one
// rounding product with alpha: the AVX-512, AVX2 and scalar (std::fma) paths give the same bits,
// whatever their tile shapes, and a GPU kernel following the same chain would too.
//
// Triangular ranges (the causal attention) skip work by row tile; the bits of the entries that
// are needed do not depend on the tile: a chain's skipped terms are exact zeros (the operand is
// zero there), and adding a zero product to a chain that starts at +0 never changes it (the chain
// cannot become -0 under round-to-nearest).
#pragma once
#include <cstdint>

namespace hyperrnn {

enum class Tri : int {
  none,
  cols_to_row_end,   // rows need columns j <= i only (scores q k^T): each row tile [i0, i1) computes
                     // columns [0, min(N, round_up(i1, 16))), whole 16-column groups so that a
                     // vectorised softmax reading up to the next multiple of 16 sees this call's values
  k_to_row_end,      // a(i, k) == 0 for k > i (P v, dZ k): tile [i0, i1) sums k in [0, min(K, i1))
  k_from_row_begin,  // a(i, k) == 0 for k < i (P^T dO, dZ^T q): tile [i0, i1) sums k in [i0, K)
};

struct SmallGemm {
  int M = 0, N = 0, K = 0;
  float alpha = 1.f;
  const float* A = nullptr;
  int64_t ais = 0, aks = 0;
  const float* B = nullptr;
  int64_t ldb = 0;
  float* C = nullptr;
  int64_t ldc = 0;
  Tri tri = Tri::none;
};

enum class SmallGemmPath : int { automatic, avx512, avx2, scalar };

// Runs g on the best path this CPU has (automatic) or on the one named (tests); with the GEMM
// accounting on (core/blas.hpp) it counts 2 flops per multiply-add the chosen path performed.
void small_gemm(const SmallGemm& g, SmallGemmPath path = SmallGemmPath::automatic);
bool small_gemm_available(SmallGemmPath path);
const char* small_gemm_path_name(SmallGemmPath path);  // the automatic path's name when automatic

namespace detail {
// One path's kernel; returns the multiply-adds it performed.
int64_t small_gemm_avx512(const SmallGemm& g);
int64_t small_gemm_avx2(const SmallGemm& g);
}  // namespace detail

}  // namespace hyperrnn
