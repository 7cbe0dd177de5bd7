// NCCL implementation of Comm (mpi/comm_nccl.hpp). Built with HYPERRNN_CUDA only; every NCCL and
// CUDA call goes through a checking macro that names the call and the library's reason.
#include "mpi/comm_nccl.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.hpp"

#define HYPERRNN_NCCL(call)                                                                           \
  do {                                                                                                \
    const ncclResult_t hyperrnn_nccl_rc = (call);                                                     \
    if (hyperrnn_nccl_rc != ncclSuccess)                                                              \
      throw ::hyperrnn::RuntimeError(std::string("NCCL: ") + #call + ": " + ncclGetErrorString(hyperrnn_nccl_rc)); \
  } while (0)
#define HYPERRNN_CUDART(call)                                                                         \
  do {                                                                                                \
    const cudaError_t hyperrnn_cuda_rc = (call);                                                      \
    if (hyperrnn_cuda_rc != cudaSuccess)                                                              \
      throw ::hyperrnn::RuntimeError(std::string("CUDA: ") + #call + ": " + cudaGetErrorString(hyperrnn_cuda_rc)); \
  } while (0)

namespace hyperrnn {

bool nccl_built() { return true; }

namespace {

bool on_device(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();  // an unregistered host pointer on old runtimes: clear the error
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

class NcclComm final : public Comm {
 public:
  explicit NcclComm(Comm& host) : host_(host) {
    ncclUniqueId id{};
    if (host_.rank() == 0) HYPERRNN_NCCL(ncclGetUniqueId(&id));
    host_.bcast_bytes(&id, sizeof id, 0);
    HYPERRNN_CUDART(cudaStreamCreate(&stream_));
    HYPERRNN_NCCL(ncclCommInitRank(&comm_, host_.size(), id, host_.rank()));
  }
  ~NcclComm() override {
    if (comm_) ncclCommDestroy(comm_);
    if (scratch_) cudaFree(scratch_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  void barrier() override { host_.barrier(); }
  void bcast_bytes(void* data, std::size_t bytes, int root) override { host_.bcast_bytes(data, bytes, root); }
  [[noreturn]] void abort(int status) override {
    host_.abort(status);
    std::abort();  // not reached: the host Comm's abort ends the process
  }
  std::string library() const override {
    int v = 0;
    ncclGetVersion(&v);  // major * 10000 + minor * 100 + patch (NCCL >= 2.9)
    return "NCCL " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100) +
           " over " + host_.library();
  }

  int allreduce_max(int value) override {
    allreduce_max(&value, 1);
    return value;
  }
  void allreduce_max(int* data, std::size_t n) override { reduce(data, n, ncclInt32, ncclMax, sizeof(int)); }
  void allreduce_sum(int64_t* data, std::size_t n) override { reduce(data, n, ncclInt64, ncclSum, sizeof(int64_t)); }
  void allreduce_sum(float* data, std::size_t n) override { reduce(data, n, ncclFloat32, ncclSum, sizeof(float)); }
  void allreduce_sum(double* data, std::size_t n) override { reduce(data, n, ncclFloat64, ncclSum, sizeof(double)); }

  void allgather_bytes(const void* send, std::size_t bytes, void* recv) override {
    if (bytes == 0) return;
    const std::size_t P = static_cast<std::size_t>(size());
    const bool dev = on_device(send) && on_device(recv);
    char* s = dev ? nullptr : stage(bytes * (P + 1));
    const void* sp = dev ? send : s + bytes * P;
    void* rp = dev ? recv : s;
    if (!dev) HYPERRNN_CUDART(cudaMemcpyAsync(s + bytes * P, send, bytes, cudaMemcpyHostToDevice, stream_));
    HYPERRNN_NCCL(ncclAllGather(sp, rp, bytes, ncclUint8, comm_, stream_));
    if (!dev) HYPERRNN_CUDART(cudaMemcpyAsync(recv, s, bytes * P, cudaMemcpyDeviceToHost, stream_));
    sync();
  }

  void alltoallv(const float* send, const int64_t* sc, const int64_t* sd, float* recv, const int64_t* rc,
                 const int64_t* rd) override {
    exchange(send, sc, sd, recv, rc, rd, ncclFloat32, sizeof(float));
  }
  void alltoallv(const double* send, const int64_t* sc, const int64_t* sd, double* recv, const int64_t* rc,
                 const int64_t* rd) override {
    exchange(send, sc, sd, recv, rc, rd, ncclFloat64, sizeof(double));
  }

 private:
  // A device buffer of at least `bytes`, reused across calls (grown, never shrunk).
  char* stage(std::size_t bytes) {
    if (bytes > scratch_bytes_) {
      if (scratch_) HYPERRNN_CUDART(cudaFree(scratch_));
      scratch_ = nullptr;
      HYPERRNN_CUDART(cudaMalloc(reinterpret_cast<void**>(&scratch_), bytes));
      scratch_bytes_ = bytes;
    }
    return scratch_;
  }
  void sync() { HYPERRNN_CUDART(cudaStreamSynchronize(stream_)); }

  void reduce(void* data, std::size_t n, ncclDataType_t type, ncclRedOp_t op, std::size_t elem) {
    if (n == 0) return;
    if (on_device(data)) {
      HYPERRNN_NCCL(ncclAllReduce(data, data, n, type, op, comm_, stream_));
    } else {
      char* d = stage(n * elem);
      HYPERRNN_CUDART(cudaMemcpyAsync(d, data, n * elem, cudaMemcpyHostToDevice, stream_));
      HYPERRNN_NCCL(ncclAllReduce(d, d, n, type, op, comm_, stream_));
      HYPERRNN_CUDART(cudaMemcpyAsync(data, d, n * elem, cudaMemcpyDeviceToHost, stream_));
    }
    sync();
  }

  // The personalised all-to-all as one group of sends and receives (NCCL has no alltoallv);
  // counts and displacements are in elements, as in the MPI implementation.
  void exchange(const void* send, const int64_t* sc, const int64_t* sd, void* recv, const int64_t* rc, const int64_t* rd,
                ncclDataType_t type, std::size_t elem) {
    const int P = size();
    int64_t send_n = 0, recv_n = 0;  // extents, for staging host buffers
    for (int r = 0; r < P; ++r) {
      send_n = std::max(send_n, sd[r] + sc[r]);
      recv_n = std::max(recv_n, rd[r] + rc[r]);
    }
    const bool dev = (send_n == 0 || on_device(send)) && (recv_n == 0 || on_device(recv));
    const char* sp = static_cast<const char*>(send);
    char* rp = static_cast<char*>(recv);
    if (!dev) {
      char* s = stage(static_cast<std::size_t>(send_n + recv_n) * elem);
      if (send_n > 0) HYPERRNN_CUDART(cudaMemcpyAsync(s, send, static_cast<std::size_t>(send_n) * elem, cudaMemcpyHostToDevice, stream_));
      sp = s;
      rp = s + static_cast<std::size_t>(send_n) * elem;
    }
    HYPERRNN_NCCL(ncclGroupStart());
    for (int r = 0; r < P; ++r) {
      if (sc[r] > 0) HYPERRNN_NCCL(ncclSend(sp + static_cast<std::size_t>(sd[r]) * elem, static_cast<std::size_t>(sc[r]), type, r, comm_, stream_));
      if (rc[r] > 0) HYPERRNN_NCCL(ncclRecv(rp + static_cast<std::size_t>(rd[r]) * elem, static_cast<std::size_t>(rc[r]), type, r, comm_, stream_));
    }
    HYPERRNN_NCCL(ncclGroupEnd());
    if (!dev && recv_n > 0) {
      // back to the host buffer, slice by slice: the parts of recv outside the received slices are untouched
      for (int r = 0; r < P; ++r)
        if (rc[r] > 0)
          HYPERRNN_CUDART(cudaMemcpyAsync(static_cast<char*>(recv) + static_cast<std::size_t>(rd[r]) * elem,
                                          rp + static_cast<std::size_t>(rd[r]) * elem, static_cast<std::size_t>(rc[r]) * elem,
                                          cudaMemcpyDeviceToHost, stream_));
    }
    sync();
  }

  Comm& host_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  char* scratch_ = nullptr;
  std::size_t scratch_bytes_ = 0;
};
}  // namespace

std::unique_ptr<Comm> make_nccl_comm(Comm& host) { return std::make_unique<NcclComm>(host); }

}  // namespace hyperrnn
