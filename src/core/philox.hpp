// One Philox4x32-10 block (Salmon et al., SC'11) as a host/device inline function, shared by the
// CPU's CounterRng (core/rng.cpp) and the CUDA kernels that draw from the same streams (dropout
// masks), so that both produce the same words for the same counter and key.
#pragma once
#include <cstdint>

#include "core/host_device.hpp"

namespace hyperrnn::philox {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments

// c: the counter, replaced by the block's four words; k: the key.
HYPERRNN_HOST_DEVICE inline void block(uint32_t c[4], const uint32_t k[2]) {
  uint32_t k0 = k[0], k1 = k[1];
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c[2];
    const uint32_t y0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t y2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1;
    c[1] = static_cast<uint32_t>(p1);
    c[3] = static_cast<uint32_t>(p0);
    c[0] = y0;
    c[2] = y2;
  }
}

}  // namespace hyperrnn::philox
