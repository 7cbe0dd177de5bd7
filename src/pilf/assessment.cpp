// PI and tau.
#include "pilf/assessment.hpp"

#include <cmath>

#include "parallel/threads.hpp"

namespace hyperrnn::pilf {

double predictive_integrity(const PiInputs& in, const PiConfig& cfg) {
  const double normalised_error = in.epsilon / (in.tau + 1e-9);
  double cost = 0.0;
  switch (cfg.form) {
    case PiForm::Published: cost = (1.0 - cfg.gamma) * normalised_error + cfg.gamma * in.surprise; break;
    case PiForm::ReferenceCode:
      cost = normalised_error + (1.0 - cfg.gamma) * in.expert_surprise + cfg.gamma * in.gating_surprise;
      break;
    case PiForm::ReferenceLoop: cost = normalised_error + in.surprise; break;
  }
  return std::exp(-cfg.alpha * cost);
}

template <class T>
void tensor_sq(std::vector<double>& sq, const ParamTable& table, const T* grads, int rank) {
  sq.assign(static_cast<size_t>(table.size()), 0.0);
  threads().run(table.size(), [&](int i, int) {  // one tensor per item: its sum in element order
    const TensorInfo& t = table[i];
    if (rank >= 0 && (t.replicated() ? rank != 0 : t.owner != rank)) return;
    double s = 0.0;
    const T* g = grads + t.offset;
    for (int64_t k = 0; k < t.size; ++k) s += static_cast<double>(g[k]) * g[k];
    sq[static_cast<size_t>(i)] = s;
  });
}

void norms_from_sq(GradNorms& out, const ParamTable& table, const std::vector<double>& sq, int layers, int experts) {
  out.expert.assign(static_cast<size_t>(layers) * static_cast<size_t>(experts), 0.0);
  double kind_sq[3] = {0.0, 0.0, 0.0};
  for (int i = 0; i < table.size(); ++i) {
    const TensorInfo& t = table[i];
    const double s = sq[static_cast<size_t>(i)];
    kind_sq[static_cast<int>(t.kind)] += s;
    if (t.kind == TensorKind::Expert && t.layer >= 0 && t.layer < layers && t.expert >= 0 && t.expert < experts)
      out.expert[static_cast<size_t>(t.layer) * static_cast<size_t>(experts) + static_cast<size_t>(t.expert)] += s;
  }
  for (double& e : out.expert) e = std::sqrt(e);
  for (int k = 0; k < 3; ++k) out.by_kind[k] = std::sqrt(kind_sq[k]);
  out.total = std::sqrt(kind_sq[0] + kind_sq[1] + kind_sq[2]);
}

template void tensor_sq<float>(std::vector<double>&, const ParamTable&, const float*, int);
template void tensor_sq<double>(std::vector<double>&, const ParamTable&, const double*, int);

}  // namespace hyperrnn::pilf
