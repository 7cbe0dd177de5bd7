// CBLAS binding (OpenBLAS on Debian); double precision is used by the gradient checks.
#include "core/blas.hpp"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <vector>

#if HYPERRNN_LIBXSMM
#include <libxsmm.h>
#endif

namespace hyperrnn {

namespace {
std::atomic<bool> g_on{false};
std::atomic<int64_t> g_flops{0}, g_ns{0}, g_calls{0};
std::atomic<int64_t> g_phase_total_ns[kPhases], g_phase_gemm_ns[kPhases], g_phase_gemm_flops[kPhases];
thread_local Phase t_phase = Phase::Model;
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
void add_call(int64_t flops, int64_t dt) {
  const int p = static_cast<int>(t_phase);
  g_flops.fetch_add(flops, std::memory_order_relaxed);
  g_ns.fetch_add(dt, std::memory_order_relaxed);
  g_calls.fetch_add(1, std::memory_order_relaxed);
  g_phase_gemm_ns[p].fetch_add(dt, std::memory_order_relaxed);
  g_phase_gemm_flops[p].fetch_add(flops, std::memory_order_relaxed);
}
struct Count {  // adds one call's operations and time when it goes out of scope (accounting on)
  int64_t flops;
  bool on = g_on.load(std::memory_order_relaxed);
  int64_t t0 = on ? now_ns() : 0;
  ~Count() {
    if (on) add_call(flops, now_ns() - t0);
  }
};
}  // namespace

void set_accounting(bool on) { g_on = on; }
bool accounting() { return g_on.load(std::memory_order_relaxed); }
int64_t accounting_now_ns() { return now_ns(); }
void account_gemm_call(int64_t flops, int64_t start_ns) { add_call(flops, now_ns() - start_ns); }

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

#if HYPERRNN_LIBXSMM
namespace {
// libxsmm is column-major: row-major C (M x N) = op(A) op(B) is C^T = op(B)^T op(A)^T, so A's
// transpose maps to libxsmm's TRANS_B. It generates no kernels with TRANS_A (row-major B
// transposed): such a B (N x K, at most kMaxTransposed floats) is first transposed into a thread's
// scratch, an exact copy. Rows of C go in blocks of at most 64 (libxsmm's small kernels).
// alpha must be 1 and beta 0 or 1 (libxsmm's kernels);
// anything else, or a shape libxsmm declines, goes to OpenBLAS. Every choice depends on the shape
// alone, which is the same for every rank and thread count.
constexpr int64_t kMaxTransposed = 1 << 18;
constexpr int kRowBlock = 64;

// libxsmm_smmdispatch looks its registry up on every call (a hash and a lock), which costs more
// than the GatingTransformer's 1 x 8 x 10 products themselves: each thread keeps the kernels it
// has used (direct-mapped by shape; a miss asks libxsmm, which may answer "none").
libxsmm_smmfunction kernel(int flags, int m, int n, int k, int lda, int ldb, int ldc, float beta) {
  struct Entry {
    int key[8];
    libxsmm_smmfunction fn;
    bool valid;
  };
  thread_local Entry cache[256] = {};
  const int key[8] = {flags, m, n, k, lda, ldb, ldc, beta != 0.f ? 1 : 0};
  uint64_t h = 1469598103934665603ULL;
  for (int v : key) h = (h ^ static_cast<uint32_t>(v)) * 1099511628211ULL;
  Entry& e = cache[h % 256];
  if (e.valid && std::memcmp(e.key, key, sizeof key) == 0) return e.fn;
  const libxsmm_blasint xm = m, xn = n, xk = k, xa = lda, xb = ldb, xc = ldc;
  const float one = 1.f;
  e.fn = libxsmm_smmdispatch(xm, xn, xk, &xa, &xb, &xc, &one, &beta, &flags, nullptr);
  std::memcpy(e.key, key, sizeof key);
  e.valid = true;
  return e.fn;
}

bool xsmm_sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                float beta, float* C, int ldc) {
  // libxsmm vectorises along C's columns (its m): with fewer than 16 (the routers' E scores per
  // token, the GatingTransformer's 8-10) or fewer than 4 rows OpenBLAS was faster (measured in the
  // pilf and gauss-moe steps: their routing and PILF phases slowed down by 20-30%)
  if (alpha != 1.f || (beta != 0.f && beta != 1.f) || K < 16 || N < 16 || M < 32) return false;
  static const bool ready = [] {
    libxsmm_init();
    return true;
  }();
  (void)ready;
  thread_local std::vector<float> bt;
  const float* b = B;
  libxsmm_blasint xa = ldb;
  if (tb) {
    // the copy costs N K loads and stores against the product's M N K: worth it from 64 rows on
    // (the GatingTransformer's and meta-training's 4-16-row NT products ran 30% slower with it)
    if (static_cast<int64_t>(N) * K > kMaxTransposed || M < 64) return false;
    bt.resize(static_cast<size_t>(N) * K);
    for (int k = 0; k < K; ++k)
      for (int n = 0; n < N; ++n) bt[static_cast<size_t>(k) * N + n] = B[static_cast<int64_t>(n) * ldb + k];
    b = bt.data();
    xa = N;
  }
  const int flags = ta ? LIBXSMM_GEMM_FLAG_TRANS_B : 0;
  const int mb = std::min(M, kRowBlock), mt = M % mb;
  const libxsmm_smmfunction kern = kernel(flags, N, mb, K, static_cast<int>(xa), lda, ldc, beta);
  if (!kern) return false;
  libxsmm_smmfunction tail = nullptr;
  if (mt) {
    tail = kernel(flags, N, mt, K, static_cast<int>(xa), lda, ldc, beta);
    if (!tail) return false;
  }
  for (int r0 = 0; r0 < M; r0 += mb) {
    const float* a = ta ? A + r0 : A + static_cast<int64_t>(r0) * lda;  // rows r0.. of op(A)
    (r0 + mb <= M ? kern : tail)(b, a, C + static_cast<int64_t>(r0) * ldc);
  }
  return true;
}
}  // namespace
#endif

const char* small_gemm_library() {
#if HYPERRNN_LIBXSMM
  return "libxsmm " LIBXSMM_VERSION;
#else
  return "";
#endif
}

template <>
void gemm<float>(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  const Count count{2LL * M * N * K};
#if HYPERRNN_LIBXSMM
  if (xsmm_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)) return;
#endif
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

double measure_sgemm_gflops(int n, int reps) {  // OpenBLAS's large square SGEMM (the peak as defined)
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size());
  auto call = [&] { cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n); };
  call();  // warm up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * n * static_cast<double>(n) * n / best * 1e-9;
}

}  // namespace hyperrnn
