// PILR, the predictive-integrity learning rate: an EMA adaptor tracks the mean and spread of a
// surprise signal, and the learning rate is scaled by
//   lr_mod = exp(-power (|S - mu| / (sigma + 1e-9))^exponent),  sigma = sqrt(var + 1e-9),
// so moderate surprise learns and redundant (too low) or anomalous (too high) surprise does not.
// Statistics are updated first and lr_mod uses the updated ones (the reference's order).
#pragma once
#include <cstdint>

namespace hyperrnn::pilf {

struct PilrConfig {
  double beta = 0.1;          // EMA rate, in (0, 1]
  double initial_var = 1.0;   // a very large value "soft-disables" the modulation
  double power = 0.5;
  double exponent = 2.0;
  bool inverse_ema = false;   // variance target exp(-inverse_k |S - mu|) instead of (S - mu)^2
  double inverse_k = 0.1;
  int64_t warmup = 0;         // steps whose lr_mod is 1 while the statistics still adapt
};

class PilrAdaptor {
 public:
  explicit PilrAdaptor(const PilrConfig& cfg) : cfg_(cfg), var_(cfg.initial_var) {}
  // Feeds one surprise value; returns this step's lr_mod.
  double step(double surprise);
  double mu() const { return mu_; }
  double var() const { return var_; }
  double sigma() const;
  int64_t steps() const { return steps_; }
  // Restores saved statistics (snapshots).
  void restore(double mu, double var, int64_t steps) { mu_ = mu; var_ = var; steps_ = steps; }

 private:
  PilrConfig cfg_;
  double mu_ = 0.0, var_;
  int64_t steps_ = 0;
};

}  // namespace hyperrnn::pilf
