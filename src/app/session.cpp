// Session construction and the training step driver.
#include "app/session.hpp"

namespace hyperrnn {

template <class T>
Session<T>::Session(const RunConfig& c)
    : cfg(c),
      model(c.model_config(), static_cast<int>(c.batch), static_cast<int>(c.scored_per_batch(c.batch))),
      opt(model.table(), c.adamw_config()),
      pilf(c.pilf_config(), model.config(), static_cast<int>(c.batch), c.seed, c.adamw_config()),
      gen(c.image_task() ? RunConfig{}.mqar_config() : c.mqar_config()),  // unused by image tasks
      step_cfg(c.step_config()) {
  model.init(c.seed);
  pilf.attach(model);
  batch.resize(static_cast<int>(c.batch), static_cast<int>(c.positions()));
  if (c.image_task()) {
    const bool marathon = c.task == "fmnist-marathon";
    fmnist = std::make_unique<FmnistTask>(c.fmnist_dir, marathon ? static_cast<int>(c.classes_per_task) : 1,
                                          marathon && c.marathon_head == "task");
    batch.images.assign(static_cast<size_t>(c.batch) * FmnistTask::kH * FmnistTask::kW, 0.0f);
  }
}

template <class T>
int Session<T>::task_of(int64_t step) const {
  if (cfg.task != "fmnist-marathon") return -1;
  return static_cast<int>((step / cfg.task_steps) % fmnist->tasks());
}

template <class T>
void Session<T>::fill_train_batch(int64_t step) {
  if (fmnist)
    fmnist->fill_train(batch, cfg.seed, static_cast<uint32_t>(step), static_cast<int>(cfg.batch), task_of(step));
  else
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
