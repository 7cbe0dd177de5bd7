// The routing experience buffer of PILF-2 (docs/pilf.md): a fixed-capacity store of
// (q, SMK action, priority) with prototypes (running means of the stored q's that matched them),
// priority-proportional replay with decay, and top-k cosine retrieval. Deterministic: ties go to
// the lower index, and sampling uses the counter RNG keyed by the step.
// Choices where the reference is loose (docs/architecture.md): a candidate that needs a new
// prototype but finds no free slot joins its best existing prototype, or is not stored when no
// prototype exists yet; duplicate replay indices decay a priority once.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace hyperrnn::pilf {

class ExperienceBuffer {
 public:
  ExperienceBuffer(int capacity, int dim, int experts, double priority_decay = 0.99);

  // Offers a batch: q (B,dim), action (B,experts) multi-hot, pi (B) in [0,1]. Priority = 1 - pi;
  // the candidate budget is floor(B (1 - mean pi)); candidates are the highest-priority samples.
  // Returns how many were stored.
  int add(const float* q, const uint8_t* action, const double* pi, int B);

  // n indices drawn with replacement, proportional to priority (uniform when all are zero), from
  // the stream (seed, Routing, step, stream) (stream: the MoE layer). Empty when the buffer is.
  std::vector<int> sample(int n, uint64_t seed, uint32_t step, uint32_t stream = 0) const;
  // Multiplies the priority of each distinct index by priority_decay.
  void decay(const std::vector<int>& indices);
  // For each query row, the k stored q most cosine-similar to it (descending, ties lower index),
  // zero-padded when fewer are stored: out (nq, k, dim).
  void retrieve(float* out, const float* query, int nq, int k) const;

  int size() const { return size_; }
  int capacity() const { return cap_; }
  int active_prototypes() const;
  const float* q(int i) const { return q_.data() + static_cast<size_t>(i) * dim_; }
  const uint8_t* action(int i) const { return act_.data() + static_cast<size_t>(i) * experts_; }
  float priority(int i) const { return prio_[static_cast<size_t>(i)]; }
  int prototype_of(int i) const { return proto_of_[static_cast<size_t>(i)]; }
  int prototype_count(int p) const { return proto_count_[static_cast<size_t>(p)]; }
  const float* prototype(int p) const { return proto_.data() + static_cast<size_t>(p) * dim_; }

  // Everything the buffer holds, for snapshots: the first `size` rows of the per-item arrays and
  // every prototype slot.
  struct State {
    int size = 0;
    std::vector<float> q;           // (size, dim)
    std::vector<int32_t> action;    // (size, experts) 0/1
    std::vector<float> priority;    // (size)
    std::vector<int32_t> prototype_of;     // (size), -1 none
    std::vector<float> prototypes;         // (capacity, dim)
    std::vector<int32_t> prototype_count;  // (capacity)
  };
  State state() const;
  // Restores a state of a buffer with the same capacity, dim and experts (checked).
  void restore(const State& s);
  int dim() const { return dim_; }
  int experts() const { return experts_; }

 private:
  double cosine(const float* a, const float* b) const;
  int cap_, dim_, experts_;
  double decay_;
  int size_ = 0;
  std::vector<float> q_;          // (cap, dim)
  std::vector<uint8_t> act_;      // (cap, experts)
  std::vector<float> prio_;       // (cap) float32, as the reference's priority_buffer
  std::vector<int> proto_of_;     // (cap), -1 none
  std::vector<float> proto_;      // (cap, dim) prototype means
  std::vector<int> proto_count_;  // (cap); a prototype is active while its count is > 0
};

}  // namespace hyperrnn::pilf
