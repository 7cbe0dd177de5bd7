// The hyper-transition theta_t = f(theta_{t-1}, batch_t). In this version it is the plain
// supervised step (forward, backward, global-norm clip, scheduled AdamW); the PILF assessment,
// PILR, SMK and the experience buffer extend it in the PILF issue.
#pragma once
#include <cstdint>

#include "core/batch.hpp"
#include "models/transformer.hpp"
#include "nn/adamw.hpp"

namespace hyperrnn {

struct StepConfig {
  int64_t total_steps = 1;
  int64_t warmup = 0;
  double lr = 1e-3;
  double lr_min_ratio = 0.1;
  double grad_clip = 1.0;  // 0 = off
};

struct StepStats {
  double loss = 0.0;
  double acc = 0.0;
  double grad_norm = 0.0;  // before clipping
  double lr = 0.0;
  bool skipped = false;    // loss or gradients were not finite: nothing was updated
};

// A step whose loss or gradient norm is NaN or Inf changes nothing (parameters, moments and the
// optimizer's step count stay as they were) and reports skipped = true.
template <class T>
StepStats train_step(Transformer<T>& model, nn::AdamW<T>& opt, const Batch& batch, const StepConfig& sc,
                     int64_t step);

}  // namespace hyperrnn
