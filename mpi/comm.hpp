// The communication interface, the only door to MPI (and later NCCL). Math code calls these
// methods; the serial implementation does no communication, so 1-rank code paths cost nothing.
// Every collective is blocking and must be called by every rank in the same order.
// Leaves out: what is exchanged (src/parallel/layout.hpp plans the expert dispatch and the
// reproducible reductions on top of these primitives).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace hyperrnn {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void barrier() = 0;
  // Largest value over all ranks (used to agree on errors so that no rank hangs).
  virtual int allreduce_max(int value) = 0;
  virtual void allreduce_max(int* data, std::size_t n) = 0;  // element-wise, in place
  virtual void bcast_bytes(void* data, std::size_t bytes, int root) = 0;
  // Element-wise sum over ranks of n 64-bit integers, in place. Integer addition is exact and
  // associative, so the result does not depend on the reduction order (reproducible sums).
  virtual void allreduce_sum(int64_t* data, std::size_t n) = 0;
  // Element-wise floating-point sum over ranks, in place, in whatever order MPI chooses: NOT
  // reproducible across rank counts (the benchmark's "plain" reduction and sums with one
  // non-zero contributor per element, which are exact in any order).
  virtual void allreduce_sum(float* data, std::size_t n) = 0;
  virtual void allreduce_sum(double* data, std::size_t n) = 0;
  // Every rank contributes `bytes` bytes; recv (size() * bytes) receives them in rank order.
  virtual void allgather_bytes(const void* send, std::size_t bytes, void* recv) = 0;
  // Personalised all-to-all of float rows: send_counts[d] floats from send + send_displs[d] go to
  // rank d; recv_counts[s] floats from rank s land at recv + recv_displs[s].
  virtual void alltoallv(const float* send, const int64_t* send_counts, const int64_t* send_displs, float* recv,
                         const int64_t* recv_counts, const int64_t* recv_displs) = 0;
  virtual void alltoallv(const double* send, const int64_t* send_counts, const int64_t* send_displs, double* recv,
                         const int64_t* recv_counts, const int64_t* recv_displs) = 0;
  // Ends every rank of the job with the given exit status.
  [[noreturn]] virtual void abort(int status) = 0;
  // The communication library and its version, one line (provenance).
  virtual std::string library() const { return "unknown"; }
};

// Initialises MPI (always, even for one rank) and returns the world communicator. MPI is
// finalised when the returned object is destroyed.
std::unique_ptr<Comm> init_world(int& argc, char**& argv);

// A 1-rank communicator that makes no MPI calls (unit tests, tools).
std::unique_ptr<Comm> make_serial_comm();

}  // namespace hyperrnn
