// Fashion-MNIST as a training task: the whole 10-class problem (`fmnist`) or a marathon of tasks
// (`fmnist-marathon`), each a group of consecutive classes (0-1, 2-3, ... by default) trained in
// turn and repeated in cycles, PILF's continual-learning setting. Batches come from the counter RNG
// keyed by (seed, TrainData, step, sample), so data never depend on the number of ranks.
// Leaves out: the model (one 10-way head shared by every task: class-incremental) and scheduling.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/batch.hpp"

namespace hyperrnn {

class FmnistTask {
 public:
  static constexpr int kH = 28, kW = 28, kClasses = 10;
  // Pixel normalisation: (x / 255 - mean) / std with the training set's statistics.
  static constexpr float kMean = 0.2860f, kStd = 0.3530f;

  // Loads both splits from dir (UsageError naming the file on any problem).
  // classes_per_task must divide 10. task_heads: batches of one task let only that task's classes
  // compete (task-incremental); otherwise all 10 (class-incremental).
  FmnistTask(const std::string& dir, int classes_per_task, bool task_heads = false);

  int tasks() const { return kClasses / cpt_; }
  int classes_per_task() const { return cpt_; }
  // B training samples of `task` (-1: every class), uniformly with replacement: the samples with
  // global indices first..first+B-1 of the step's batch.
  void fill_train(Batch& batch, uint64_t seed, uint32_t step, uint32_t first, int B, int task) const;
  // Test samples [first, first + n) of `task` (-1: every class), in file order.
  int test_count(int task) const;
  void fill_test(Batch& batch, int task, int first, int n) const;
  int train_count(int task) const;

 private:
  void put(Batch& batch, int b, const std::vector<float>& px, int index, int label) const;
  void set_range(Batch& batch, int task) const;
  int cpt_;
  bool task_heads_;
  std::vector<float> train_px_, test_px_;  // (count, 784) normalised
  std::vector<uint8_t> train_y_, test_y_;
  std::vector<std::vector<int>> train_idx_, test_idx_;  // (tasks + 1): per task, then all (last)
};

}  // namespace hyperrnn
