// SMK / ASMK selection: min_k passes of a strict-less scan (E is small).
#include "pilf/smk.hpp"

namespace hyperrnn::pilf {

int surprise_min_k(uint8_t* keep, const double* s, const int32_t* tokens, int E, int min_k, SmkMode mode) {
  if (mode == SmkMode::Off) {
    for (int e = 0; e < E; ++e) keep[e] = 1;
    return E;
  }
  for (int e = 0; e < E; ++e) keep[e] = 0;
  int chosen = 0;
  for (int pass = 0; pass < min_k && pass < E; ++pass) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      if (keep[e]) continue;
      const bool active = tokens[e] > 0;
      if (mode == SmkMode::Asmk && !active) continue;
      if (best < 0) {
        best = e;
        continue;
      }
      const bool best_active = tokens[best] > 0;
      // inactive experts rank after every active one (surprise +inf); among equals, lower index
      if (active && (!best_active || s[e] < s[best])) best = e;
    }
    if (best < 0) break;
    keep[best] = 1;
    ++chosen;
  }
  return chosen;
}

}  // namespace hyperrnn::pilf
