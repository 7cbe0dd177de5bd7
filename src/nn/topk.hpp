// The MoE router's top-k selection and softmax over the chosen scores for one row, its backward,
// and the dynamic top-k's gates, shared by the CPU ops (nn::topk_softmax_forward and _backward,
// nn::dynamic_topk_gates) and the CUDA kernels (src/cuda/kernels.cu), so that both choose the same
// experts and compute the same gates and gradients from the same expressions.
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

// The softmax's backward over the K chosen scores of one row: ds (E) = 0 except at the chosen
// experts, g (dg - <g, dg>) with the dot product in double.
template <class T>
HYPERRNN_HOST_DEVICE inline void topk_softmax_backward_row(T* ds, const T* dg, const T* g, const int32_t* id, int E, int K) {
  for (int e = 0; e < E; ++e) ds[e] = T(0);
  double dot = 0.0;
  for (int j = 0; j < K; ++j) dot += static_cast<double>(g[j]) * dg[j];
  for (int j = 0; j < K; ++j) ds[id[j]] = static_cast<T>(g[j] * (dg[j] - dot));
}

// Dynamic top-k, one row whose k is below K: the softmax over its first k chosen scores (double
// exps and sum), the other K - k gates 0.
template <class T>
HYPERRNN_HOST_DEVICE inline void dynamic_gates_row(T* g, const T* sc, const int32_t* id, int k, int K) {
  double z = 0.0;
  for (int j = 0; j < k; ++j) z += exp(static_cast<double>(sc[id[j]] - sc[id[0]]));
  for (int j = 0; j < K; ++j) g[j] = j < k ? static_cast<T>(exp(static_cast<double>(sc[id[j]] - sc[id[0]])) / z) : T(0);
}

}  // namespace hyperrnn::nn
