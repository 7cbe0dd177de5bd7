// MQAR sample generation.
#include "tasks/mqar.hpp"

#include <cmath>

#include "core/error.hpp"

namespace hyperrnn {

MqarGenerator::MqarGenerator(const MqarConfig& cfg) : cfg_(cfg) {
  const int D = cfg.kv_pairs, L = cfg.seq_len, V = cfg.vocab;
  HYPERRNN_CHECK(D >= 1 && 4 * D <= L, "MQAR needs 1 <= kv_pairs and 4 * kv_pairs <= seq_len");
  HYPERRNN_CHECK(V > L, "MQAR needs vocab > seq_len");
  const int space = (L - 2 * D) / 2;
  weights_.resize(static_cast<size_t>(space));
  for (int s = 0; s < space; ++s)
    weights_[static_cast<size_t>(s)] = cfg.power_a * std::pow(s + 1.0, cfg.power_a - 1.0);
  scratch_.resize(weights_.size());
  picked_.resize(static_cast<size_t>(D));
}

void MqarGenerator::sample(int32_t* tokens, int32_t* targets, uint64_t seed, RngPurpose purpose,
                           uint32_t step, uint32_t index) {
  const int D = cfg_.kv_pairs, L = cfg_.seq_len, V = cfg_.vocab;
  const uint32_t half = static_cast<uint32_t>(V / 2);
  CounterRng rng(seed, purpose, step, index);
  for (int t = 0; t < L; ++t) targets[t] = -1;
  // D distinct keys from [1, V/2) and D distinct values from [V/2, V), by rejection.
  for (int j = 0; j < D; ++j) {
    int32_t k;
    bool dup;
    do {
      k = static_cast<int32_t>(1 + rng.below(half - 1));
      dup = false;
      for (int i = 0; i < j; ++i) dup = dup || tokens[2 * i] == k;
    } while (dup);
    tokens[2 * j] = k;
  }
  for (int j = 0; j < D; ++j) {
    int32_t v;
    bool dup;
    do {
      v = static_cast<int32_t>(half + rng.below(static_cast<uint32_t>(V) - half));
      dup = false;
      for (int i = 0; i < j; ++i) dup = dup || tokens[2 * i + 1] == v;
    } while (dup);
    tokens[2 * j + 1] = v;
  }
  // D distinct query slots drawn one at a time from the renormalised remaining weights.
  scratch_ = weights_;
  for (int j = 0; j < D; ++j) {
    double total = 0.0;
    for (double w : scratch_) total += w;
    const double u = rng.uniform_double() * total;
    double acc = 0.0;
    int pick = -1;
    for (size_t s = 0; s < scratch_.size(); ++s) {
      if (scratch_[s] <= 0.0) continue;
      acc += scratch_[s];
      pick = static_cast<int>(s);
      if (u < acc) break;
    }
    scratch_[static_cast<size_t>(pick)] = 0.0;
    picked_[static_cast<size_t>(j)] = pick;
  }
  for (int t = 2 * D; t < L; ++t)
    tokens[t] = cfg_.random_filler ? static_cast<int32_t>(rng.below(static_cast<uint32_t>(V))) : 0;
  // Query j: key k_j at position 2D + 2 slot_j, target v_j at the same position.
  for (int j = 0; j < D; ++j) {
    const int pos = 2 * D + 2 * picked_[static_cast<size_t>(j)];
    tokens[pos] = tokens[2 * j];
    targets[pos] = tokens[2 * j + 1];
  }
}

void MqarGenerator::fill(Batch& batch, uint64_t seed, RngPurpose purpose, uint32_t step,
                         uint32_t first, int count) {
  const int L = cfg_.seq_len;
  batch.B = count;
  batch.T = L;
  HYPERRNN_CHECK(batch.tokens.size() >= static_cast<size_t>(count) * L, "batch buffer too small");
  for (int b = 0; b < count; ++b)
    sample(batch.tokens.data() + static_cast<size_t>(b) * L,
           batch.targets.data() + static_cast<size_t>(b) * L, seed, purpose, step,
           first + static_cast<uint32_t>(b));
}

}  // namespace hyperrnn
