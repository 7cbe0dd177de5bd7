// 1-rank Comm: every collective is the identity (or a copy into the receive buffer).
#include <cstdlib>
#include <cstring>

#include "mpi/comm.hpp"

namespace hyperrnn {
namespace {
class SerialComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string library() const override { return "serial (no MPI)"; }
  void barrier() override {}
  int allreduce_max(int value) override { return value; }
  void allreduce_max(int*, std::size_t) override {}
  void bcast_bytes(void*, std::size_t, int) override {}
  void allreduce_sum(int64_t*, std::size_t) override {}
  void allreduce_sum(float*, std::size_t) override {}
  void allreduce_sum(double*, std::size_t) override {}
  void allgather_bytes(const void* send, std::size_t bytes, void* recv) override {
    if (bytes && send != recv) std::memmove(recv, send, bytes);
  }
  void alltoallv(const float* send, const int64_t* sc, const int64_t* sd, float* recv, const int64_t*,
                 const int64_t* rd) override {
    if (sc[0] && send + sd[0] != recv + rd[0]) std::memmove(recv + rd[0], send + sd[0], static_cast<std::size_t>(sc[0]) * sizeof(float));
  }
  void alltoallv(const double* send, const int64_t* sc, const int64_t* sd, double* recv, const int64_t*,
                 const int64_t* rd) override {
    if (sc[0] && send + sd[0] != recv + rd[0]) std::memmove(recv + rd[0], send + sd[0], static_cast<std::size_t>(sc[0]) * sizeof(double));
  }
  [[noreturn]] void abort(int status) override { std::exit(status); }
};
}  // namespace

std::unique_ptr<Comm> make_serial_comm() { return std::make_unique<SerialComm>(); }

}  // namespace hyperrnn
