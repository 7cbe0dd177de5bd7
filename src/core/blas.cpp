// CBLAS binding (OpenBLAS on Debian); double precision is used by the gradient checks.
#include "core/blas.hpp"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

namespace hyperrnn {

namespace {
std::atomic<bool> g_on{false};
std::atomic<int64_t> g_flops{0}, g_ns{0}, g_calls{0};
std::atomic<int64_t> g_phase_total_ns[kPhases], g_phase_gemm_ns[kPhases], g_phase_gemm_flops[kPhases];
thread_local Phase t_phase = Phase::Model;
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
struct Count {  // adds one call's operations and time when it goes out of scope (accounting on)
  int64_t flops;
  bool on = g_on.load(std::memory_order_relaxed);
  int64_t t0 = on ? now_ns() : 0;
  ~Count() {
    if (!on) return;
    const int64_t dt = now_ns() - t0;
    const int p = static_cast<int>(t_phase);
    g_flops.fetch_add(flops, std::memory_order_relaxed);
    g_ns.fetch_add(dt, std::memory_order_relaxed);
    g_calls.fetch_add(1, std::memory_order_relaxed);
    g_phase_gemm_ns[p].fetch_add(dt, std::memory_order_relaxed);
    g_phase_gemm_flops[p].fetch_add(flops, std::memory_order_relaxed);
  }
};
}  // namespace

void set_accounting(bool on) { g_on = on; }

GemmAccount gemm_account() {
  return {static_cast<double>(g_flops.load()), static_cast<double>(g_ns.load()) * 1e-9, g_calls.load()};
}

void reset_gemm_account() {
  g_flops = 0;
  g_ns = 0;
  g_calls = 0;
  for (int p = 0; p < kPhases; ++p) g_phase_total_ns[p] = g_phase_gemm_ns[p] = g_phase_gemm_flops[p] = 0;
}

PhaseAccount phase_account() {
  PhaseAccount a;
  for (int p = 0; p < kPhases; ++p) {
    a.total_s[p] = static_cast<double>(g_phase_total_ns[p].load()) * 1e-9;
    a.gemm_s[p] = static_cast<double>(g_phase_gemm_ns[p].load()) * 1e-9;
    a.gemm_flops[p] = static_cast<double>(g_phase_gemm_flops[p].load());
  }
  return a;
}

Phase current_phase() { return t_phase; }
void set_current_phase(Phase p) { t_phase = p; }

PhaseScope::PhaseScope(Phase p) : prev_(t_phase), p_(p), t0_ns_(g_on.load(std::memory_order_relaxed) ? now_ns() : -1) {
  t_phase = p;
}

PhaseScope::~PhaseScope() {
  if (prev_ != p_ && t0_ns_ >= 0) g_phase_total_ns[static_cast<int>(p_)].fetch_add(now_ns() - t0_ns_, std::memory_order_relaxed);
  t_phase = prev_;
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
