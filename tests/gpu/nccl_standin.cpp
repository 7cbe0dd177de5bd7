// A host stand-in for the NCCL Comm, used only to check tests/gpu/test_nccl.cpp itself on a
// machine without a GPU: the "NCCL" Comm forwards every call to the MPI Comm it wraps, and
// "device" buffers are host memory (tests/gpu/host_standin.cpp). The comparisons of NCCL against
// MPI are then MPI against MPI; what this checks is the test's own index arithmetic and its
// expected values (e.g. which rows of the exchange land where). It says nothing about NCCL.
#include <cstdlib>
#include <memory>

#include "mpi/comm.hpp"

namespace hyperrnn {
namespace {
class Forward final : public Comm {
 public:
  explicit Forward(Comm& h) : h_(h) {}
  int rank() const override { return h_.rank(); }
  int size() const override { return h_.size(); }
  void barrier() override { h_.barrier(); }
  int allreduce_max(int v) override { return h_.allreduce_max(v); }
  void allreduce_max(int* d, std::size_t n) override { h_.allreduce_max(d, n); }
  void bcast_bytes(void* d, std::size_t b, int root) override { h_.bcast_bytes(d, b, root); }
  void allreduce_sum(int64_t* d, std::size_t n) override { h_.allreduce_sum(d, n); }
  void allreduce_sum(float* d, std::size_t n) override { h_.allreduce_sum(d, n); }
  void allreduce_sum(double* d, std::size_t n) override { h_.allreduce_sum(d, n); }
  void allgather_bytes(const void* s, std::size_t b, void* r) override { h_.allgather_bytes(s, b, r); }
  void alltoallv(const float* s, const int64_t* sc, const int64_t* sd, float* r, const int64_t* rc, const int64_t* rd) override {
    h_.alltoallv(s, sc, sd, r, rc, rd);
  }
  void alltoallv(const double* s, const int64_t* sc, const int64_t* sd, double* r, const int64_t* rc, const int64_t* rd) override {
    h_.alltoallv(s, sc, sd, r, rc, rd);
  }
  [[noreturn]] void abort(int status) override {
    h_.abort(status);
    std::abort();  // not reached
  }
  std::string library() const override { return "stand-in (MPI behind it): " + h_.library(); }

 private:
  Comm& h_;
};
}  // namespace

std::unique_ptr<Comm> make_standin_nccl_comm(Comm& host) { return std::make_unique<Forward>(host); }

}  // namespace hyperrnn
