// PI and tau.
#include "pilf/assessment.hpp"

#include <cmath>

namespace hyperrnn::pilf {

double predictive_integrity(const PiInputs& in, const PiConfig& cfg) {
  const double normalised_error = in.epsilon / (in.tau + 1e-9);
  const double cost = cfg.form == PiForm::Published
                          ? (1.0 - cfg.gamma) * normalised_error + cfg.gamma * in.surprise
                          : normalised_error + (1.0 - cfg.gamma) * in.expert_surprise + cfg.gamma * in.gating_surprise;
  return std::exp(-cfg.alpha * cost);
}

template <class T>
double mean_entropy(const T* probs, int N, int V) {
  if (N == 0) return 0.0;
  double total = 0.0;
  for (int n = 0; n < N; ++n) {
    const T* p = probs + static_cast<int64_t>(n) * V;
    double h = 0.0;
    for (int v = 0; v < V; ++v)
      if (p[v] > T(0)) h -= static_cast<double>(p[v]) * std::log(static_cast<double>(p[v]));
    total += h;
  }
  return total / N;
}

template double mean_entropy<float>(const float*, int, int);
template double mean_entropy<double>(const double*, int, int);

}  // namespace hyperrnn::pilf
