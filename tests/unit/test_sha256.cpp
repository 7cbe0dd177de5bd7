// SHA-256 against the FIPS 180-4 example vectors, fed whole and in uneven pieces.
#include <catch2/catch.hpp>

#include <string>

#include "core/sha256.hpp"

using namespace hyperrnn;

TEST_CASE("SHA-256 matches the FIPS 180-4 examples", "[sha256]") {
  CHECK(sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";  // 448 bits: padding spills
  CHECK(sha256_hex(two_blocks.data(), two_blocks.size()) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // one million 'a', fed in pieces of 1, 2, ... 999 bytes (crossing block boundaries every way)
  const std::string a(1000000, 'a');
  Sha256 h;
  size_t at = 0;
  for (size_t piece = 1; at < a.size(); piece = piece % 999 + 1) {
    const size_t n = std::min(piece, a.size() - at);
    h.update(a.data() + at, n);
    at += n;
  }
  CHECK(h.hex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}
