// Counter-based RNG (Philox4x32-10, Salmon et al., SC'11): every random number is a pure function
// of (seed, purpose, step, index, draw), so data and initialisation never depend on the rank count
// or on the order in which samples are produced. No global state.
#pragma once
#include <array>
#include <cstdint>

namespace hyperrnn {

// What a stream is for; part of the counter so that streams never overlap.
enum class RngPurpose : uint32_t {
  Init = 1,        // parameter initialisation (step = tensor index in the table)
  TrainData = 2,   // training samples (step = training step, index = global sample index)
  HeldOut = 3,     // held-out evaluation samples (step = 0, index = held-out sample index)
  Routing = 4,     // routing / buffer decisions (experience-buffer replay)
  TestData = 5,    // unit tests
  Dropout = 6,     // main-model dropout (step = training step, index = global sample x sites + site)
  GatingDropout = 7,  // GatingTransformer dropout on the routing pass (as Dropout)
  MetaDropout = 8,    // GatingTransformer dropout in meta-training (index = replay item x sites + site)
};

using Philox4x32Ctr = std::array<uint32_t, 4>;
using Philox4x32Key = std::array<uint32_t, 2>;

// One Philox4x32-10 block.
Philox4x32Ctr philox4x32_10(Philox4x32Ctr ctr, Philox4x32Key key);

// A stream keyed by (seed, purpose, step, index); successive draws advance a 32-bit sub-counter,
// 4 words per block (2^34 words per stream).
class CounterRng {
 public:
  CounterRng(uint64_t seed, RngPurpose purpose, uint32_t step, uint32_t index);
  uint32_t next_u32();
  // Words 4 first .. 4 (first + kLanes) - 1 of this stream (the words next_u32 returns from block
  // `first` on), kLanes Philox blocks at once (vectorised): out[j][l] = word j of block first + l.
  static constexpr int kLanes = 16;
  void blocks(uint32_t first, uint32_t out[4][kLanes]) const;
  // Uniform in [0, 1) with 24 random bits.
  float uniform();
  // Uniform in [0, 1) with 53 random bits.
  double uniform_double();
  // Integer in [0, n) by multiply-shift (bias below n / 2^32; n here is a vocabulary or a slot
  // count, so the bias is < 1e-5 and identical on every platform).
  uint32_t below(uint32_t n);
  // Standard normal by Box-Muller in double precision.
  double normal();

 private:
  Philox4x32Key key_;
  Philox4x32Ctr ctr_;
  Philox4x32Ctr block_{};
  int used_ = 4;
};

namespace detail {
// The bodies behind CounterRng::blocks, which takes the best the CPU has: path 0 portable, 1 AVX2,
// 2 AVX-512F. Public so that tests check that every path the CPU has gives the portable one's words;
// returns false, writing nothing, for a path this CPU (or build) lacks.
void philox_lanes_portable(uint32_t out[4][CounterRng::kLanes], Philox4x32Ctr ctr, Philox4x32Key key);
bool philox_lanes_path(int path, uint32_t out[4][CounterRng::kLanes], Philox4x32Ctr ctr, Philox4x32Key key);
}  // namespace detail

}  // namespace hyperrnn
