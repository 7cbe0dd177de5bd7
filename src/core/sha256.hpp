// SHA-256 (FIPS 180-4, computed by OpenSSL's libcrypto): the digest of snapshot files, datasets
// and theta. Incremental: update() any number of times, then hex() or digest() once.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace hyperrnn {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, std::size_t bytes);
  std::array<uint8_t, 32> digest();  // finishes the hash; the object is then spent
  std::string hex();                 // digest() as 64 lowercase hex digits

 private:
  void* ctx_;  // EVP_MD_CTX, kept out of this header
};

// Digest of a whole file (64 hex digits); throws RuntimeError naming the file when unreadable.
std::string sha256_file(const std::string& path);
std::string sha256_hex(const void* data, std::size_t bytes);

}  // namespace hyperrnn
