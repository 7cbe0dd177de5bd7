// AdamW (decoupled weight decay, PyTorch's update order), global-norm gradient clipping and the
// warm-up + cosine learning-rate schedule. Moments share the parameter table's layout.
#pragma once
#include <cstdint>
#include <vector>

#include "core/param_table.hpp"

namespace hyperrnn::nn {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.1;  // applied only to tensors whose table entry has decay = true
};

template <class T>
class AdamW {
 public:
  AdamW(const ParamTable& table, AdamWConfig cfg);
  // One step at learning rate lr over every tensor of the table; increments the step count.
  void step(T* params, const T* grads, double lr);
  // The general step: tensor i uses lr_by_kind[kind] (dense, expert, gating: PILR's groups), and
  // is left entirely alone (no decay, no moment update) where skip != null and skip[i] != 0
  // (SMK-dropped experts; its own update count, which drives its bias correction, stays too).
  // Increments the step count once.
  void step(T* params, const T* grads, const double lr_by_kind[3], const uint8_t* skip);
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }  // restoring a snapshot (with m, v and tensor_steps)
  std::vector<T> m, v;                // (table.total())
  std::vector<int64_t> tensor_steps;  // (table.size()) updates each tensor received (bias correction)

 private:
  const ParamTable& table_;
  AdamWConfig cfg_;
  int64_t t_ = 0;
  struct Block {  // the update's work items: a range of one tensor and its constants
    int64_t begin, end;
    T step_size, decay, sqrt_bc2;
  };
  std::vector<Block> blocks_;
};

// Global L2 norm of a gradient buffer, accumulated in double in index order.
template <class T>
double grad_norm(const T* grads, int64_t n);

// Scales grads by clip / (norm + 1e-6) when norm > clip (torch.nn.utils.clip_grad_norm_);
// clip <= 0 disables. Returns the scale applied (1 when unclipped).
template <class T>
double clip_grads(T* grads, int64_t n, double norm, double clip);

// Linear warm-up from lr/warmup to lr over `warmup` steps, then cosine decay to lr * min_ratio at
// `total` steps. step counts from 0.
double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio);

}  // namespace hyperrnn::nn
