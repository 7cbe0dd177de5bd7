// The communication interface, the only door to MPI (and later NCCL). Math code calls these
// methods; the serial implementation does no communication, so 1-rank code paths cost nothing.
// Leaves out: the expert dispatch exchange and reproducible reductions (expert-parallel issue).
#pragma once
#include <cstddef>
#include <memory>

namespace hyperrnn {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void barrier() = 0;
  // Largest value over all ranks (used to agree on errors so that no rank hangs).
  virtual int allreduce_max(int value) = 0;
  virtual void bcast_bytes(void* data, std::size_t bytes, int root) = 0;
  // Ends every rank of the job with the given exit status.
  [[noreturn]] virtual void abort(int status) = 0;
};

// Initialises MPI (always, even for one rank) and returns the world communicator. MPI is
// finalised when the returned object is destroyed.
std::unique_ptr<Comm> init_world(int& argc, char**& argv);

// A 1-rank communicator that makes no MPI calls (unit tests, tools).
std::unique_ptr<Comm> make_serial_comm();

}  // namespace hyperrnn
