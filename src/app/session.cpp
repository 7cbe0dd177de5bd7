// Session construction and the training step driver.
#include "app/session.hpp"

namespace hyperrnn {

template <class T>
Session<T>::Session(const RunConfig& c, Comm* comm)
    : cfg(c),
      par(comm, static_cast<int>(c.shards), c.model_config().is_moe() ? static_cast<int>(c.experts) : 0),
      model(c.model_config(), static_cast<int>(c.batch / par.P), static_cast<int>(c.scored_per_batch(c.batch / par.P)), &par),
      opt(model.table(), c.adamw_config()),
      pilf(c.pilf_config(), model.config(), static_cast<int>(c.batch / par.P), c.seed, c.adamw_config()),
      gen(c.image_task() ? RunConfig{}.mqar_config() : c.mqar_config()),  // unused by image tasks
      step_cfg(c.step_config()) {
  model.init(c.seed);
  pilf.attach(model);
  par.reduction = c.reduction == "plain" ? Reduction::Plain : Reduction::Exact;
  batch.resize(static_cast<int>(c.batch / par.P), static_cast<int>(c.positions()));
  if (c.image_task()) {
    const bool marathon = c.task == "fmnist-marathon";
    fmnist = std::make_unique<FmnistTask>(c.fmnist_dir, marathon ? static_cast<int>(c.classes_per_task) : 1,
                                          marathon && c.marathon_head == "task");
    batch.images.assign(static_cast<size_t>(c.batch / par.P) * FmnistTask::kH * FmnistTask::kW, 0.0f);
  }
}

template <class T>
int Session<T>::task_of(int64_t step) const {
  if (cfg.task != "fmnist-marathon") return -1;
  return static_cast<int>((step / cfg.task_steps) % fmnist->tasks());
}

template <class T>
void Session<T>::fill_train_batch(int64_t step) {
  int64_t first = 0;
  int n = 0;
  par.local_block(cfg.batch, first, n, batch.shard_samples);
  batch.step = step;  // keys dropout
  batch.first = first;
  if (fmnist)
    fmnist->fill_train(batch, cfg.seed, static_cast<uint32_t>(step), static_cast<uint32_t>(first), n, task_of(step));
  else
    gen.fill(batch, cfg.seed, RngPurpose::TrainData, static_cast<uint32_t>(step), static_cast<uint32_t>(first), n);
}

template <class T>
int64_t Session<T>::epoch_steps(int task) const {
  if (cfg.epoch_steps > 0) return cfg.epoch_steps;
  // one pass over the task's training set (a DataLoader's length): images of the task, or for
  // MQAR Zoology's 100 000 training examples
  const int64_t n = fmnist ? fmnist->train_count(cfg.task == "fmnist-marathon" ? task : -1) : 100000;
  return std::max<int64_t>(1, (n + cfg.batch - 1) / cfg.batch);
}

template <class T>
StepStats Session<T>::train(int64_t step) {
  fill_train_batch(step);
  // where the step is in the schedule: task, visit of a task, epoch within the visit
  const bool marathon = cfg.task == "fmnist-marathon";
  const int64_t in_visit = marathon ? step % cfg.task_steps : step;
  pilf.task = marathon ? task_of(step) : 0;
  pilf.visit = marathon ? step / cfg.task_steps : 0;
  pilf.epoch = in_visit / epoch_steps(pilf.task) + 1;
  return train_step(model, opt, batch, step_cfg, step, &pilf);
}

template class Session<float>;
template class Session<double>;

}  // namespace hyperrnn
