// HYPERRNN_HOST_DEVICE marks an inline function that the CPU code and the CUDA kernels share
// (nvcc compiles it for both; the host compiler sees a plain inline function).
#pragma once

#if defined(__CUDACC__)
#define HYPERRNN_HOST_DEVICE __host__ __device__
#else
#define HYPERRNN_HOST_DEVICE
#endif
