// core/small_gemm's AVX-512VL path (this file is compiled with -mavx512f -mavx512vl -mfma).
#include "core/small_gemm_kernel.hpp"

namespace hyperrnn::detail {
int64_t small_gemm_avx512(const SmallGemm& g) { return run_tiles(g); }
}  // namespace hyperrnn::detail
