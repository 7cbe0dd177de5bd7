// MQAR generator: the Zoology layout (keys then values in context, queries at 2D + 2 slot),
// vocabulary split, scored positions, distinct keys, query-gap bias and determinism by key.
#include <catch2/catch.hpp>

#include <set>

#include "tasks/mqar.hpp"

using namespace hyperrnn;

TEST_CASE("MQAR samples follow the Zoology layout", "[mqar]") {
  MqarConfig qc;
  qc.vocab = 256;
  qc.seq_len = 64;
  qc.kv_pairs = 8;
  MqarGenerator gen(qc);
  CHECK(gen.slots() == (64 - 16) / 2);
  std::vector<int32_t> tok(64), tgt(64);
  for (uint32_t idx = 0; idx < 500; ++idx) {
    gen.sample(tok.data(), tgt.data(), 11, RngPurpose::TrainData, 3, idx);
    std::set<int32_t> keys, vals;
    for (int j = 0; j < 8; ++j) {
      REQUIRE(tok[2 * j] >= 1);
      REQUIRE(tok[2 * j] < 128);       // keys in [1, V/2)
      REQUIRE(tok[2 * j + 1] >= 128);  // values in [V/2, V)
      REQUIRE(tok[2 * j + 1] < 256);
      keys.insert(tok[2 * j]);
      vals.insert(tok[2 * j + 1]);
    }
    REQUIRE(keys.size() == 8);  // D distinct keys
    REQUIRE(vals.size() == 8);
    int scored = 0;
    for (int t = 0; t < 64; ++t) {
      if (tgt[t] < 0) continue;
      ++scored;
      REQUIRE(t >= 16);
      REQUIRE((t - 16) % 2 == 0);  // queries sit on even offsets after the context
      int j = 0;
      while (j < 8 && tok[2 * j] != tok[t]) ++j;
      REQUIRE(j < 8);                    // the query token is a context key
      REQUIRE(tgt[t] == tok[2 * j + 1]);  // its target is that key's value
    }
    REQUIRE(scored == 8);  // each key queried exactly once
    for (int t = 0; t < 16; ++t) REQUIRE(tgt[t] == -1);
  }
}

TEST_CASE("MQAR query slots follow the power law (biased to small gaps)", "[mqar]") {
  MqarConfig qc;
  qc.vocab = 512;
  qc.seq_len = 256;
  qc.kv_pairs = 4;
  MqarGenerator gen(qc);
  std::vector<int32_t> tok(256), tgt(256);
  // With a = 0.01 the weights are ~ (s+1)^-0.99 over 124 slots: P(slot 0 among the 4 draws) is far
  // above the uniform 4/124 = 3.2%; the first of 4 weighted draws alone picks slot 0 with
  // probability 1/H where H = sum (s+1)^-0.99 ~ 5.6, i.e. ~18%.
  int slot0 = 0;
  const int n = 2000;
  for (int i = 0; i < n; ++i) {
    gen.sample(tok.data(), tgt.data(), 5, RngPurpose::TrainData, 0, static_cast<uint32_t>(i));
    slot0 += tgt[8] >= 0;
  }
  CHECK(slot0 > 0.15 * n);
}

TEST_CASE("MQAR data is a pure function of (seed, purpose, step, index)", "[mqar]") {
  MqarConfig qc;
  MqarGenerator gen(qc);
  Batch a, b;
  a.resize(8, 64);
  b.resize(8, 64);
  gen.fill(a, 9, RngPurpose::TrainData, 4, 0, 8);
  // samples 4..7 generated alone (as another rank would) equal the same samples of the full batch
  Batch part;
  part.resize(4, 64);
  gen.fill(part, 9, RngPurpose::TrainData, 4, 4, 4);
  for (int i = 0; i < 4 * 64; ++i) REQUIRE(part.tokens[i] == a.tokens[4 * 64 + i]);
  gen.fill(b, 9, RngPurpose::TrainData, 4, 0, 8);
  CHECK(a.tokens == b.tokens);
  CHECK(a.targets == b.targets);
  gen.fill(b, 9, RngPurpose::HeldOut, 4, 0, 8);
  CHECK(a.tokens != b.tokens);  // held-out stream differs from training
  gen.fill(b, 10, RngPurpose::TrainData, 4, 0, 8);
  CHECK(a.tokens != b.tokens);  // seed matters
}

TEST_CASE("MQAR zero filler", "[mqar]") {
  MqarConfig qc;
  qc.random_filler = false;
  MqarGenerator gen(qc);
  std::vector<int32_t> tok(64), tgt(64);
  gen.sample(tok.data(), tgt.data(), 1, RngPurpose::TrainData, 0, 0);
  for (int t = 16; t < 64; ++t)
    if (tgt[t] < 0) REQUIRE(tok[t] == 0);
}
