// Row-major GEMM through CBLAS for float and double: how the code multiplies matrices, except the
// float attention's per-head products (core/small_gemm.hpp).
// C(M,N) = alpha * op(A) op(B) + beta * C, op = transpose when the flag is set.
#pragma once
#include <cstdint>

namespace hyperrnn {

template <class T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
          const T* B, int ldb, T beta, T* C, int ldc);
// The library that takes the float GEMMs it has kernels for before OpenBLAS ("libxsmm 1.17"), or
// "" when the build has none (CMake option HYPERRNN_LIBXSMM).
const char* small_gemm_library();

// With accounting on (bench, the FLOP counter's test; off by default, so that a training step pays
// nothing), every gemm call is counted: 2 M N K floating-point operations and its wall time, summed
// over all threads of the process since the last reset.
struct GemmAccount {
  double flops = 0.0, seconds = 0.0;
  int64_t calls = 0;
};
void set_accounting(bool on);
bool accounting();
// Adds one call of another GEMM kernel (core/small_gemm) to the account: its operations, and the
// time since start_ns (a steady-clock reading from accounting_now_ns()).
int64_t accounting_now_ns();
void account_gemm_call(int64_t flops, int64_t start_ns);
GemmAccount gemm_account();
void reset_gemm_account();  // also resets the phase account

// The benchmark's phase split: a PhaseScope marks the work of its lifetime on the calling thread
// (the thread pool hands the caller's phase on to the items of a region) and adds its wall time to
// the phase's total, once per outermost scope of that phase; every gemm adds its time and operations
// to the phase of the thread that runs it. At one thread (the benchmark's configuration) both are
// the step's wall time; at more, totals are the scopes' wall time, GEMM figures thread-seconds.
enum class Phase : int { Model = 0, Attention = 1, Routing = 2, Recurrence = 3, Pilf = 4 };
constexpr int kPhases = 5;
struct PhaseAccount {
  double total_s[kPhases] = {};  // time inside each phase's scopes (Model: unused)
  double gemm_s[kPhases] = {};   // GEMM time and operations while the thread was in each phase
  double gemm_flops[kPhases] = {};
};
PhaseAccount phase_account();
Phase current_phase();
void set_current_phase(Phase p);
class PhaseScope {
 public:
  explicit PhaseScope(Phase p);
  ~PhaseScope();
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  Phase prev_, p_;
  int64_t t0_ns_;
};

// Measured single-precision GEMM rate of this machine in GFLOP/s (square n x n, best of reps).
double measure_sgemm_gflops(int n, int reps);

}  // namespace hyperrnn
