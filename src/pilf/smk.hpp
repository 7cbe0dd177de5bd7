// Surprise-Min-K gradient filtering for one MoE layer: keep the gradients of the min_k experts
// whose gradient norm ("surprise") is lowest, drop the others. SMK ranks every expert, with an
// expert that received no tokens (no gradient) counted as +inf, i.e. ranked last; ASMK ranks only
// the experts activated this step. Ties go to the lower expert index, so every rank that sees the
// same norms selects the same set.
#pragma once
#include <cstdint>

namespace hyperrnn::pilf {

enum class SmkMode { Off, Smk, Asmk };

// Writes keep[e] = 1 for selected experts, 0 otherwise; returns how many were selected
// (min(min_k, E) for SMK; min(min_k, activated) for ASMK; E for Off).
int surprise_min_k(uint8_t* keep,                 // (E)
                   const double* expert_surprise,  // (E) L2 norms of each expert's gradients
                   const int32_t* expert_tokens,   // (E) tokens routed to each expert this step
                   int E, int min_k, SmkMode mode);

}  // namespace hyperrnn::pilf
