// The PILF part of the hyper-state in a snapshot's manifest: the GatingTransformer's parameters
// (/gating/<tensor>), every MoE layer's routing experience buffer (/buffer/layer<l>/...) and the
// dynamic top-k statistics (/pilf/...). Enough to evaluate a pilf snapshot; the optimizer moments
// and PILR statistics needed to resume join with the hyper-state snapshot format.
#pragma once
#include "io/h5.hpp"
#include "pilf/step.hpp"

namespace hyperrnn {

void write_pilf_state(H5File& f, const PilfState<float>& ps);
// Throws RuntimeError naming the manifest and the dataset when something is missing or misshapen.
void read_pilf_state(const H5File& f, PilfState<float>& ps);

}  // namespace hyperrnn
