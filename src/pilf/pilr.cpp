// PILR adaptor.
#include "pilf/pilr.hpp"

#include <cmath>

namespace hyperrnn::pilf {

double PilrAdaptor::sigma() const { return std::sqrt(var_ + 1e-9); }

double PilrAdaptor::step(double s) {
  mu_ = (1.0 - cfg_.beta) * mu_ + cfg_.beta * s;
  const double dev = std::abs(s - mu_);
  const double target = cfg_.inverse_ema ? std::exp(-cfg_.inverse_k * dev) : dev * dev;
  var_ = (1.0 - cfg_.beta) * var_ + cfg_.beta * target;
  ++steps_;
  if (steps_ <= cfg_.warmup) return 1.0;
  return std::exp(-cfg_.power * std::pow(dev / (sigma() + 1e-9), cfg_.exponent));
}

}  // namespace hyperrnn::pilf
