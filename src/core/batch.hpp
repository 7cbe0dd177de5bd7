// One batch of token sequences with next-token targets; target -1 marks a position that is not
// scored (the ignore mask). Produced by src/tasks, consumed by src/models.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace hyperrnn {

struct Batch {
  int B = 0;                      // samples
  int T = 0;                      // positions per sample
  std::vector<int32_t> tokens;    // (B,T)
  std::vector<int32_t> targets;   // (B,T), -1 = ignored; image tasks: the label at t = 0
  std::vector<float> images;      // (B,H,W) image tasks only, normalised pixels
  // Only outputs [class_lo, class_hi) compete in the softmax (task-incremental heads); hi 0 = all.
  int class_lo = 0, class_hi = 0;
  // The canonical shards these B samples belong to (src/parallel/layout.hpp): each one's sample
  // count, in order, summing to B. Empty = one shard.
  std::vector<int> shard_samples;
  // Which training step these samples belong to (keys dropout; -1 = an evaluation batch: no
  // dropout) and the global index of sample 0 in the step's batch.
  int64_t step = -1;
  int64_t first = 0;
  void resize(int b, int t) {
    B = b;
    T = t;
    tokens.assign(static_cast<size_t>(b) * t, 0);
    targets.assign(static_cast<size_t>(b) * t, -1);
  }
};

}  // namespace hyperrnn
