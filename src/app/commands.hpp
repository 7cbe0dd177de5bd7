// The subcommands of the `hyperrnn` program and the pieces they share.
#pragma once
#include <cstdint>

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

// Held-out samples 0..samples-1 of the HeldOut stream, in batches of at most batch.B.
EvalResult evaluate_heldout(Transformer<float>& model, MqarGenerator& gen, Batch& batch, uint64_t seed,
                            int64_t samples);

// Test samples of Fashion-MNIST task `which` (-1: all classes), at most max_samples, in file order.
EvalResult evaluate_fmnist(Transformer<float>& model, const FmnistTask& task, Batch& batch, int which, int64_t max_samples);

int run_train(Comm& comm, const RunConfig& cfg);
int run_eval(Comm& comm, const RunConfig& cli);
int run_bench(Comm& comm, const RunConfig& cfg);

}  // namespace hyperrnn
