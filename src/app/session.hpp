// Everything one training process holds, built from a RunConfig: the model (theta), its optimizer
// state, the task's data generator and the batch buffer. train, bench and the reference-dump tool
// all drive training through this one object.
#pragma once
#include <cstdint>

#include "app/options.hpp"
#include "core/batch.hpp"
#include "parallel/layout.hpp"
#include "mpi/comm.hpp"
#include "models/transformer.hpp"
#include "nn/adamw.hpp"
#include "pilf/step.hpp"
#include <memory>

#include "tasks/fmnist.hpp"
#include "tasks/mqar.hpp"

namespace hyperrnn {

template <class T>
class Session {
 public:
  // comm null: one rank. The layout (shards, expert owners) comes from cfg and comm's size.
  explicit Session(const RunConfig& cfg, Comm* comm = nullptr);
  // Fills the batch with training step `step`'s samples (counter RNG) and runs one hyper-step.
  StepStats train(int64_t step);
  // Fills the batch with this rank's block of training step `step`'s samples only.
  void fill_train_batch(int64_t step);

  const RunConfig cfg;
  Parallel par;
  Transformer<T> model;
  nn::AdamW<T> opt;
  PilfState<T> pilf;
  MqarGenerator gen;                  // task mqar
  std::unique_ptr<FmnistTask> fmnist;  // image tasks
  Batch batch;
  // fmnist-marathon: the task trained at `step` (-1 for the other tasks)
  int task_of(int64_t step) const;
  // Steps per epoch of a task (--epoch-steps, or one pass over the task's training data).
  int64_t epoch_steps(int task) const;
  const StepConfig step_cfg;
};

}  // namespace hyperrnn
