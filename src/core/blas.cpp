// CBLAS binding (OpenBLAS on Debian); double precision is used by the gradient checks.
#include "core/blas.hpp"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

namespace hyperrnn {

namespace {
std::atomic<int64_t> g_flops{0}, g_ns{0}, g_calls{0};
struct Count {  // adds one call's operations and time when it goes out of scope
  int64_t flops;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  ~Count() {
    g_flops.fetch_add(flops, std::memory_order_relaxed);
    g_ns.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count(),
                   std::memory_order_relaxed);
    g_calls.fetch_add(1, std::memory_order_relaxed);
  }
};
}  // namespace

GemmAccount gemm_account() {
  return {static_cast<double>(g_flops.load()), static_cast<double>(g_ns.load()) * 1e-9, g_calls.load()};
}

void reset_gemm_account() {
  g_flops = 0;
  g_ns = 0;
  g_calls = 0;
}

template <>
void gemm<float>(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  const Count count{2LL * M * N * K};
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm<double>(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda,
                  const double* B, int ldb, double beta, double* C, int ldc) {
  if (M == 0 || N == 0) return;
  const Count count{2LL * M * N * K};
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, alpha, A, lda, B, ldb, beta, C, ldc);
}

double measure_sgemm_gflops(int n, int reps) {
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size());
  gemm<float>(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);  // warm up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    gemm<float>(false, false, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * n * static_cast<double>(n) * n / best * 1e-9;
}

}  // namespace hyperrnn
