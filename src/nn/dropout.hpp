// Dropout (torch.nn.Dropout semantics: in training each element is zeroed with probability p and
// the others scaled by 1/(1-p); in evaluation nothing happens) with masks from the counter RNG, so
// that a mask is a pure function of (seed, purpose, step, index) and never of the rank or thread
// count. Leaves out: where the keys come from (the models say which sample and site a mask is for).
#pragma once
#include <cstdint>

#include "core/rng.hpp"

namespace hyperrnn::nn {

// A mask's stream: stream (seed, purpose, step, index), one 32-bit word per element, kept where
// word >= threshold(p) = floor(p 2^32) (keep probability 1 - p to within 2^-32).
struct DropoutKey {
  uint64_t seed = 0;
  RngPurpose purpose = RngPurpose::Dropout;
  uint32_t step = 0;
};

uint32_t dropout_threshold(double p);

// keep (n) = 1 for the elements kept, 0 for the dropped ones: the first n words of the stream.
void dropout_mask(uint8_t* keep, int64_t n, const DropoutKey& key, uint32_t index, uint32_t threshold);

// out = inp * keep * scale (in place allowed); scale = 1/(1-p).
template <class T>
void dropout_forward(T* out, const T* inp, const uint8_t* keep, T scale, int64_t n);
// dinp = dout * keep * scale, assigned (in place allowed).
template <class T>
void dropout_backward(T* dinp, const T* dout, const uint8_t* keep, T scale, int64_t n);

}  // namespace hyperrnn::nn
