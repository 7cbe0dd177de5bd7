// The CUDA interface in a build without HYPERRNN_CUDA: no backend, said plainly.
#include <stdexcept>

#include "cuda/device.hpp"

namespace hyperrnn::cuda {

bool built() { return false; }

int visible_devices(std::string* why) {
  if (why) *why = "this build has no CUDA backend (configure with -DHYPERRNN_CUDA=ON)";
  return 0;
}

void use_device(int) { throw std::runtime_error("this build has no CUDA backend (configure with -DHYPERRNN_CUDA=ON)"); }

std::string uuid(int) { return ""; }

std::string describe(int) { return "no CUDA backend"; }

}  // namespace hyperrnn::cuda
