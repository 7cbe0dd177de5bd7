// Collective error agreement: a usage error found on some ranks becomes the same error on every
// rank, so all exit with status 2 and none waits forever in a collective the others never reach.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "app/commands.hpp"
#include "core/error.hpp"
#include "parallel/layout.hpp"
#include "parallel/threads.hpp"

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

namespace hyperrnn {

std::vector<int32_t> threads_per_rank(Parallel& par) {
  const int32_t mine = threads().size();
  std::vector<int32_t> all(static_cast<size_t>(par.P), mine);
  if (par.P > 1) par.allgather(&mine, sizeof mine, all.data());
  return all;
}

std::string ranks_x_threads(const std::vector<int32_t>& per_rank) {
  const auto [lo, hi] = std::minmax_element(per_rank.begin(), per_rank.end());
  std::string s = std::to_string(per_rank.size()) + " rank(s) x ";
  if (*lo == *hi) return s + std::to_string(*lo) + " thread(s)";
  s += std::to_string(*lo) + "-" + std::to_string(*hi) + " threads (per rank:";
  for (int32_t t : per_rank) s += " " + std::to_string(t);
  return s + ")";
}

}  // namespace hyperrnn
