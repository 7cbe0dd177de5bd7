// 1-rank Comm: every collective is the identity.
#include <cstdlib>

#include "mpi/comm.hpp"

namespace hyperrnn {
namespace {
class SerialComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void barrier() override {}
  int allreduce_max(int value) override { return value; }
  void bcast_bytes(void*, std::size_t, int) override {}
  [[noreturn]] void abort(int status) override { std::exit(status); }
};
}  // namespace

std::unique_ptr<Comm> make_serial_comm() { return std::make_unique<SerialComm>(); }

}  // namespace hyperrnn
