// The MoE router's top-k selection and softmax over the chosen scores for one row, shared by the
// CPU op (nn::topk_softmax_forward) and the CUDA kernel (src/cuda/kernels.cu), so that both choose
// the same experts and compute the same gates from the same expressions.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/host_device.hpp"

namespace hyperrnn::nn {

// K passes over the E scores of one row; strict '>' keeps the lower index on ties. The gates are
// the softmax over the chosen scores, in double.
template <class T>
HYPERRNN_HOST_DEVICE inline void topk_softmax_row(int32_t* id, T* g, const T* s, int E, int K) {
  for (int j = 0; j < K; ++j) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      bool taken = false;
      for (int l = 0; l < j; ++l) taken = taken || id[l] == e;
      if (!taken && (best < 0 || s[e] > s[best])) best = e;
    }
    id[j] = best;
  }
  const T mx = s[id[0]];
  double z = 0.0;
  for (int j = 0; j < K; ++j) z += exp(static_cast<double>(s[id[j]] - mx));
  for (int j = 0; j < K; ++j) g[j] = static_cast<T>(exp(static_cast<double>(s[id[j]] - mx)) / z);
}

}  // namespace hyperrnn::nn
