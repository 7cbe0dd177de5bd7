// Parameter table bookkeeping.
#include "core/param_table.hpp"

#include "core/error.hpp"

namespace hyperrnn {

const char* to_string(TensorKind k) {
  switch (k) {
    case TensorKind::Dense: return "dense";
    case TensorKind::Expert: return "expert";
    case TensorKind::Gating: return "gating";
  }
  return "?";
}

int ParamTable::add(std::string name, std::vector<int64_t> shape, TensorKind kind, bool decay,
                    int layer, int expert) {
  HYPERRNN_CHECK(find(name) < 0, "duplicate tensor name " + name);
  TensorInfo t;
  t.size = 1;
  for (int64_t d : shape) {
    HYPERRNN_CHECK(d > 0, "tensor " + name + " has a non-positive dimension");
    t.size *= d;
  }
  t.name = std::move(name);
  t.shape = std::move(shape);
  t.offset = total_;
  t.kind = kind;
  t.layer = layer;
  t.expert = expert;
  t.decay = decay;
  total_ += t.size;
  elements_ += t.size;
  entries_.push_back(std::move(t));
  return static_cast<int>(entries_.size()) - 1;
}

void ParamTable::localize(int rank) {
  total_ = 0;
  for (TensorInfo& t : entries_) {
    if (rank >= 0 && !t.replicated() && t.owner != rank) {
      t.offset = -1;
      continue;
    }
    t.offset = total_;
    total_ += t.size;
  }
}

std::vector<std::pair<int64_t, int64_t>> ParamTable::replicated_ranges() const {
  std::vector<std::pair<int64_t, int64_t>> r;
  for (const TensorInfo& t : entries_) {
    if (!t.replicated()) continue;
    if (!r.empty() && r.back().second == t.offset) r.back().second += t.size;
    else r.emplace_back(t.offset, t.offset + t.size);
  }
  return r;
}

int ParamTable::find(const std::string& name) const {
  for (size_t i = 0; i < entries_.size(); ++i)
    if (entries_[i].name == name) return static_cast<int>(i);
  return -1;
}

}  // namespace hyperrnn
