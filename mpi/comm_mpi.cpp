// MPI implementation of Comm over MPI_COMM_WORLD. Every MPI call goes through HYPERRNN_MPI so a
// failure names the call, file and line; errors return (MPI_ERRORS_RETURN) instead of aborting
// silently inside the library.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.hpp"
#include "mpi/comm.hpp"

#define HYPERRNN_MPI(call)                                                                     \
  do {                                                                                         \
    const int hyperrnn_mpi_rc = (call);                                                        \
    if (hyperrnn_mpi_rc != MPI_SUCCESS) {                                                      \
      char hyperrnn_mpi_msg[MPI_MAX_ERROR_STRING];                                             \
      int hyperrnn_mpi_len = 0;                                                                \
      MPI_Error_string(hyperrnn_mpi_rc, hyperrnn_mpi_msg, &hyperrnn_mpi_len);                  \
      ::hyperrnn::fail_check(#call, std::string("MPI error: ") + hyperrnn_mpi_msg, __FILE__,   \
                             __LINE__);                                                        \
    }                                                                                          \
  } while (0)

namespace hyperrnn {
namespace {
class MpiComm final : public Comm {
 public:
  MpiComm(int& argc, char**& argv) {
    int provided = 0;
    HYPERRNN_MPI(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided));
    HYPERRNN_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    HYPERRNN_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    HYPERRNN_MPI(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void barrier() override {
    if (size_ > 1) HYPERRNN_MPI(MPI_Barrier(MPI_COMM_WORLD));
  }
  int allreduce_max(int value) override {
    if (size_ == 1) return value;
    int out = 0;
    HYPERRNN_MPI(MPI_Allreduce(&value, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    return out;
  }
  void bcast_bytes(void* data, std::size_t bytes, int root) override {
    if (size_ == 1) return;
    HYPERRNN_MPI(MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, MPI_COMM_WORLD));
  }
  [[noreturn]] void abort(int status) override {
    std::fflush(stdout);
    std::fflush(stderr);
    if (size_ == 1) {
      MPI_Finalize();
      std::exit(status);
    }
    MPI_Abort(MPI_COMM_WORLD, status);
    std::exit(status);
  }

 private:
  int rank_ = 0, size_ = 1;
};
}  // namespace

std::unique_ptr<Comm> init_world(int& argc, char**& argv) { return std::make_unique<MpiComm>(argc, argv); }

}  // namespace hyperrnn
