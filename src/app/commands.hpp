// The subcommands of the `hyperrnn` program and the pieces they share.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "app/options.hpp"
#include "core/batch.hpp"
#include "models/transformer.hpp"
#include "mpi/comm.hpp"
#include "tasks/fmnist.hpp"
#include "tasks/mqar.hpp"

namespace hyperrnn {

struct EvalResult {
  double loss = 0.0;  // mean cross-entropy over scored positions
  double acc = 0.0;   // mean over samples of per-sample accuracy
  int64_t samples = 0;
};

// Held-out samples 0..samples-1 of the HeldOut stream, in global batches of `chunk` samples cut
// into the model's shards (collective; batch must hold this rank's block of a chunk).
// recurrent: model rwkv7's token-by-token forward (Transformer::forward_recurrent).
EvalResult evaluate_heldout(Transformer<float>& model, MqarGenerator& gen, Batch& batch, uint64_t seed,
                            int64_t samples, int64_t chunk, bool recurrent = false);

// Test samples of Fashion-MNIST task `which` (-1: all classes), at most max_samples, in file order,
// in global batches of `chunk` samples (collective).
EvalResult evaluate_fmnist(Transformer<float>& model, const FmnistTask& task, Batch& batch, int which, int64_t max_samples,
                           int64_t chunk, bool recurrent = false);

// Runs fn on every rank (root_only: on rank 0 only) and agrees on the outcome: when it threw a
// UsageError anywhere, every rank throws the lowest failing rank's message (collective).
void collective(Comm& comm, const std::function<void()>& fn, bool root_only = false);
// UsageError on every rank unless `what` (an effective configuration) is the same on all ranks.
void check_same_everywhere(Comm& comm, const std::string& what);

// Every rank's --threads in rank order (collective), and "P rank(s) x T thread(s)" for it.
std::vector<int32_t> threads_per_rank(Parallel& par);
std::string ranks_x_threads(const std::vector<int32_t>& per_rank);

// --device cuda: attaches this rank to its GPU (one per rank, by its place on its node) or throws
// the same UsageError on every rank (collective); --device cpu: nothing.
void attach_device(Comm& comm, const RunConfig& cfg);

int run_train(Comm& comm, const RunConfig& cfg);
int run_eval(Comm& comm, const RunConfig& cli);
int run_bench(Comm& comm, const RunConfig& cfg);
int run_inspect(Comm& comm, const std::string& path);

}  // namespace hyperrnn
