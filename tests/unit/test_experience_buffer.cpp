// Routing experience buffer invariants: candidate budget from 1 - PI, capacity, eviction of the
// lowest priorities only by higher ones, prototype creation/joining/counts, replay decay,
// deterministic priority-proportional sampling and cosine retrieval.
#include <catch2/catch.hpp>

#include <map>
#include <vector>

#include "pilf/experience_buffer.hpp"

using hyperrnn::pilf::ExperienceBuffer;

namespace {
// q vectors along axis a (unit, 2-d); actions one-hot on expert a % 2.
struct Batch {
  std::vector<float> q;
  std::vector<uint8_t> act;
  std::vector<double> pi;
  void add(float x, float y, double p, int expert) {
    q.push_back(x);
    q.push_back(y);
    act.push_back(expert == 0);
    act.push_back(expert == 1);
    pi.push_back(p);
  }
  int n() const { return static_cast<int>(pi.size()); }
};
}  // namespace

TEST_CASE("buffer: budget, prototypes and capacity", "[buffer]") {
  ExperienceBuffer buf(4, 2, 2, 0.5);
  Batch b;
  b.add(1, 0, 0.0, 0);    // priority 1
  b.add(0, 1, 0.0, 1);    // priority 1
  b.add(1, 0.1f, 0.5, 0); // priority 0.5
  b.add(5, 5, 1.0, 1);    // priority 0 (PI 1)
  // mean PI 0.375: budget floor(4 * 0.625) = 2 -> the two priority-1 samples
  CHECK(buf.add(b.q.data(), b.act.data(), b.pi.data(), b.n()) == 2);
  CHECK(buf.size() == 2);
  CHECK(buf.active_prototypes() == 2);  // no prototypes existed: each candidate opens one
  CHECK(buf.prototype_of(0) == 0);
  CHECK(buf.prototype_of(1) == 1);
  CHECK(buf.priority(0) == 1.0);

  // budgets that round down to 0 offer nothing: mean PI 0.75 over 2 samples, or 0.2 over 1
  Batch c;
  c.add(1, 0.1f, 0.5, 0);
  c.add(1, 0.1f, 1.0, 0);
  CHECK(buf.add(c.q.data(), c.act.data(), c.pi.data(), 2) == 0);
  Batch d;
  d.add(1, 0.1f, 0.2, 0);
  CHECK(buf.add(d.q.data(), d.act.data(), d.pi.data(), 1) == 0);
  Batch e;
  e.add(1, 0.1f, 0.0, 0);  // priority 1 > cosine 0.995: needs a new prototype
  e.add(1, 0.1f, 0.0, 1);
  CHECK(buf.add(e.q.data(), e.act.data(), e.pi.data(), 2) == 2);
  CHECK(buf.size() == 4);  // full
  CHECK(buf.prototype_of(2) == 2);
  CHECK(buf.prototype_of(3) == 3);
  CHECK(buf.active_prototypes() == 4);
}

TEST_CASE("buffer: when full, only higher priorities replace the lowest", "[buffer]") {
  ExperienceBuffer buf(3, 2, 2, 0.5);
  Batch a;
  a.add(1, 0, 0.1, 0);  // priority 0.9
  a.add(0, 1, 0.3, 1);  // priority 0.7
  a.add(-1, 0, 0.5, 0); // priority 0.5
  a.add(0, -1, 0.9, 1); // priority 0.1; mean PI 0.45 -> budget floor(4 * 0.55) = 2
  CHECK(buf.add(a.q.data(), a.act.data(), a.pi.data(), 4) == 2);
  Batch b;
  b.add(-1, 0, 0.0, 0);  // fills the last slot (priority 1)
  CHECK(buf.add(b.q.data(), b.act.data(), b.pi.data(), 1) == 1);
  CHECK(buf.size() == 3);
  // stored priorities {0.9, 0.7, 1.0}. Two candidates: 0.95 and 0.6 (mean PI 0.225, budget 1 of 2
  // -> only the 0.95 one). It replaces the lowest stored item (slot 1, priority 0.7).
  Batch c;
  c.add(0, 1, 0.05, 1);
  c.add(0, -1, 0.4, 0);
  buf.add(c.q.data(), c.act.data(), c.pi.data(), 2);
  CHECK(buf.priority(1) == Approx(0.95));
  CHECK(buf.priority(0) == Approx(0.9));
  CHECK(buf.priority(2) == Approx(1.0));
  // a candidate below every stored priority is not stored: PI 0.5 -> budget floor(0.5) = 0; use
  // two samples of PI 0.2 (priority 0.8 < lowest stored 0.9): budget 1, nothing replaced
  Batch d;
  d.add(0, 1, 0.2, 1);
  d.add(0, 1, 0.2, 1);
  CHECK(buf.add(d.q.data(), d.act.data(), d.pi.data(), 2) == 0);
  // prototype counts always equal the number of stored items pointing at them
  std::map<int, int> members;
  for (int i = 0; i < buf.size(); ++i) ++members[buf.prototype_of(i)];
  for (const auto& [p, n] : members) CHECK(buf.prototype_count(p) == n);
  int total = 0;
  for (int p = 0; p < buf.capacity(); ++p) total += buf.prototype_count(p);
  CHECK(total == buf.size());
}

TEST_CASE("buffer: replay sampling is deterministic and decays priorities", "[buffer]") {
  ExperienceBuffer buf(8, 2, 2, 0.5);
  Batch a;
  for (int i = 0; i < 8; ++i) a.add(static_cast<float>(i), 1, i < 4 ? 0.0 : 0.9, i % 2);  // budget floor(8*0.55)=4
  CHECK(buf.add(a.q.data(), a.act.data(), a.pi.data(), 8) == 4);
  const std::vector<int> s1 = buf.sample(16, 7, 3), s2 = buf.sample(16, 7, 3), s3 = buf.sample(16, 7, 4);
  CHECK(s1 == s2);  // keyed by (seed, step)
  CHECK(s1 != s3);
  for (int i : s1) CHECK((i >= 0 && i < buf.size()));
  const double before = buf.priority(s1[0]);
  buf.decay({s1[0], s1[0]});  // a repeated index decays once
  CHECK(buf.priority(s1[0]) == Approx(before * 0.5));
  // proportional to priority: decay slots 1..3 to ~1e-12 of slot 0's priority
  for (int r = 0; r < 40; ++r) buf.decay({1, 2, 3});
  for (int i : buf.sample(50, 1, 1)) CHECK(i == 0);
}

TEST_CASE("buffer: retrieval returns the most cosine-similar stored q, zero-padded", "[buffer]") {
  ExperienceBuffer buf(4, 2, 2);
  Batch a;
  a.add(1, 0, 0.0, 0);
  a.add(0, 1, 0.0, 1);
  buf.add(a.q.data(), a.act.data(), a.pi.data(), 2);
  const float query[2] = {0.9f, 0.1f};
  std::vector<float> out(3 * 2, -1.f);
  buf.retrieve(out.data(), query, 1, 3);
  CHECK(out == std::vector<float>{1, 0, 0, 1, 0, 0});
}

TEST_CASE("buffer: a restored state behaves exactly like the original", "[buffer]") {
  ExperienceBuffer a(4, 2, 2);
  Batch b1;
  b1.add(1.f, 0.f, 0.1, 0);
  b1.add(0.f, 1.f, 0.2, 1);
  b1.add(0.7f, 0.7f, 0.3, 0);
  a.add(b1.q.data(), b1.act.data(), b1.pi.data(), b1.n());
  a.decay(a.sample(3, 5, 1));
  ExperienceBuffer b(4, 2, 2);
  b.restore(a.state());
  REQUIRE(b.size() == a.size());
  // the same next curation, replay and retrieval
  Batch b2;
  b2.add(-1.f, 0.f, 0.05, 1);
  b2.add(0.f, -1.f, 0.0, 0);
  CHECK(a.add(b2.q.data(), b2.act.data(), b2.pi.data(), b2.n()) == b.add(b2.q.data(), b2.act.data(), b2.pi.data(), b2.n()));
  CHECK(a.sample(8, 5, 2) == b.sample(8, 5, 2));
  CHECK(a.active_prototypes() == b.active_prototypes());
  for (int i = 0; i < a.size(); ++i) {
    CHECK(a.priority(i) == b.priority(i));
    CHECK(a.prototype_of(i) == b.prototype_of(i));
  }
  std::vector<float> ra(2 * 2 * 2), rb(ra.size());
  const float query[4] = {1.f, 0.1f, -0.2f, 1.f};
  a.retrieve(ra.data(), query, 2, 2);
  b.restore(a.state());
  b.retrieve(rb.data(), query, 2, 2);
  CHECK(ra == rb);
  // a state of another shape is refused
  ExperienceBuffer c(3, 2, 2);
  CHECK_THROWS(c.restore(a.state()));
}

TEST_CASE("buffer: a full buffer keeps its items against candidates of equal priority", "[buffer]") {
  // The reference's insertion_mask is a strict '>': an equal priority never evicts (the reference
  // profile's batch PI gives every candidate of a batch the same priority, so this decides which
  // layer's items a shared buffer keeps).
  ExperienceBuffer buf(2, 2, 2, 0.5);
  Batch a;
  a.add(1, 0, 0.0, 0);
  a.add(0, 1, 0.0, 1);
  REQUIRE(buf.add(a.q.data(), a.act.data(), a.pi.data(), 2) == 2);
  Batch b;  // priority 1 again, other q's
  b.add(-1, 0, 0.0, 1);
  b.add(0, -1, 0.0, 0);
  CHECK(buf.add(b.q.data(), b.act.data(), b.pi.data(), 2) == 0);
  CHECK(buf.q(0)[0] == 1.0f);
  CHECK(buf.q(1)[1] == 1.0f);
  buf.decay({0});  // now item 0 has priority 0.5: one of the candidates replaces it
  CHECK(buf.add(b.q.data(), b.act.data(), b.pi.data(), 2) == 1);
  CHECK(buf.q(0)[0] == -1.0f);
}

TEST_CASE("buffer: prototype means follow the reference's order (evictions, then arrivals)", "[buffer]") {
  // utils/experience_buffer.py add(): all evicted items leave their prototypes' counts first, the
  // new items then join, and a prototype p that gained n items becomes
  // (mean_p * (count_p - n) + sum of the new q) / count_p with its final count (its mean still
  // includes the evicted items': the reference's approximation). A running mean updated write by
  // write (evict, arrive, evict, arrive) gives another value when an arrival to p comes before an
  // eviction from p, as here.
  ExperienceBuffer buf(3, 2, 2, 0.5);
  Batch a;  // budget floor(2 (1 - 0.5)) = 1: the priority-1 sample opens prototype 0
  a.add(1, 0, 0.0, 0);
  a.add(0, 1, 1.0, 0);
  REQUIRE(buf.add(a.q.data(), a.act.data(), a.pi.data(), 2) == 1);
  Batch b;  // priority 0.9 <= cosine 0.995: joins prototype 0, mean (1, 0.05)
  b.add(1, 0.1f, 0.1, 0);
  b.add(0, 1, 0.9, 0);
  REQUIRE(buf.add(b.q.data(), b.act.data(), b.pi.data(), 2) == 1);
  Batch c;  // priority 1 > cosine: prototype 1; the buffer is full
  c.add(0, 1, 0.0, 1);
  c.add(1, 0, 1.0, 0);
  REQUIRE(buf.add(c.q.data(), c.act.data(), c.pi.data(), 2) == 1);
  REQUIRE(buf.prototype_of(0) == 0);
  REQUIRE(buf.prototype_of(1) == 0);
  REQUIRE(buf.prototype_of(2) == 1);
  REQUIRE(buf.prototype(0)[1] == Approx(0.05f));
  buf.decay({2});
  buf.decay({2});
  buf.decay({0});  // priorities: slot 0 0.5, slot 1 0.9, slot 2 0.25
  // budget floor(3 (1 - 0.3)) = 2: A = (1, 0.04) joins prototype 0, B = (0.1, 1) joins prototype 1
  // (priority 0.9 each); A replaces the lowest item (slot 2, prototype 1's), B the next (slot 0,
  // prototype 0's)
  Batch d;
  d.add(1, 0.04f, 0.1, 0);
  d.add(0.1f, 1, 0.1, 1);
  d.add(-1, -1, 0.7, 0);
  REQUIRE(buf.add(d.q.data(), d.act.data(), d.pi.data(), 3) == 2);
  CHECK(buf.prototype_of(2) == 0);
  CHECK(buf.prototype_of(0) == 1);
  CHECK(buf.prototype_count(0) == 2);
  CHECK(buf.prototype_count(1) == 1);
  // reference: prototype 0 = ((1, 0.05) * (2 - 1) + (1, 0.04)) / 2 = (1, 0.045); write by write it
  // would be ((1, 0.05) * 2 + (1, 0.04)) / 3 = (1, 0.0467)
  CHECK(buf.prototype(0)[0] == Approx(1.0f));
  CHECK(buf.prototype(0)[1] == Approx(0.045f).epsilon(1e-6));
  CHECK(buf.prototype(1)[0] == Approx(0.1f));  // (m * 0 + B) / 1
  CHECK(buf.prototype(1)[1] == Approx(1.0f));
}

TEST_CASE("buffer: priorities are float32, as the reference's tensors", "[buffer]") {
  // 1 - PI for PI = 1e-10 and 1e-20 is 1.0f both: the later candidate is not "strictly higher" and
  // replaces nothing (in double it would); a decayed item (0.99 in float32) is replaced.
  ExperienceBuffer buf(1, 2, 2, 0.99);
  Batch b;
  b.add(1, 0, 1e-20, 0);  // budget floor(1 - 1e-20) = 1, priority 1.0f
  REQUIRE(buf.add(b.q.data(), b.act.data(), b.pi.data(), 1) == 1);
  CHECK(buf.priority(0) == 1.0f);
  Batch c;  // two samples: budget floor(2 (1 - 5e-11)) = 1, priority 1 - 1e-10 = 1.0f
  c.add(0, 1, 1e-10, 1);
  c.add(0, 1, 0.0, 1);
  CHECK(buf.add(c.q.data(), c.act.data(), c.pi.data(), 2) == 0);
  CHECK(buf.q(0)[0] == 1.0f);
  buf.decay({0});
  CHECK(buf.priority(0) == 0.99f);
  CHECK(buf.add(c.q.data(), c.act.data(), c.pi.data(), 2) == 1);
  CHECK(buf.q(0)[1] == 1.0f);
}
