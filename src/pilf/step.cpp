// One training step.
#include "pilf/step.hpp"

namespace hyperrnn {

template <class T>
StepStats train_step(Transformer<T>& model, nn::AdamW<T>& opt, const Batch& batch, const StepConfig& sc,
                     int64_t step) {
  StepStats s;
  s.loss = model.forward(batch);
  s.acc = model.accuracy();
  model.zero_grad();
  model.backward();
  const int64_t n = model.table().total();
  s.grad_norm = nn::grad_norm(model.grads.data(), n);
  nn::clip_grads(model.grads.data(), n, s.grad_norm, sc.grad_clip);
  s.lr = nn::lr_at(step, sc.total_steps, sc.warmup, sc.lr, sc.lr_min_ratio);
  opt.step(model.params.data(), model.grads.data(), s.lr);
  return s;
}

template StepStats train_step<float>(Transformer<float>&, nn::AdamW<float>&, const Batch&, const StepConfig&, int64_t);
template StepStats train_step<double>(Transformer<double>&, nn::AdamW<double>&, const Batch&, const StepConfig&, int64_t);

}  // namespace hyperrnn
