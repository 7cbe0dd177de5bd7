// gemm<float> against a double-precision evaluation at the shapes the models call, through
// whichever library takes each call (libxsmm for the shapes it has kernels for, OpenBLAS for the
// rest): every flag combination, strided operands (attention's ld = 3C), row counts that are not a
// multiple of libxsmm's 64-row block, long K, beta 0 and 1, alpha != 1 (OpenBLAS).
// Not asserted: that a row's bits do not depend on the call's row count. OpenBLAS does not keep
// that (an NT product of 130 rows and one of its first 7 rows differ in the last bits: its small-
// matrix kernel takes the second), which is why every GEMM's shape is fixed whatever P and T.
// Tolerance per element: |c - ref| <= gamma_K * sum_k |a_ik b_kj| (+ |beta c0| rounding) with
// gamma_K = K u / (1 - K u), u = 2^-24: the standard forward error bound of a K-term float dot
// product in any summation order, with or without FMA.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/blas.hpp"
#include "core/rng.hpp"

using namespace hyperrnn;

namespace {
struct Case {
  bool ta, tb;
  int M, N, K, extra_ld;
  float alpha, beta;
};

std::vector<float> rnd(size_t n, uint32_t seed) {
  CounterRng r(seed, RngPurpose::Init, 0, 0);
  std::vector<float> v(n);
  for (auto& x : v) x = 2.0f * r.uniform() - 1.0f;
  return v;
}

// C (M x N, ldc) = alpha op(A) op(B) + beta C0; returns the number of elements outside the bound
int64_t check(const Case& c, uint32_t seed) {
  const int lda = (c.ta ? c.M : c.K) + c.extra_ld, ldb = (c.tb ? c.K : c.N) + c.extra_ld, ldc = c.N + c.extra_ld;
  const auto A = rnd(static_cast<size_t>(c.ta ? c.K : c.M) * lda, seed), B = rnd(static_cast<size_t>(c.tb ? c.N : c.K) * ldb, seed + 1);
  const auto C0 = rnd(static_cast<size_t>(c.M) * ldc, seed + 2);
  std::vector<float> C = C0;
  gemm<float>(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta, C.data(), ldc);
  const double u = std::ldexp(1.0, -24), gamma = c.K * u / (1 - c.K * u);
  int64_t bad = 0;
  for (int i = 0; i < c.M; ++i)
    for (int j = 0; j < c.N; ++j) {
      double ref = 0, mag = 0;
      for (int k = 0; k < c.K; ++k) {
        const double a = c.ta ? A[static_cast<size_t>(k) * lda + i] : A[static_cast<size_t>(i) * lda + k];
        const double b = c.tb ? B[static_cast<size_t>(j) * ldb + k] : B[static_cast<size_t>(k) * ldb + j];
        ref += a * b;
        mag += std::abs(a * b);
      }
      const double c0 = C0[static_cast<size_t>(i) * ldc + j];
      ref = c.alpha * ref + c.beta * c0;
      const double tol = (gamma + u) * std::abs(c.alpha) * mag + 2 * u * std::abs(c.beta * c0) + 1e-30;
      bad += !(std::abs(C[static_cast<size_t>(i) * ldc + j] - ref) <= tol);
    }
  // the padding between rows is never written
  for (int i = 0; i < c.M; ++i)
    for (int j = c.N; j < ldc; ++j) bad += C[static_cast<size_t>(i) * ldc + j] != C0[static_cast<size_t>(i) * ldc + j];
  return bad;
}
}  // namespace

TEST_CASE("gemm<float> is within the dot-product error bound at the models' shapes", "[gemm]") {
  WARN("small float GEMMs: " << (*small_gemm_library() ? small_gemm_library() : "OpenBLAS only (built without libxsmm)"));
  uint32_t seed = 1;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const auto& [M, N, K] : {std::tuple{1, 10, 8}, {3, 5, 7}, {64, 64, 16}, {50, 8, 50}, {130, 96, 32},
                                    {200, 33, 1}, {70, 64, 1024}, {9, 256, 3000}})
        for (float beta : {0.f, 1.f})
          for (float alpha : {1.f, 0.25f})
            for (int extra : {0, 5}) {
              const Case c{ta, tb, M, N, K, extra, alpha, beta};
              INFO("ta " << ta << " tb " << tb << " M " << M << " N " << N << " K " << K << " beta " << beta << " alpha "
                         << alpha << " ld +" << extra);
              CHECK(check(c, seed += 3) == 0);
            }
}
