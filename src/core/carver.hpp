// Carves consecutive blocks out of one flat buffer. Run a layout once with a counting Carver (no
// buffer) to learn the size, allocate, then run the same layout again on the buffer: the size is
// derived from the layout and never written down twice.
#pragma once
#include <cstdint>

namespace hyperrnn {

template <class T>
class Carver {
 public:
  Carver() = default;                       // counting only: take() returns nullptr
  explicit Carver(T* base) : base_(base) {}
  T* take(int64_t n) {
    T* p = base_ ? base_ + used_ : nullptr;
    used_ += n;
    return p;
  }
  int64_t used() const { return used_; }

 private:
  T* base_ = nullptr;
  int64_t used_ = 0;
};

}  // namespace hyperrnn
