// Writing and reading the PILF routing state of a snapshot.
#include "app/hyper_state.hpp"

#include <string>
#include <vector>

#include "core/error.hpp"

namespace hyperrnn {

namespace {
std::string layer_group(size_t l) { return "buffer/layer" + std::to_string(l) + "/"; }

template <class T>
void read_checked(const H5File& f, const std::string& name, std::vector<T>& out, const std::vector<int64_t>& shape) {
  if (!f.exists(name) || f.shape(name) != shape)
    throw RuntimeError(f.path() + ": dataset /" + name + " is missing or has a shape that does not match the run");
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  out.resize(static_cast<size_t>(n));
  if (n > 0) f.read(name, out.data());
}
}  // namespace

void write_pilf_state(H5File& f, const PilfState<float>& ps) {
  if (!ps.gating) return;
  const ParamTable& t = ps.gating->table();
  for (const TensorInfo& e : t.entries()) f.write("gating/" + e.name, ps.gating->params.data() + e.offset, e.shape);
  for (size_t l = 0; l < ps.buffers.size(); ++l) {
    const pilf::ExperienceBuffer& b = ps.buffers[l];
    const pilf::ExperienceBuffer::State s = b.state();
    const std::string g = layer_group(l);
    const int64_t n = s.size, cap = b.capacity(), C = b.dim(), E = b.experts();
    const int32_t size = s.size;
    f.write(g + "size", &size, {1});
    if (n > 0) {
      f.write(g + "q", s.q.data(), {n, C});
      f.write(g + "action", s.action.data(), {n, E});
      f.write(g + "priority", s.priority.data(), {n});
      f.write(g + "prototype_of", s.prototype_of.data(), {n});
    }
    f.write(g + "prototypes", s.prototypes.data(), {cap, C});
    f.write(g + "prototype_count", s.prototype_count.data(), {cap});
  }
  const int64_t L = static_cast<int64_t>(ps.rs_mu.size());
  f.write("pilf/dynamic_k_mu", ps.rs_mu.data(), {L});
  f.write("pilf/dynamic_k_var", ps.rs_var.data(), {L});
  const double steps = static_cast<double>(ps.rs_steps);
  f.write("pilf/dynamic_k_steps", &steps, {1});
}

void read_pilf_state(const H5File& f, PilfState<float>& ps) {
  if (!ps.gating) return;
  const ParamTable& t = ps.gating->table();
  for (const TensorInfo& e : t.entries()) {
    const std::string name = "gating/" + e.name;
    if (!f.exists(name) || f.shape(name) != e.shape)
      throw RuntimeError(f.path() + ": dataset /" + name + " is missing or has a shape that does not match the run");
    f.read(name, ps.gating->params.data() + e.offset);
  }
  for (size_t l = 0; l < ps.buffers.size(); ++l) {
    pilf::ExperienceBuffer& b = ps.buffers[l];
    const std::string g = layer_group(l);
    const int64_t cap = b.capacity(), C = b.dim(), E = b.experts();
    std::vector<int32_t> size;
    read_checked(f, g + "size", size, {1});
    pilf::ExperienceBuffer::State s;
    s.size = size[0];
    if (s.size < 0 || s.size > cap) throw RuntimeError(f.path() + ": /" + g + "size is outside [0, capacity]");
    const int64_t n = s.size;
    if (n > 0) {
      read_checked(f, g + "q", s.q, {n, C});
      read_checked(f, g + "action", s.action, {n, E});
      read_checked(f, g + "priority", s.priority, {n});
      read_checked(f, g + "prototype_of", s.prototype_of, {n});
    }
    read_checked(f, g + "prototypes", s.prototypes, {cap, C});
    read_checked(f, g + "prototype_count", s.prototype_count, {cap});
    b.restore(s);
  }
  const int64_t L = static_cast<int64_t>(ps.rs_mu.size());
  read_checked(f, "pilf/dynamic_k_mu", ps.rs_mu, {L});
  read_checked(f, "pilf/dynamic_k_var", ps.rs_var, {L});
  std::vector<double> steps;
  read_checked(f, "pilf/dynamic_k_steps", steps, {1});
  ps.rs_steps = static_cast<int64_t>(steps[0]);
}

}  // namespace hyperrnn
