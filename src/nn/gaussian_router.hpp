// The diagonal-Gaussian router's per-expert constants and its parameter gradients, element by
// element, shared by the CPU op (nn::gaussian_scores_forward and _backward) and the CUDA kernels
// (src/cuda/kernels.cu), so that both evaluate the same expressions in the same order.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/host_device.hpp"

namespace hyperrnn::nn {

// 0.5 log(2 pi) as the double that libm's log gives (a literal, so that the GPU uses the same bits)
constexpr double kHalfLog2Pi = 0x1.d67f1c864beb4p-1;

// One expert's C channels: w = exp(-2 log_sigma), m = mu w, and returns its constant
// c = sum_i (-mu_i^2 w_i / 2 - log_sigma_i - log(2 pi) / 2), summed left to right in double.
template <class T>
HYPERRNN_HOST_DEVICE inline T gaussian_expert_wmc(T* w, T* m, const T* mu, const T* log_sigma, int C) {
  double ce = 0.0;
  for (int i = 0; i < C; ++i) {
    const double wi = exp(-2.0 * static_cast<double>(log_sigma[i]));
    w[i] = static_cast<T>(wi);
    m[i] = static_cast<T>(mu[i] * wi);
    ce += -0.5 * static_cast<double>(mu[i]) * mu[i] * wi - log_sigma[i] - kHalfLog2Pi;
  }
  return static_cast<T>(ce);
}

// The gradients of mu and log_sigma at one (expert, channel) from G^T x, G^T x^2 and the column
// sum gs of the score gradient G (accumulated, +=).
template <class T>
HYPERRNN_HOST_DEVICE inline void gaussian_param_grad(T& dmu, T& dlog_sigma, T w, T mu, T gx, T gx2, T gs) {
  dmu += w * (gx - mu * gs);
  dlog_sigma += w * (gx2 - T(2) * mu * gx + mu * mu * gs) - gs;
}

}  // namespace hyperrnn::nn
