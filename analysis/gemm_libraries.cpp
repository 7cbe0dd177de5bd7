// OpenBLAS against libxsmm (Debian's libxsmm-dev 1.17, JIT small-GEMM kernels) at the GEMM shapes
// of hyperrnn's benchmark steps (the per-call census in docs/performance.md), one thread, float.
// Not part of the build: a measurement for the choice of BLAS. Build and run:
//   g++ -O2 -std=c++20 analysis/gemm_libraries.cpp -o /tmp/gemm_libraries \
//       /usr/lib/libxsmmnoblas.a /usr/lib/libxsmm.a -lopenblas -lpthread -ldl -lm && /tmp/gemm_libraries
// Shapes are row-major C (M x N) = op(A) op(B) as hyperrnn's gemm calls them (ta, tb). libxsmm is
// column-major: C^T = op(B)^T op(A)^T, so NN maps to no flag, NT (B transposed) to TRANS_A, TN (A
// transposed) to TRANS_B; a shape whose kernel libxsmm does not generate is reported as such. Rows
// of large M are cut into blocks of 64 (libxsmm's small kernels); every result is checked against
// OpenBLAS's (relative Frobenius error <= 1e-5).
#include <cblas.h>
#include <libxsmm.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {
struct Shape {
  const char* what;
  bool ta, tb;
  int M, N, K;
  float beta;
};

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

template <class F>
double rate(F&& f, double flops) {  // GFLOP/s: median of 5 timings of >= 50 ms each
  int reps = 1;
  for (;;) {
    const double t0 = now();
    for (int r = 0; r < reps; ++r) f();
    if (now() - t0 > 0.05) break;
    reps *= 2;
  }
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) {
    const double t0 = now();
    for (int r = 0; r < reps; ++r) f();
    t.push_back((now() - t0) / reps);
  }
  std::sort(t.begin(), t.end());
  return flops / t[2] * 1e-9;
}
}  // namespace

int main() {
  openblas_set_num_threads(1);
  libxsmm_init();
  const Shape shapes[] = {
      {"ViT attention scores q k^T (per head)", false, true, 50, 50, 8, 0.f},
      {"ViT attention p v", false, false, 50, 8, 50, 0.f},
      {"ViT attention dv = p^T dy", true, false, 50, 8, 50, 0.f},
      {"MQAR attention scores", false, true, 64, 64, 16, 0.f},
      {"MQAR attention p v", false, false, 64, 16, 64, 0.f},
      {"MQAR attention dv", true, false, 64, 16, 64, 0.f},
      {"GatingTransformer query x history", false, true, 1, 10, 8, 0.f},
      {"GatingTransformer p x history", false, false, 1, 8, 10, 0.f},
      {"ViT qkv linear (one shard)", false, true, 1600, 96, 32, 1.f},
      {"ViT qkv dx", false, false, 1600, 32, 96, 0.f},
      {"ViT qkv dw", true, false, 96, 32, 1600, 1.f},
      {"ViT-256 expert fc1", false, true, 6400, 256, 32, 1.f},
      {"ViT-256 expert fc2", false, true, 6400, 32, 256, 1.f},
      {"ViT-256 expert fc2 dx", false, false, 6400, 256, 32, 0.f},
      {"ViT-256 expert fc1 dw", true, false, 256, 32, 6400, 1.f},
      {"MQAR expert fc1 (1024 rows)", false, true, 1024, 64, 64, 1.f},
      {"MQAR expert dw", true, false, 64, 64, 1024, 1.f},
  };
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::printf("%-38s %4s %6s %5s %5s  %10s %10s  %s\n", "shape", "op", "M", "N", "K", "OpenBLAS", "libxsmm", "libxsmm/OpenBLAS");
  for (const Shape& s : shapes) {
    const int lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N, ldc = s.N;
    std::vector<float> A(static_cast<size_t>(s.M) * s.K), B(static_cast<size_t>(s.K) * s.N), C(static_cast<size_t>(s.M) * s.N),
        C2(C.size());
    for (auto& x : A) x = u(gen);
    for (auto& x : B) x = u(gen);
    const double flops = 2.0 * s.M * s.N * s.K;
    const float alpha = 1.f;
    auto blas = [&] {
      cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans, s.M, s.N, s.K, 1.f,
                  A.data(), lda, B.data(), ldb, s.beta, C.data(), ldc);
    };
    const double r_blas = rate(blas, flops);
    // libxsmm: C^T (N x M) = op'(B) op'(A); rows of C in blocks of at most 64 (for ta, A's columns)
    const int flags = (s.tb ? LIBXSMM_GEMM_FLAG_TRANS_A : 0) | (s.ta ? LIBXSMM_GEMM_FLAG_TRANS_B : 0);
    const int mb = s.M < 64 ? s.M : 64;
    const libxsmm_blasint m = s.N, n = mb, k = s.K, xa = ldb, xb = lda, xc = ldc;
    const libxsmm_smmfunction kern = libxsmm_smmdispatch(m, n, k, &xa, &xb, &xc, &alpha, &s.beta, &flags, nullptr);
    const int mt = s.M % mb;
    libxsmm_smmfunction tail = nullptr;
    if (mt) {
      const libxsmm_blasint nt = mt;
      tail = libxsmm_smmdispatch(m, nt, k, &xa, &xb, &xc, &alpha, &s.beta, &flags, nullptr);
    }
    if (!kern || (mt && !tail)) {
      std::printf("%-38s %2s%2s %6d %5d %5d  %10.1f %10s\n", s.what, s.ta ? "T" : "N", s.tb ? "T" : "N", s.M, s.N, s.K, r_blas,
                  "no kernel");
      continue;
    }
    auto xsmm = [&] {
      for (int r0 = 0; r0 < s.M; r0 += mb) {
        const float* a = s.ta ? A.data() + r0 : A.data() + static_cast<size_t>(r0) * lda;  // rows r0.. of op(A)
        (r0 + mb <= s.M ? kern : tail)(B.data(), a, C2.data() + static_cast<size_t>(r0) * ldc);
      }
    };
    // correctness against OpenBLAS (beta = 1 accumulates: compare one call from zero)
    std::fill(C.begin(), C.end(), 0.f);
    std::fill(C2.begin(), C2.end(), 0.f);
    blas();
    xsmm();
    double num = 0, den = 0;
    for (size_t i = 0; i < C.size(); ++i) {
      num += (C[i] - C2[i]) * double(C[i] - C2[i]);
      den += C[i] * double(C[i]);
    }
    const double err = std::sqrt(num / (den > 0 ? den : 1));
    const double r_x = rate(xsmm, flops);
    std::printf("%-38s %2s%2s %6d %5d %5d  %10.1f %10.1f  %.2f%s\n", s.what, s.ta ? "T" : "N", s.tb ? "T" : "N", s.M, s.N, s.K,
                r_blas, r_x, r_x / r_blas, err <= 1e-5 ? "" : "  (WRONG RESULT)");
  }
  libxsmm_finalize();
}
