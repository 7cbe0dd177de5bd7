// Experience buffer. Sizes are small (capacity ~128, batch ~1024): plain loops, no allocation
// beyond per-call index vectors.
#include "pilf/experience_buffer.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "nn/lanes.hpp"

namespace hyperrnn::pilf {

ExperienceBuffer::ExperienceBuffer(int capacity, int dim, int experts, double priority_decay)
    : cap_(capacity), dim_(dim), experts_(experts), decay_(priority_decay),
      q_(static_cast<size_t>(capacity) * dim, 0.f), act_(static_cast<size_t>(capacity) * experts, 0),
      prio_(static_cast<size_t>(capacity), 0.0f), proto_of_(static_cast<size_t>(capacity), -1),
      proto_(static_cast<size_t>(capacity) * dim, 0.f), proto_count_(static_cast<size_t>(capacity), 0) {
  HYPERRNN_CHECK(capacity > 0 && dim > 0 && experts > 0, "experience buffer needs positive sizes");
}

int ExperienceBuffer::active_prototypes() const {
  return static_cast<int>(std::count_if(proto_count_.begin(), proto_count_.end(), [](int c) { return c > 0; }));
}

namespace {
// a . b in double, in lanes.hpp's fixed order (vectorised; the same on every ISA).
__attribute__((target_clones("avx512f", "avx2", "default"))) double dot(const float* __restrict a, const float* __restrict b, int n) {
  return nn::lane_sum(n, [&](int i) { return static_cast<double>(a[i]) * b[i]; });
}

double cosine_from(double ab, double aa, double bb) {
  return ab / std::max(std::sqrt(aa) * std::sqrt(bb), 1e-12);  // F.normalize's eps
}
}  // namespace

double ExperienceBuffer::cosine(const float* a, const float* b) const {
  return cosine_from(dot(a, b, dim_), dot(a, a, dim_), dot(b, b, dim_));
}

int ExperienceBuffer::add(const float* q, const uint8_t* action, const double* pi, int B) {
  if (B <= 0) return 0;
  double mean_pi = 0;  // of the float32 PIs (the reference's pi_scores tensor)
  for (int b = 0; b < B; ++b) mean_pi += static_cast<float>(pi[b]);
  mean_pi /= B;
  const int budget = std::min(B, static_cast<int>(std::floor(B * (1.0 - mean_pi))));
  if (budget <= 0) return 0;
  // 1. candidates: the `budget` highest priorities, descending, ties by lower sample index
  std::vector<int> cand(static_cast<size_t>(B));
  std::iota(cand.begin(), cand.end(), 0);
  std::stable_sort(cand.begin(), cand.end(), [pi](int a, int b) {
    return 1.0f - static_cast<float>(pi[a]) > 1.0f - static_cast<float>(pi[b]);
  });
  cand.resize(static_cast<size_t>(budget));
  // priorities in float32, as the reference's tensors: 1 - PI rounds to 1 for PI < 3e-8
  auto prio_of = [pi](int c) { return 1.0f - static_cast<float>(pi[c]); };
  // 2. prototype matching against the prototypes active before this call
  std::vector<int> proto(static_cast<size_t>(budget), -1);
  std::vector<char> needs_new(static_cast<size_t>(budget), 1);
  for (int i = 0; i < budget; ++i) {
    double best = -2.0;
    for (int p = 0; p < cap_; ++p) {
      if (proto_count_[static_cast<size_t>(p)] <= 0) continue;
      const double s = cosine(q + static_cast<size_t>(cand[static_cast<size_t>(i)]) * dim_, prototype(p));
      if (s > best) {
        best = s;
        proto[static_cast<size_t>(i)] = p;
      }
    }
    needs_new[static_cast<size_t>(i)] = proto[static_cast<size_t>(i)] < 0 || best < prio_of(cand[static_cast<size_t>(i)]);
  }
  // 3. new prototypes from free slots (ascending), to the highest-priority candidates first
  //    (candidates are already in descending priority order)
  int free_slot = 0;  // inactive slots are claimed in ascending order, each at most once
  for (int i = 0; i < budget; ++i) {
    if (!needs_new[static_cast<size_t>(i)]) continue;
    while (free_slot < cap_ && proto_count_[static_cast<size_t>(free_slot)] > 0) ++free_slot;
    if (free_slot < cap_) proto[static_cast<size_t>(i)] = free_slot++;
    // no free slot: keep the best existing prototype (or -1: not stored)
  }
  // 4. where each candidate goes
  std::vector<std::pair<int, int>> writes;  // (buffer slot, candidate position)
  if (size_ < cap_) {
    for (int i = 0; i < budget && size_ + static_cast<int>(writes.size()) < cap_; ++i)
      if (proto[static_cast<size_t>(i)] >= 0) writes.emplace_back(size_ + static_cast<int>(writes.size()), i);
  } else {
    std::vector<int> low(static_cast<size_t>(cap_));
    std::iota(low.begin(), low.end(), 0);
    std::stable_sort(low.begin(), low.end(), [this](int a, int b) { return prio_[static_cast<size_t>(a)] < prio_[static_cast<size_t>(b)]; });
    int j = 0;
    for (int i = 0; i < budget && j < cap_; ++i) {
      if (proto[static_cast<size_t>(i)] < 0) continue;
      if (prio_of(cand[static_cast<size_t>(i)]) > prio_[static_cast<size_t>(low[static_cast<size_t>(j)])])
        writes.emplace_back(low[static_cast<size_t>(j)], i);
      ++j;  // the i-th highest candidate is compared with the j-th lowest stored item
    }
  }
  // 5. evict, write, and update the prototypes' running means, in the reference's order: every
  //    evicted item leaves its prototype first, every new item then joins its own, and a prototype
  //    that gained n items is (mean * (count - n) + sum of their q) / count with its final count
  //    (its mean still holding the evicted items': the reference's approximation, kept).
  for (const auto& [slot, i] : writes) {
    const int old = proto_of_[static_cast<size_t>(slot)];
    if (slot < size_ && old >= 0) --proto_count_[static_cast<size_t>(old)];
  }
  std::vector<int> gained(static_cast<size_t>(cap_), 0);
  std::vector<double> qsum;
  for (const auto& [slot, i] : writes) {
    const int c = cand[static_cast<size_t>(i)], p = proto[static_cast<size_t>(i)];
    std::copy_n(q + static_cast<size_t>(c) * dim_, dim_, q_.begin() + static_cast<std::ptrdiff_t>(slot) * dim_);
    std::copy_n(action + static_cast<size_t>(c) * experts_, experts_, act_.begin() + static_cast<std::ptrdiff_t>(slot) * experts_);
    prio_[static_cast<size_t>(slot)] = prio_of(c);
    proto_of_[static_cast<size_t>(slot)] = p;
    ++proto_count_[static_cast<size_t>(p)];
    ++gained[static_cast<size_t>(p)];
  }
  for (int p = 0; p < cap_; ++p) {
    const int n = gained[static_cast<size_t>(p)];
    if (n == 0) continue;
    qsum.assign(static_cast<size_t>(dim_), 0.0);
    for (const auto& [slot, i] : writes)
      if (proto[static_cast<size_t>(i)] == p)
        for (int d = 0; d < dim_; ++d) qsum[static_cast<size_t>(d)] += q[static_cast<size_t>(cand[static_cast<size_t>(i)]) * dim_ + d];
    const int count = proto_count_[static_cast<size_t>(p)];
    float* m = proto_.data() + static_cast<size_t>(p) * dim_;
    for (int d = 0; d < dim_; ++d)
      m[d] = static_cast<float>((static_cast<double>(m[d]) * (count - n) + qsum[static_cast<size_t>(d)]) / count);
  }
  size_ = std::min(cap_, size_ + (size_ < cap_ ? static_cast<int>(writes.size()) : 0));
  // 6. prototypes left without members are deactivated and cleared
  for (int p = 0; p < cap_; ++p)
    if (proto_count_[static_cast<size_t>(p)] <= 0) {
      proto_count_[static_cast<size_t>(p)] = 0;
      std::fill_n(proto_.begin() + static_cast<std::ptrdiff_t>(p) * dim_, dim_, 0.f);
    }
  return static_cast<int>(writes.size());
}

ExperienceBuffer::State ExperienceBuffer::state() const {
  State s;
  s.size = size_;
  const size_t n = static_cast<size_t>(size_);
  s.q.assign(q_.begin(), q_.begin() + static_cast<std::ptrdiff_t>(n * static_cast<size_t>(dim_)));
  s.action.assign(act_.begin(), act_.begin() + static_cast<std::ptrdiff_t>(n * static_cast<size_t>(experts_)));
  s.priority.assign(prio_.begin(), prio_.begin() + static_cast<std::ptrdiff_t>(n));
  s.prototype_of.assign(proto_of_.begin(), proto_of_.begin() + static_cast<std::ptrdiff_t>(n));
  s.prototypes = proto_;
  s.prototype_count.assign(proto_count_.begin(), proto_count_.end());
  return s;
}

void ExperienceBuffer::restore(const State& s) {
  const size_t n = static_cast<size_t>(s.size);
  HYPERRNN_CHECK(s.size >= 0 && s.size <= cap_ && s.q.size() == n * static_cast<size_t>(dim_) &&
                     s.action.size() == n * static_cast<size_t>(experts_) && s.priority.size() == n &&
                     s.prototype_of.size() == n && s.prototypes.size() == proto_.size() &&
                     s.prototype_count.size() == proto_count_.size(),
                 "experience buffer state does not fit this buffer (capacity, width or experts differ)");
  size_ = s.size;
  std::copy(s.q.begin(), s.q.end(), q_.begin());
  std::copy(s.action.begin(), s.action.end(), act_.begin());
  std::copy(s.priority.begin(), s.priority.end(), prio_.begin());
  std::copy(s.prototype_of.begin(), s.prototype_of.end(), proto_of_.begin());
  proto_ = s.prototypes;
  proto_count_.assign(s.prototype_count.begin(), s.prototype_count.end());
}

std::vector<int> ExperienceBuffer::sample(int n, uint64_t seed, uint32_t step, uint32_t stream) const {
  std::vector<int> out;
  if (size_ == 0 || n <= 0) return out;
  CounterRng rng(seed, RngPurpose::Routing, step, stream);
  double total = 0;
  for (int i = 0; i < size_; ++i) total += prio_[static_cast<size_t>(i)];
  for (int k = 0; k < n; ++k) {
    if (total <= 0.0) {
      out.push_back(static_cast<int>(rng.below(static_cast<uint32_t>(size_))));
      continue;
    }
    const double u = rng.uniform_double() * total;
    double acc = 0;
    int pick = size_ - 1;
    for (int i = 0; i < size_; ++i) {
      acc += prio_[static_cast<size_t>(i)];
      if (u < acc) {
        pick = i;
        break;
      }
    }
    out.push_back(pick);
  }
  return out;
}

void ExperienceBuffer::decay(const std::vector<int>& indices) {
  std::vector<int> u = indices;
  std::sort(u.begin(), u.end());
  u.erase(std::unique(u.begin(), u.end()), u.end());
  const float d = static_cast<float>(decay_);  // a float32 tensor times a Python float: in float32
  for (int i : u) prio_[static_cast<size_t>(i)] *= d;
}

void ExperienceBuffer::retrieve(float* out, const float* query, int nq, int k) const {
  std::fill_n(out, static_cast<size_t>(nq) * k * dim_, 0.f);
  const int kk = std::min(k, size_);
  std::vector<double> bb(static_cast<size_t>(size_));  // each stored q's squared norm, once
  for (int i = 0; i < size_; ++i) bb[static_cast<size_t>(i)] = dot(q(i), q(i), dim_);
  std::vector<int> order(static_cast<size_t>(size_));
  std::vector<double> sim(static_cast<size_t>(size_));
  for (int r = 0; r < nq; ++r) {
    const float* a = query + static_cast<size_t>(r) * dim_;
    const double aa = dot(a, a, dim_);
    for (int i = 0; i < size_; ++i) sim[static_cast<size_t>(i)] = cosine_from(dot(a, q(i), dim_), aa, bb[static_cast<size_t>(i)]);
    std::iota(order.begin(), order.end(), 0);
    // the k first of a stable descending sort: (similarity descending, index ascending) is a strict
    // total order, so a partial sort gives the same k
    std::partial_sort(order.begin(), order.begin() + kk, order.end(), [&sim](int x, int y) {
      const double sx = sim[static_cast<size_t>(x)], sy = sim[static_cast<size_t>(y)];
      return sx > sy || (sx == sy && x < y);
    });
    for (int j = 0; j < kk; ++j)
      std::copy_n(q(order[static_cast<size_t>(j)]), dim_, out + (static_cast<size_t>(r) * k + j) * dim_);
  }
}

}  // namespace hyperrnn::pilf
