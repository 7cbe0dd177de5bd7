// core/small_gemm's AVX2 path (this file is compiled with -mavx2 -mfma).
#include "core/small_gemm_kernel.hpp"

namespace hyperrnn::detail {
int64_t small_gemm_avx2(const SmallGemm& g) { return run_tiles(g); }
}  // namespace hyperrnn::detail
