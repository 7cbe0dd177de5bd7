// SHA-256 (FIPS 180-4): the digest of snapshot files, datasets and theta. Incremental: update()
// any number of times, then hex() or digest(). Leaves out: every other hash.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace hyperrnn {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t bytes);
  std::array<uint8_t, 32> digest();  // finishes the hash; the object is then spent
  std::string hex();                 // digest() as 64 lowercase hex digits

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  std::size_t used_ = 0;
  uint64_t bytes_ = 0;
};

// Digest of a whole file (64 hex digits); throws RuntimeError naming the file when unreadable.
std::string sha256_file(const std::string& path);
std::string sha256_hex(const void* data, std::size_t bytes);

}  // namespace hyperrnn
