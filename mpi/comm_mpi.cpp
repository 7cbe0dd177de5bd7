// MPI implementation of Comm over MPI_COMM_WORLD. Every MPI call goes through HYPERRNN_MPI so a
// failure names the call, file and line; errors return (MPI_ERRORS_RETURN) instead of aborting
// silently inside the library.
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

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
  std::string library() const override {
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    MPI_Get_library_version(v, &n);
    std::string s(v, static_cast<size_t>(n));
    const size_t cut = s.find_first_of(",\n");
    return s.substr(0, cut);
  }
  void barrier() override {
    if (size_ > 1) HYPERRNN_MPI(MPI_Barrier(MPI_COMM_WORLD));
  }
  int allreduce_max(int value) override {
    if (size_ == 1) return value;
    int out = 0;
    HYPERRNN_MPI(MPI_Allreduce(&value, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
    return out;
  }
  void allreduce_max(int* data, std::size_t n) override {
    if (size_ == 1 || n == 0) return;
    HYPERRNN_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count(n), MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  }
  void bcast_bytes(void* data, std::size_t bytes, int root) override {
    if (size_ == 1) return;
    HYPERRNN_MPI(MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, MPI_COMM_WORLD));
  }
  void allreduce_sum(int64_t* data, std::size_t n) override {
    if (size_ == 1 || n == 0) return;
    HYPERRNN_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count(n), MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
  }
  void allreduce_sum(float* data, std::size_t n) override {
    if (size_ == 1 || n == 0) return;
    HYPERRNN_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
  }
  void allreduce_sum(double* data, std::size_t n) override {
    if (size_ == 1 || n == 0) return;
    HYPERRNN_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
  }
  void allgather_bytes(const void* send, std::size_t bytes, void* recv) override {
    HYPERRNN_MPI(MPI_Allgather(send, count(bytes), MPI_BYTE, recv, count(bytes), MPI_BYTE, MPI_COMM_WORLD));
  }
  void alltoallv(const float* send, const int64_t* sc, const int64_t* sd, float* recv, const int64_t* rc,
                 const int64_t* rd) override {
    exchange(send, sc, sd, recv, rc, rd, MPI_FLOAT);
  }
  void alltoallv(const double* send, const int64_t* sc, const int64_t* sd, double* recv, const int64_t* rc,
                 const int64_t* rd) override {
    exchange(send, sc, sd, recv, rc, rd, MPI_DOUBLE);
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
  // MPI counts and displacements are int: refuse (naming the cause) rather than truncate.
  static int count(std::size_t n) {
    if (n > static_cast<std::size_t>(INT_MAX))
      ::hyperrnn::fail_check("count <= INT_MAX", "an MPI message of " + std::to_string(n) + " elements exceeds the int range",
                             __FILE__, __LINE__);
    return static_cast<int>(n);
  }
  void exchange(const void* send, const int64_t* sc, const int64_t* sd, void* recv, const int64_t* rc,
                const int64_t* rd, MPI_Datatype type) {
    const std::size_t P = static_cast<std::size_t>(size_);
    sc_.resize(P); sd_.resize(P); rc_.resize(P); rd_.resize(P);
    for (std::size_t r = 0; r < P; ++r) {
      sc_[r] = count(static_cast<std::size_t>(sc[r]));
      sd_[r] = count(static_cast<std::size_t>(sd[r]));
      rc_[r] = count(static_cast<std::size_t>(rc[r]));
      rd_[r] = count(static_cast<std::size_t>(rd[r]));
    }
    HYPERRNN_MPI(MPI_Alltoallv(send, sc_.data(), sd_.data(), type, recv, rc_.data(), rd_.data(), type, MPI_COMM_WORLD));
  }
  int rank_ = 0, size_ = 1;
  std::vector<int> sc_, sd_, rc_, rd_;  // reused across calls: no allocation in the step loop
};
}  // namespace

std::unique_ptr<Comm> init_world(int& argc, char**& argv) { return std::make_unique<MpiComm>(argc, argv); }

}  // namespace hyperrnn
