// --device cuda: one GPU per rank, chosen by the rank's place among the ranks of its node, agreed
// on collectively (every rank ends with the same one line and status 2 when any rank has no GPU of
// its own).
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "app/commands.hpp"
#include "core/error.hpp"
#include "cuda/device.hpp"

namespace hyperrnn {

namespace {
constexpr std::size_t kName = 256, kUuid = 40;
std::string host_name() {
  char host[kName] = {};
  gethostname(host, kName - 1);
  return host;
}
}  // namespace

void attach_device(Comm& comm, const RunConfig& cfg) {
  if (cfg.device != "cuda") return;
  const int P = comm.size(), me = comm.rank();
  // node-local rank and size from the host names (collective)
  const std::string host = host_name();
  std::vector<char> mine(kName, 0), hosts(kName * static_cast<std::size_t>(P), 0);
  std::memcpy(mine.data(), host.data(), std::min(host.size(), kName - 1));
  comm.allgather_bytes(mine.data(), kName, hosts.data());
  int local = 0, local_size = 0;
  for (int r = 0; r < P; ++r)
    if (std::strncmp(hosts.data() + kName * r, mine.data(), kName) == 0) {
      ++local_size;
      if (r < me) ++local;
    }
  // this rank's GPU: the local rank's device, or the only one it sees (a launcher that gives each
  // rank its own CUDA_VISIBLE_DEVICES); no collective may throw before the UUID exchange
  std::string why;
  const int n = cuda::visible_devices(&why);
  const int index = n >= local_size ? local : (n >= 1 ? local % n : -1);
  std::vector<char> id(kUuid, 0), ids(kUuid * static_cast<std::size_t>(P), 0);
  if (index >= 0) {
    const std::string u = cuda::uuid(index);
    std::memcpy(id.data(), u.data(), std::min(u.size(), kUuid - 1));
  }
  comm.allgather_bytes(id.data(), kUuid, ids.data());
  collective(comm, [&] {
    if (n == 0) throw UsageError("--device cuda: no GPU visible on " + host + " (" + why + ")");
    int sharing = 0;  // ranks of this node on this rank's GPU
    for (int r = 0; r < P; ++r)
      if (std::strncmp(hosts.data() + kName * r, mine.data(), kName) == 0 &&
          std::strncmp(ids.data() + kUuid * r, id.data(), kUuid) == 0)
        ++sharing;
    if (sharing > 1 || id[0] == 0)
      throw UsageError("--device cuda: " + host + " has " + std::to_string(n) + " GPU(s) visible to its " +
                       std::to_string(local_size) + " ranks; one GPU per rank: start at most as many ranks per node as GPUs");
    try {
      cuda::use_device(index);
    } catch (const std::exception& e) {
      throw UsageError(std::string("--device cuda: ") + e.what());
    }
    throw UsageError("--device cuda: found " + cuda::describe(index) +
                     ", but the training step does not run on a GPU yet: this build has the CUDA kernels and their "
                     "tests only (docs/gpu.md); use --device cpu");
  });
}

}  // namespace hyperrnn
