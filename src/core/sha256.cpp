// SHA-256 through OpenSSL's libcrypto (EVP): the field's standard implementation, several times
// faster than portable code where the CPU has SHA extensions (snapshot hashing is bound by it).
#include "core/sha256.hpp"

#include <openssl/evp.h>

#include <cstdio>
#include <vector>

#include "core/error.hpp"

namespace hyperrnn {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr) != 1)
    throw RuntimeError("OpenSSL: cannot initialise SHA-256");
}

Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void Sha256::update(const void* data, std::size_t n) {
  if (n > 0 && EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, n) != 1) throw RuntimeError("OpenSSL: SHA-256 update failed");
}

std::array<uint8_t, 32> Sha256::digest() {
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), out.data(), &len) != 1 || len != 32)
    throw RuntimeError("OpenSSL: SHA-256 final failed");
  return out;
}

std::string Sha256::hex() {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (uint8_t b : digest()) {
    s += digits[b >> 4];
    s += digits[b & 15];
  }
  return s;
}

std::string sha256_hex(const void* data, std::size_t bytes) {
  Sha256 h;
  h.update(data, bytes);
  return h.hex();
}

std::string sha256_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw RuntimeError(path + ": cannot open for reading");
  Sha256 h;
  std::vector<uint8_t> buf(1 << 20);
  std::size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) h.update(buf.data(), n);
  const bool bad = std::ferror(f) != 0;
  std::fclose(f);
  if (bad) throw RuntimeError(path + ": read error");
  return h.hex();
}

}  // namespace hyperrnn
