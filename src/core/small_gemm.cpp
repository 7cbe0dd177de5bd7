// core/small_gemm: path choice and the scalar path (the same fma chains, one element at a time).
#include "core/small_gemm.hpp"

#include <algorithm>
#include <cmath>

#include "core/blas.hpp"

namespace hyperrnn {

namespace {
int64_t small_gemm_scalar(const SmallGemm& g) {
  int64_t madds = 0;
  for (int i = 0; i < g.M; ++i) {
    // a tile of one row: the same ranges as a vector path's tile [i, i + 1)
    const int je = g.tri == Tri::cols_to_row_end ? std::min(g.N, (i + 1 + 15) & ~15) : g.N;
    const int kb = g.tri == Tri::k_from_row_begin ? std::min(g.K, i) : 0;
    const int ke = g.tri == Tri::k_to_row_end ? std::min(g.K, i + 1) : g.K;
    const float* a = g.A + i * g.ais;
    float* c = g.C + i * g.ldc;
    for (int j = 0; j < je; ++j) {
      float acc = 0.f;
      for (int k = kb; k < ke; ++k) acc = std::fma(a[k * g.aks], g.B[k * g.ldb + j], acc);
      c[j] = acc * g.alpha;
    }
    madds += static_cast<int64_t>(je) * (ke - kb);
  }
  return madds;
}

SmallGemmPath best_path() {
  static const SmallGemmPath p = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
      return SmallGemmPath::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SmallGemmPath::avx2;
    return SmallGemmPath::scalar;
  }();
  return p;
}
}  // namespace

bool small_gemm_available(SmallGemmPath path) {
  switch (path) {
    case SmallGemmPath::automatic:
    case SmallGemmPath::scalar: return true;
    case SmallGemmPath::avx2: return best_path() != SmallGemmPath::scalar;
    case SmallGemmPath::avx512: return best_path() == SmallGemmPath::avx512;
  }
  return false;
}

const char* small_gemm_path_name(SmallGemmPath path) {
  switch (path == SmallGemmPath::automatic ? best_path() : path) {
    case SmallGemmPath::avx512: return "avx512";
    case SmallGemmPath::avx2: return "avx2";
    default: return "scalar";
  }
}

void small_gemm(const SmallGemm& g, SmallGemmPath path) {
  if (g.M <= 0 || g.N <= 0) return;
  const bool on = accounting();
  const int64_t t0 = on ? accounting_now_ns() : 0;
  int64_t madds = 0;
  switch (path == SmallGemmPath::automatic ? best_path() : path) {
    case SmallGemmPath::avx512: madds = detail::small_gemm_avx512(g); break;
    case SmallGemmPath::avx2: madds = detail::small_gemm_avx2(g); break;
    default: madds = small_gemm_scalar(g); break;
  }
  if (on) account_gemm_call(2 * madds, t0);
}

}  // namespace hyperrnn
