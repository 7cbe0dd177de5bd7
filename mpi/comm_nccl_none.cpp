// Comm over NCCL in a build without it (HYPERRNN_CUDA=OFF): says so.
#include "core/error.hpp"
#include "mpi/comm_nccl.hpp"

namespace hyperrnn {

bool nccl_built() { return false; }

std::unique_ptr<Comm> make_nccl_comm(Comm&) {
  throw RuntimeError("this build has no NCCL (configure with -DHYPERRNN_CUDA=ON)");
}

}  // namespace hyperrnn
