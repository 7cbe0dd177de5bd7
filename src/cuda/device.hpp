// The CUDA backend's host-side interface (issue 19), callable from every build: in a build
// without HYPERRNN_CUDA, built() is false and the rest reports that there is no backend.
// What runs on a GPU so far: the kernels of kernels.hpp and cuBLAS GEMMs, tested against the CPU
// ops; the training step itself does not run on a GPU yet (docs/gpu.md).
#pragma once
#include <string>

namespace hyperrnn::cuda {

bool built();  // this build has the CUDA backend (-DHYPERRNN_CUDA=ON)

// GPUs this process can use (after CUDA_VISIBLE_DEVICES); 0 with CUDA's reason in *why when none
// (no driver, no device, a driver older than the runtime).
int visible_devices(std::string* why);

// Makes device `index` this process's current device; throws std::runtime_error on failure.
void use_device(int index);

// The device's UUID as 32 hex digits (two ranks that print the same one share a GPU).
std::string uuid(int index);

// "NVIDIA H200, 139.8 GiB, sm_90" for device `index`.
std::string describe(int index);

}  // namespace hyperrnn::cuda
