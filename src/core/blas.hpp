// Row-major GEMM through CBLAS for float and double: the only way the code multiplies matrices.
// C(M,N) = alpha * op(A) op(B) + beta * C, op = transpose when the flag is set.
#pragma once

namespace hyperrnn {

template <class T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
          const T* B, int ldb, T beta, T* C, int ldc);

// Measured single-precision GEMM rate of this machine in GFLOP/s (square n x n, best of reps).
double measure_sgemm_gflops(int n, int reps);

}  // namespace hyperrnn
