// Multi-Query Associative Recall (Zoology, Arora et al. 2023), generated sample by sample from the
// counter RNG keyed by (seed, purpose, step, global sample index): the data never depends on the
// number of processes or on generation order. See ../shared/reference/mqar.md.
#pragma once
#include <cstdint>
#include <vector>

#include "core/batch.hpp"
#include "core/rng.hpp"

namespace hyperrnn {

struct MqarConfig {
  int vocab = 8192;       // V: keys from [1, V/2), values from [V/2, V)
  int seq_len = 64;       // L
  int kv_pairs = 8;       // D, 4D <= L
  double power_a = 0.01;  // query-gap power law p(s) ~ a (s+1)^(a-1)
  bool random_filler = true;  // filler tokens uniform over [0,V) (generator default) or 0
};

class MqarGenerator {
 public:
  explicit MqarGenerator(const MqarConfig& cfg);
  // One sample into tokens (L) and targets (L, -1 where not scored).
  void sample(int32_t* tokens, int32_t* targets, uint64_t seed, RngPurpose purpose, uint32_t step,
              uint32_t index);
  // count samples with global indices first..first+count-1 into a batch of B = count.
  void fill(Batch& batch, uint64_t seed, RngPurpose purpose, uint32_t step, uint32_t first, int count);
  int slots() const { return static_cast<int>(weights_.size()); }
  const MqarConfig& config() const { return cfg_; }

 private:
  MqarConfig cfg_;
  std::vector<double> weights_;  // (space) unnormalised slot probabilities
  std::vector<double> scratch_;  // (space) remaining weights during sampling without replacement
  std::vector<int32_t> picked_;  // (D)
};

}  // namespace hyperrnn
