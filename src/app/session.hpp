// Everything one training process holds, built from a RunConfig: the model (theta), its optimizer
// state, the task's data generator and the batch buffer. train, bench and the reference-dump tool
// all drive training through this one object.
#pragma once
#include <cstdint>

#include "app/options.hpp"
#include "core/batch.hpp"
#include "models/transformer.hpp"
#include "nn/adamw.hpp"
#include "pilf/step.hpp"
#include "tasks/mqar.hpp"

namespace hyperrnn {

template <class T>
class Session {
 public:
  explicit Session(const RunConfig& cfg);
  // Fills the batch with training step `step`'s samples (counter RNG) and runs one hyper-step.
  StepStats train(int64_t step);
  // Fills the batch with training step `step`'s samples only.
  void fill_train_batch(int64_t step);

  const RunConfig cfg;
  Transformer<T> model;
  nn::AdamW<T> opt;
  PilfState<T> pilf;
  MqarGenerator gen;
  Batch batch;
  const StepConfig step_cfg;
};

}  // namespace hyperrnn
