// Finite-difference gradient checker.
#include "gradcheck.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/rng.hpp"

namespace hyperrnn::test {

GradCheckResult check_gradient(const std::function<double()>& f, double* x, const double* analytic,
                               int64_t n, int max_points, const std::function<uint64_t()>& decision) {
  constexpr double h = 1e-4, abs_tol = 1e-7, rel_tol = 1e-6;
  GradCheckResult r;
  const uint64_t base = decision ? (f(), decision()) : 0;
  const int64_t stride = std::max<int64_t>(1, n / max_points);
  for (int64_t i = 0; i < n; i += stride) {
    const double x0 = x[i];
    bool same = true;
    auto at = [&](double dx) {
      x[i] = x0 + dx;
      const double v = f();
      same = same && (!decision || decision() == base);
      return v;
    };
    const double f1 = at(h), fm1 = at(-h), f2 = at(2 * h), fm2 = at(-2 * h);
    x[i] = x0;
    if (!same) {
      ++r.skipped;
      continue;
    }
    const double fd = (8.0 * (f1 - fm1) - (f2 - fm2)) / (12.0 * h);
    const double err = std::abs(fd - analytic[i]);
    const double bound = abs_tol + rel_tol * std::max(std::abs(fd), std::abs(analytic[i]));
    r.worst = std::max(r.worst, err / bound);
    ++r.checked;
    if (err > bound) {
      if (r.failed++ == 0) {
        std::ostringstream s;
        s << "index " << i << ": finite difference " << fd << ", analytic " << analytic[i];
        r.first_failure = s.str();
      }
    }
  }
  return r;
}

void fill_uniform(std::vector<double>& v, uint64_t seed, double scale) {
  CounterRng rng(seed, RngPurpose::TestData, 0, 0);
  for (double& x : v) x = scale * (2.0 * rng.uniform_double() - 1.0);
}

std::vector<double> uniform(int64_t n, uint64_t seed, double scale) {
  std::vector<double> v(static_cast<size_t>(n));
  fill_uniform(v, seed, scale);
  return v;
}

}  // namespace hyperrnn::test
