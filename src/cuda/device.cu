// The CUDA interface in a HYPERRNN_CUDA build: the runtime's device queries.
#include <cuda_runtime.h>

#include <cstdio>
#include <stdexcept>
#include <string>

#include "cuda/device.hpp"

namespace hyperrnn::cuda {

bool built() { return true; }

int visible_devices(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string("CUDA: ") + cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky error
    return 0;
  }
  if (n == 0 && why) *why = "CUDA: no CUDA-capable device is detected";
  return n;
}

void use_device(int index) {
  const cudaError_t e = cudaSetDevice(index);
  if (e != cudaSuccess)
    throw std::runtime_error("cudaSetDevice(" + std::to_string(index) + "): " + cudaGetErrorString(e));
}

std::string uuid(int index) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, index) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  std::string s;
  char hex[3];
  for (int i = 0; i < 16; ++i) {
    std::snprintf(hex, sizeof hex, "%02x", static_cast<unsigned char>(p.uuid.bytes[i]));
    s += hex;
  }
  return s;
}

std::string describe(int index) {
  cudaDeviceProp p{};
  const cudaError_t e = cudaGetDeviceProperties(&p, index);
  if (e != cudaSuccess) return std::string("device ") + std::to_string(index) + " (" + cudaGetErrorString(e) + ")";
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s, %.1f GiB, sm_%d%d", p.name, static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024 * 1024),
                p.major, p.minor);
  return buf;
}

}  // namespace hyperrnn::cuda
