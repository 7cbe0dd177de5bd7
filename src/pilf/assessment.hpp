// PI assessment of one step (PILF, docs/pilf.md): epsilon (task loss), tau (mean
// entropy of the output distribution over scored positions), surprise (gradient L2 norms) and the
// predictive integrity PI in the published (IPWT) form or the reference-code form.
// Leaves out: where the numbers come from (the hyper-step) and what PI drives (PILR, the buffer).
#pragma once
#include <cstdint>
#include <vector>

#include "core/param_table.hpp"

namespace hyperrnn::pilf {

enum class PiForm {
  Published,      // PI = exp(-alpha ((1-gamma) eps/tau + gamma surprise))
  ReferenceCode,  // PI = exp(-alpha (eps/tau + (1-gamma) expert_surprise + gamma gating_surprise)):
                  // the reference's PICalculator given gradients by group (a dict)
  ReferenceLoop,  // PI = exp(-alpha (eps/tau + surprise)), gamma unused: the same PICalculator as
                  // the PILF-2 loop calls it, with one list of gradients
};

struct PiConfig {
  double alpha = 1.0;  // > 0
  double gamma = 0.5;  // in [0, 1]
  PiForm form = PiForm::Published;
};

struct PiInputs {
  double epsilon = 0.0;          // task loss
  double tau = 0.0;              // mean output entropy (nats)
  double surprise = 0.0;         // L2 norm of all gradients
  double expert_surprise = 0.0;  // L2 norm of the expert group's gradients
  double gating_surprise = 0.0;  // L2 norm of the gating group's gradients
};

// eps / tau is guarded as eps / (tau + 1e-9): a fully confident model (tau = 0) gives a large but
// finite normalised error, as in the reference.
double predictive_integrity(const PiInputs& in, const PiConfig& cfg);

// tau is the mean of nn::row_entropy over the global batch's scored output rows
// (Transformer::mean_entropy, summed shard by shard).

// L2 norms of a gradient buffer, read through the parameter table: overall, per tensor kind
// (dense, expert, gating: the surprise split), and per expert of each MoE layer (SMK's surprise_e).
// Sums of squares in double, tensor by tensor in table order.
struct GradNorms {
  double total = 0.0;
  double by_kind[3] = {0.0, 0.0, 0.0};
  std::vector<double> expert;  // (layers, experts); resized on first use only
};
// Computed in two halves so that ranks can merge them: per-tensor sums of squares of the tensors
// this rank holds (replicated ones on rank 0 only, experts on their owner, 0 elsewhere; rank < 0:
// every tensor), whose sum over ranks has one non-zero term per tensor and is exact in any order;
// then the norms from them, accumulated in table order.
template <class T>
void tensor_sq(std::vector<double>& sq, const ParamTable& table, const T* grads, int rank);
void norms_from_sq(GradNorms& out, const ParamTable& table, const std::vector<double>& sq, int layers, int experts);

}  // namespace hyperrnn::pilf
