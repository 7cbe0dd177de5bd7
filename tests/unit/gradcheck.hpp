// Finite-difference gradient checking in double precision, shared by the op, MoE and model tests.
//
// Tolerance (derived, not tuned): the fourth-order central stencil
//   f'(x) ~ [8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))] / (12 h),  h = 1e-4,
// on a double-precision function has truncation error ~ h^4/30 |f^(5)| = 3e-18 |f^(5)| and
// rounding error ~ 1.5 eps |f| / h = 3.3e-12 |f|. With |f| and its derivatives below ~1e3 for
// these small problems, a correct gradient agrees to ~1e-8 absolute; we accept
// |fd - analytic| <= 1e-7 + 1e-6 * max(|fd|, |analytic|). A wrong backward (a missing term, a
// transposed index, a wrong scale) is off by O(|g|), orders of magnitude above that bound.
#pragma once
#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hyperrnn::test {

struct GradCheckResult {
  int checked = 0;
  int skipped = 0;     // perturbation changed a discrete decision (top-k routing)
  int failed = 0;
  double worst = 0.0;  // largest |fd - analytic| / (1e-7 + 1e-6 max(|fd|,|an|)); <= 1 passes
  std::string first_failure;
};

// f() evaluates the scalar at the current contents of x. decision() (optional) returns a signature
// of every discrete choice f makes; a coordinate where any of the four evaluations disagrees with the
// unperturbed signature is skipped. At most max_points coordinates are checked, evenly strided.
GradCheckResult check_gradient(const std::function<double()>& f, double* x, const double* analytic,
                               int64_t n, int max_points = 64,
                               const std::function<uint64_t()>& decision = {});

// Deterministic pseudo-random fill in [-scale, scale] for test inputs.
void fill_uniform(std::vector<double>& v, uint64_t seed, double scale);
std::vector<double> uniform(int64_t n, uint64_t seed, double scale);

// sum(a * b): the scalar L = sum(out * R) of the op tests, whose gradient at out is R.
inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// The check ran on some coordinates and none failed (with what it saw on failure).
inline void require_ok(const GradCheckResult& r, const char* what) {
  INFO(what << ": checked " << r.checked << ", skipped " << r.skipped << ", worst ratio " << r.worst << " "
            << r.first_failure);
  REQUIRE(r.checked > 0);
  REQUIRE(r.failed == 0);
}

}  // namespace hyperrnn::test
