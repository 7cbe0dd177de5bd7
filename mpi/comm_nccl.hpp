// NCCL behind the Comm interface (issue 19; docs/gpu.md). The data collectives (the integer and
// floating-point sums, the maxima, the allgather and the expert exchange as grouped send/recv)
// run on this rank's GPU through NCCL; the rank's identity, the barrier, the broadcast of host
// metadata and abort stay with the host Comm it wraps, which also bootstraps it (rank 0's
// ncclUniqueId is broadcast with bcast_bytes). Data pointers may be device or host memory: device
// data is used in place; host data (metrics, control values) is staged through a device buffer.
// Every call is blocking (its stream is synchronised before it returns), as Comm requires, and the
// integer sum is exact, so the reproducible shard sum gives the same bits over NCCL as over MPI.
// Leaves out: which GPU a rank uses (app/device.cpp chooses it before this is built).
#pragma once
#include <memory>

#include "mpi/comm.hpp"

namespace hyperrnn {

// This build has NCCL (HYPERRNN_CUDA=ON).
bool nccl_built();

// Collective over `host`'s ranks; call after the rank's GPU was made current. `host` must outlive
// the result. Throws RuntimeError naming NCCL's or CUDA's reason (and, in a build without NCCL,
// that there is none).
std::unique_ptr<Comm> make_nccl_comm(Comm& host);

}  // namespace hyperrnn
