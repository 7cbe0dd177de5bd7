// Row-major GEMM through CBLAS for float and double: the only way the code multiplies matrices.
// C(M,N) = alpha * op(A) op(B) + beta * C, op = transpose when the flag is set.
#pragma once
#include <cstdint>

namespace hyperrnn {

template <class T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
          const T* B, int ldb, T beta, T* C, int ldc);

// Every gemm call is counted: 2 M N K floating-point operations and its wall time, summed over all
// threads of the process since the last reset (for the benchmark's phase split and the FLOP counter's
// test; two clock reads per call).
struct GemmAccount {
  double flops = 0.0, seconds = 0.0;
  int64_t calls = 0;
};
GemmAccount gemm_account();
void reset_gemm_account();

// Measured single-precision GEMM rate of this machine in GFLOP/s (square n x n, best of reps).
double measure_sgemm_gflops(int n, int reps);

}  // namespace hyperrnn
