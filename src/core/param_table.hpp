// The one table that describes the model's tensors: name, shape, offset into the flat buffer,
// kind (dense, expert, gating), layer and expert index, owner rank, and whether weight decay applies.
// Parameters, gradients and AdamW moments all share this layout, one contiguous buffer each.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace hyperrnn {

// Values index per-kind arrays (e.g. learning rates): keep them 0, 1, 2.
enum class TensorKind { Dense = 0, Expert = 1, Gating = 2 };
const char* to_string(TensorKind k);

struct TensorInfo {
  std::string name;            // e.g. "layers.0.moe.experts.3.fc1.weight"
  std::vector<int64_t> shape;  // row-major
  int64_t offset = 0;          // in elements, into every buffer sharing the layout; -1: not held by this rank
  int64_t size = 0;            // product of shape
  TensorKind kind = TensorKind::Dense;
  int layer = -1;              // transformer block, -1 for embeddings / head
  int expert = -1;             // expert index within its MoE layer, -1 otherwise
  bool decay = false;          // AdamW weight decay applies (matrices, not biases/norms)
  int owner = -1;              // rank that holds and updates it (experts); -1 = replicated on all
  double lr_scale = 1.0;       // its learning rate relative to its kind's (rwkv7's w0: 2, as the reference)
  bool replicated() const { return owner < 0; }
  bool held() const { return offset >= 0; }  // this rank's buffers have room for it
};

class ParamTable {
 public:
  // Appends a tensor; returns its index. Names must be unique.
  int add(std::string name, std::vector<int64_t> shape, TensorKind kind, bool decay, int layer = -1,
          int expert = -1);
  const std::vector<TensorInfo>& entries() const { return entries_; }
  const TensorInfo& operator[](int i) const { return entries_[static_cast<size_t>(i)]; }
  int size() const { return static_cast<int>(entries_.size()); }
  int64_t total() const { return total_; }
  void set_owner(int i, int rank) { entries_[static_cast<size_t>(i)].owner = rank; }
  void set_lr_scale(int i, double s) { entries_[static_cast<size_t>(i)].lr_scale = s; }
  // Lays the buffers out for `rank`: the replicated tensors and the experts it owns get consecutive
  // offsets in table order, other ranks' experts offset -1 (they take no memory here). rank < 0:
  // every tensor (one process). total() becomes this rank's buffer length.
  void localize(int rank);
  int64_t elements() const { return elements_; }  // all tensors of the model, every rank's
  // [begin, end) element ranges of the replicated tensors, adjacent ones merged.
  std::vector<std::pair<int64_t, int64_t>> replicated_ranges() const;
  // Index of a tensor by name, -1 when absent.
  int find(const std::string& name) const;

 private:
  std::vector<TensorInfo> entries_;
  int64_t total_ = 0, elements_ = 0;
};

}  // namespace hyperrnn
