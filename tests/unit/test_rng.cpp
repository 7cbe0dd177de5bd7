// Counter-based RNG: Philox4x32-10 known-answer vectors (Random123's kat_vectors) and the
// properties the determinism contract relies on.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/rng.hpp"

using namespace hyperrnn;

TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors", "[rng]") {
  CHECK(philox4x32_10({0, 0, 0, 0}, {0, 0}) == Philox4x32Ctr{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  CHECK(philox4x32_10({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu}) ==
        Philox4x32Ctr{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  CHECK(philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u}) ==
        Philox4x32Ctr{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
}

TEST_CASE("a stream is a pure function of its key, and keys do not collide", "[rng]") {
  CounterRng a(42, RngPurpose::TrainData, 7, 3), b(42, RngPurpose::TrainData, 7, 3);
  for (int i = 0; i < 100; ++i) REQUIRE(a.next_u32() == b.next_u32());
  // changing any key component changes the stream
  const uint32_t ref = CounterRng(42, RngPurpose::TrainData, 7, 3).next_u32();
  CHECK(CounterRng(43, RngPurpose::TrainData, 7, 3).next_u32() != ref);
  CHECK(CounterRng(42, RngPurpose::HeldOut, 7, 3).next_u32() != ref);
  CHECK(CounterRng(42, RngPurpose::TrainData, 8, 3).next_u32() != ref);
  CHECK(CounterRng(42, RngPurpose::TrainData, 7, 4).next_u32() != ref);
}

TEST_CASE("uniform and normal draws have the right moments", "[rng]") {
  // n = 200000 draws: the standard error of the mean of U(0,1) is 0.2887/sqrt(n) = 6.5e-4 and of a
  // standard normal 2.2e-3; we allow 5 standard errors.
  constexpr int n = 200000;
  CounterRng r(1, RngPurpose::TestData, 0, 0);
  double su = 0, sn = 0, sn2 = 0;
  for (int i = 0; i < n; ++i) {
    const float u = r.uniform();
    REQUIRE(u >= 0.0f);
    REQUIRE(u < 1.0f);
    su += u;
    const double z = r.normal();
    sn += z;
    sn2 += z * z;
  }
  CHECK(std::abs(su / n - 0.5) < 5 * 6.5e-4);
  CHECK(std::abs(sn / n) < 5 * 2.3e-3);
  CHECK(std::abs(sn2 / n - 1.0) < 5 * std::sqrt(2.0 / n));  // var of z^2 is 2
  for (int i = 0; i < 1000; ++i) REQUIRE(r.below(10) < 10u);
}
