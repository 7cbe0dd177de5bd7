// Collective error agreement: a usage error found on some ranks becomes the same error on every
// rank, so all exit with status 2 and none waits forever in a collective the others never reach.
#include <cstdint>

#include "app/commands.hpp"
#include "core/error.hpp"
#include "parallel/layout.hpp"

namespace hyperrnn {

void collective(Comm& comm, const std::function<void()>& fn, bool root_only) {
  std::string err;
  if (!root_only || comm.rank() == 0) {
    try {
      fn();
    } catch (const UsageError& e) {
      err = e.what();
    }
  }
  int who = -1;
  err = first_failure(comm, err, &who);
  if (who < 0) return;
  throw UsageError(root_only || who == 0 ? err : err + " (on rank " + std::to_string(who) + ")");
}

void check_same_everywhere(Comm& comm, const std::string& what) {
  if (comm.size() == 1) return;
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the effective configuration
  for (unsigned char ch : what) h = (h ^ ch) * 1099511628211ull;
  uint64_t h0 = h;
  comm.bcast_bytes(&h0, sizeof h0, 0);
  int who = -1;
  first_failure(comm, h != h0 ? "differs" : "", &who);
  if (who >= 0)
    throw UsageError("ranks: the options differ between ranks (rank " + std::to_string(who) +
                     "'s effective configuration is not rank 0's); start every rank with the same command line and --config file");
}

}  // namespace hyperrnn
