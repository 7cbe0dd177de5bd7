// Fashion-MNIST task: per-task index lists, counter-RNG sampling, batch filling.
#include "tasks/fmnist.hpp"

#include "core/error.hpp"
#include "core/rng.hpp"
#include "tasks/idx.hpp"

namespace hyperrnn {

namespace {
void normalise(std::vector<float>& out, const IdxImages& im) {
  out.resize(im.pixels.size());
  for (size_t i = 0; i < im.pixels.size(); ++i)
    out[i] = (static_cast<float>(im.pixels[i]) / 255.0f - FmnistTask::kMean) / FmnistTask::kStd;
}
}  // namespace

FmnistTask::FmnistTask(const std::string& dir, int classes_per_task, bool task_heads)
    : cpt_(classes_per_task), task_heads_(task_heads) {
  HYPERRNN_CHECK(cpt_ >= 1 && kClasses % cpt_ == 0, "classes per task must divide 10");
  LabelledImages tr = load_fashion_mnist(dir, "train");
  LabelledImages te = load_fashion_mnist(dir, "test");
  for (const LabelledImages* s : {&tr, &te})
    if (s->images.rows != kH || s->images.cols != kW)
      throw UsageError("Fashion-MNIST in '" + dir + "': images are " + std::to_string(s->images.rows) + "x" +
                       std::to_string(s->images.cols) + ", expected 28x28");
  normalise(train_px_, tr.images);
  normalise(test_px_, te.images);
  train_y_ = std::move(tr.labels.labels);
  test_y_ = std::move(te.labels.labels);
  const int T = tasks();
  train_idx_.assign(static_cast<size_t>(T + 1), {});
  test_idx_.assign(static_cast<size_t>(T + 1), {});
  for (size_t i = 0; i < train_y_.size(); ++i) {
    train_idx_[static_cast<size_t>(train_y_[i] / cpt_)].push_back(static_cast<int>(i));
    train_idx_[static_cast<size_t>(T)].push_back(static_cast<int>(i));
  }
  for (size_t i = 0; i < test_y_.size(); ++i) {
    test_idx_[static_cast<size_t>(test_y_[i] / cpt_)].push_back(static_cast<int>(i));
    test_idx_[static_cast<size_t>(T)].push_back(static_cast<int>(i));
  }
  for (int t = 0; t <= T; ++t)
    if (train_idx_[static_cast<size_t>(t)].empty() || test_idx_[static_cast<size_t>(t)].empty())
      throw UsageError("Fashion-MNIST in '" + dir + "': task " + std::to_string(t) + " has no samples");
}

void FmnistTask::put(Batch& batch, int b, const std::vector<float>& px, int index, int label) const {
  const size_t n = static_cast<size_t>(kH) * kW;
  std::copy(px.begin() + static_cast<int64_t>(index) * kH * kW, px.begin() + static_cast<int64_t>(index + 1) * kH * kW,
            batch.images.begin() + static_cast<int64_t>(b) * static_cast<int64_t>(n));
  for (int t = 0; t < batch.T; ++t) batch.targets[static_cast<size_t>(b) * batch.T + t] = t == 0 ? label : -1;
}

void FmnistTask::set_range(Batch& batch, int task) const {
  const bool restrict = task_heads_ && task >= 0;
  batch.class_lo = restrict ? task * cpt_ : 0;
  batch.class_hi = restrict ? (task + 1) * cpt_ : 0;
}

void FmnistTask::fill_train(Batch& batch, uint64_t seed, uint32_t step, uint32_t first, int B, int task) const {
  HYPERRNN_CHECK(B <= static_cast<int>(batch.images.size() / (kH * kW)), "batch too small");
  const std::vector<int>& idx = train_idx_[static_cast<size_t>(task < 0 ? tasks() : task)];
  batch.B = B;
  set_range(batch, task);
  for (int b = 0; b < B; ++b) {
    CounterRng rng(seed, RngPurpose::TrainData, step, first + static_cast<uint32_t>(b));
    const int i = idx[static_cast<size_t>(rng.below(static_cast<uint32_t>(idx.size())))];
    put(batch, b, train_px_, i, train_y_[static_cast<size_t>(i)]);
  }
}

int FmnistTask::test_count(int task) const { return static_cast<int>(test_idx_[static_cast<size_t>(task < 0 ? tasks() : task)].size()); }
int FmnistTask::train_count(int task) const { return static_cast<int>(train_idx_[static_cast<size_t>(task < 0 ? tasks() : task)].size()); }

void FmnistTask::fill_test(Batch& batch, int task, int first, int n) const {
  const std::vector<int>& idx = test_idx_[static_cast<size_t>(task < 0 ? tasks() : task)];
  HYPERRNN_CHECK(first >= 0 && first + n <= static_cast<int>(idx.size()), "test range out of bounds");
  batch.B = n;
  set_range(batch, task);
  for (int b = 0; b < n; ++b) {
    const int i = idx[static_cast<size_t>(first + b)];
    put(batch, b, test_px_, i, test_y_[static_cast<size_t>(i)]);
  }
}

}  // namespace hyperrnn
