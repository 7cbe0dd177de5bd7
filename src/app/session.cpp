// Session construction and the training step driver.
#include "app/session.hpp"

namespace hyperrnn {

template <class T>
Session<T>::Session(const RunConfig& c)
    : cfg(c),
      model(c.model_config(), static_cast<int>(c.batch), static_cast<int>(c.batch * c.kv_pairs)),
      opt(model.table(), c.adamw_config()),
      pilf(c.pilf_config(), model.config(), static_cast<int>(c.batch), c.seed, c.adamw_config()),
      gen(c.mqar_config()),
      step_cfg(c.step_config()) {
  model.init(c.seed);
  pilf.attach(model);
  batch.resize(static_cast<int>(c.batch), static_cast<int>(c.seq_len));
}

template <class T>
void Session<T>::fill_train_batch(int64_t step) {
  gen.fill(batch, cfg.seed, RngPurpose::TrainData, static_cast<uint32_t>(step), 0, static_cast<int>(cfg.batch));
}

template <class T>
StepStats Session<T>::train(int64_t step) {
  fill_train_batch(step);
  return train_step(model, opt, batch, step_cfg, step, &pilf);
}

template class Session<float>;
template class Session<double>;

}  // namespace hyperrnn
