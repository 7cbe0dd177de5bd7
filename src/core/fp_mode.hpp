// The thread's treatment of subnormal floating-point numbers (x86-64 MXCSR: FTZ flushes subnormal
// results to zero, DAZ reads subnormal inputs as zero). A run sets it once from --denormals on its
// main thread; the thread pool hands the caller's mode to its workers with every parallel region,
// so each value of a run is computed under one mode whatever the thread count. Elsewhere than
// x86-64 these are no-ops (the mode stays IEEE gradual underflow).
#pragma once
#include <cstdint>

namespace hyperrnn {

uint32_t fp_mode();            // the calling thread's control word (0 where there is none)
void set_fp_mode(uint32_t m);  // as read by fp_mode() on some thread
void set_flush_denormals(bool flush);
bool flushing_denormals();

}  // namespace hyperrnn
