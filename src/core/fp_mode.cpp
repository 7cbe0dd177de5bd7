// MXCSR access for the subnormal mode (fp_mode.hpp).
#include "core/fp_mode.hpp"

#if defined(__x86_64__) || defined(__SSE2__)
#include <xmmintrin.h>
#define HYPERRNN_HAVE_MXCSR 1
#endif

namespace hyperrnn {

#ifdef HYPERRNN_HAVE_MXCSR
namespace {
constexpr uint32_t kFtzDaz = 0x8040u;  // FTZ (bit 15) | DAZ (bit 6)
}
uint32_t fp_mode() { return _mm_getcsr(); }
void set_fp_mode(uint32_t m) {
  if (_mm_getcsr() != m) _mm_setcsr(m);
}
void set_flush_denormals(bool flush) {
  const uint32_t m = _mm_getcsr();
  _mm_setcsr(flush ? (m | kFtzDaz) : (m & ~kFtzDaz));
}
bool flushing_denormals() { return (_mm_getcsr() & kFtzDaz) == kFtzDaz; }
#else
uint32_t fp_mode() { return 0; }
void set_fp_mode(uint32_t) {}
void set_flush_denormals(bool) {}
bool flushing_denormals() { return false; }
#endif

}  // namespace hyperrnn
