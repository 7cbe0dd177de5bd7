// AdamW, clipping and schedule.
#include "nn/adamw.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "parallel/threads.hpp"

namespace hyperrnn::nn {

template <class T>
AdamW<T>::AdamW(const ParamTable& table, AdamWConfig cfg)
    : m(static_cast<size_t>(table.total()), T(0)),
      v(static_cast<size_t>(table.total()), T(0)),
      tensor_steps(static_cast<size_t>(table.size()), 0),
      table_(table),
      cfg_(cfg) {}

template <class T>
void AdamW<T>::step(T* params, const T* grads, double lr) {
  const double all[3] = {lr, lr, lr};
  step(params, grads, all, nullptr);
}

namespace {
// One block's update, elementwise in T (cloned for AVX2: the same IEEE operations lane by lane,
// so every ISA gives the same bits; -ffp-contract=off keeps FMA out).
template <class T>
__attribute__((target_clones("avx512f", "avx2", "default")))
void adamw_block(T* __restrict p, const T* __restrict g, T* __restrict mm, T* __restrict vv, int64_t n, T b1, T b2,
                 T eps, T step_size, T decay, T sqrt_bc2) {
  for (int64_t i = 0; i < n; ++i) {
    p[i] *= decay;
    mm[i] = b1 * mm[i] + (T(1) - b1) * g[i];
    vv[i] = b2 * vv[i] + (T(1) - b2) * g[i] * g[i];
    p[i] -= step_size * mm[i] / (std::sqrt(vv[i]) / sqrt_bc2 + eps);
  }
}
}  // namespace

template <class T>
void AdamW<T>::step(T* params, const T* grads, const double lr_by_kind[3], const uint8_t* skip) {
  ++t_;
  const T b1 = static_cast<T>(cfg_.beta1), b2 = static_cast<T>(cfg_.beta2);
  const T eps = static_cast<T>(cfg_.eps);
  // Each tensor's constants first, in order; then the elementwise update in blocks of at most
  // kBlock elements of one tensor, one block per work item on the rank's threads (elementwise, so
  // no value depends on the blocks).
  constexpr int64_t kBlock = 16384;
  blocks_.clear();
  for (int ti = 0; ti < table_.size(); ++ti) {
    if ((skip && skip[ti]) || !table_[ti].held()) continue;  // another rank's expert is not here
    // bias correction by the tensor's own number of updates (as torch.optim.AdamW's per-parameter
    // step): an SMK-dropped expert resumes where its moments left off
    const int64_t tt = ++tensor_steps[static_cast<size_t>(ti)];
    const double bc1 = 1.0 - std::pow(cfg_.beta1, static_cast<double>(tt));
    const T sqrt_bc2 = static_cast<T>(std::sqrt(1.0 - std::pow(cfg_.beta2, static_cast<double>(tt))));
    const TensorInfo& t = table_[ti];
    const double lr = lr_by_kind[static_cast<int>(t.kind)] * t.lr_scale;
    const T step_size = static_cast<T>(lr / bc1);
    const T decay = static_cast<T>(t.decay ? 1.0 - lr * cfg_.weight_decay : 1.0);
    for (int64_t b0 = t.offset; b0 < t.offset + t.size; b0 += kBlock)
      blocks_.push_back({b0, std::min(t.offset + t.size, b0 + kBlock), step_size, decay, sqrt_bc2});
  }
  const std::vector<Block>& blocks = blocks_;
  threads().run(static_cast<int>(blocks.size()), [&](int k, int) {
    const Block& bl = blocks[static_cast<size_t>(k)];
    adamw_block(params + bl.begin, grads + bl.begin, m.data() + bl.begin, v.data() + bl.begin, bl.end - bl.begin,
                b1, b2, eps, bl.step_size, bl.decay, bl.sqrt_bc2);
  });
}

template <class T>
double grad_norm(const T* grads, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(grads[i]) * grads[i];
  return std::sqrt(s);
}

template <class T>
double clip_grads(T* grads, int64_t n, double norm, double clip) {
  if (clip <= 0.0 || norm <= clip) return 1.0;
  const double scale = clip / (norm + 1e-6);
  const T s = static_cast<T>(scale);
  for (int64_t i = 0; i < n; ++i) grads[i] *= s;
  return scale;
}

double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio) {
  if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (total <= warmup) return lr;
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(total - warmup));
  const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return lr * (min_ratio + (1.0 - min_ratio) * cosine);
}

template class AdamW<float>;
template class AdamW<double>;
template double grad_norm<float>(const float*, int64_t);
template double grad_norm<double>(const double*, int64_t);
template double clip_grads<float>(float*, int64_t, double, double);
template double clip_grads<double>(double*, int64_t, double, double);

}  // namespace hyperrnn::nn
