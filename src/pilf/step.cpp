// One training step.
#include "pilf/step.hpp"

#include <cmath>

namespace hyperrnn {

template <class T>
StepStats train_step(Transformer<T>& model, nn::AdamW<T>& opt, const Batch& batch, const StepConfig& sc,
                     int64_t step) {
  StepStats s;
  s.lr = nn::lr_at(step, sc.total_steps, sc.warmup, sc.lr, sc.lr_min_ratio);
  s.loss = model.forward(batch);
  s.acc = model.accuracy();
  if (!std::isfinite(s.loss)) {
    s.skipped = true;
    return s;
  }
  model.zero_grad();
  model.backward();
  const int64_t n = model.table().total();
  s.grad_norm = nn::grad_norm(model.grads.data(), n);  // NaN or Inf if any gradient is
  if (!std::isfinite(s.grad_norm)) {
    s.skipped = true;
    return s;
  }
  nn::clip_grads(model.grads.data(), n, s.grad_norm, sc.grad_clip);
  opt.step(model.params.data(), model.grads.data(), s.lr);
  return s;
}

template StepStats train_step<float>(Transformer<float>&, nn::AdamW<float>&, const Batch&, const StepConfig&, int64_t);
template StepStats train_step<double>(Transformer<double>&, nn::AdamW<double>&, const Batch&, const StepConfig&, int64_t);

}  // namespace hyperrnn
