// MPI tests of the expert-parallel building blocks, run by ctest under mpiexec with 1, 2, 4 and 8
// ranks: the token exchange (round trip, canonical order on the owners, uneven expert splits, an
// expert without tokens, ranks that receive nothing) and the reproducible shard sum (bitwise the
// same on every P as in one process, and within its derived error bound of the exact sum).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <memory>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "parallel/layout.hpp"
#include "core/rng.hpp"
#include "mpi/comm.hpp"

using namespace hyperrnn;

namespace {
Comm* g_comm = nullptr;

// A routing of N global tokens, K slots each: the expert of (token, slot) from `pick`.
struct Row {
  int expert, token, slot;
};

template <class Pick>
std::vector<Row> rows_of(int t0, int t1, int K, Pick pick) {
  std::vector<Row> r;
  for (int t = t0; t < t1; ++t)
    for (int j = 0; j < K; ++j) r.push_back({pick(t, j), t, j});
  std::stable_sort(r.begin(), r.end(), [](const Row& a, const Row& b) { return std::tie(a.expert, a.token, a.slot) < std::tie(b.expert, b.token, b.slot); });
  return r;
}

constexpr int W = 3;  // a row carries (expert, token, slot) as doubles

// Dispatches this rank's rows, checks the owners' canonical rows and the round trip.
template <class Pick>
void check_exchange(int E, int N, int K, Pick pick) {
  Parallel par(g_comm, g_comm->size(), E);
  const int P = par.P;
  const int t0 = N * par.rank / P, t1 = N * (par.rank + 1) / P;
  const std::vector<Row> local = rows_of(t0, t1, K, pick);
  std::vector<int32_t> offsets(static_cast<size_t>(E) + 1, 0);
  for (const Row& r : local) ++offsets[static_cast<size_t>(r.expert) + 1];
  for (int e = 0; e < E; ++e) offsets[static_cast<size_t>(e) + 1] += offsets[static_cast<size_t>(e)];
  std::vector<double> send;
  for (const Row& r : local) send.insert(send.end(), {double(r.expert), double(r.token), double(r.slot)});
  par.reset_accounting(1);
  REQUIRE(P > 1);  // one rank never exchanges: ctest runs the [exchange] cases on 2, 4 and 8 ranks only
  ExpertExchange X;
  X.plan(offsets.data(), par, 0, W * 8);
  // what the owner must hold: every rank's rows of its experts in (expert, global token, slot) order
  std::vector<double> want;
  for (const Row& r : rows_of(0, N, K, pick))
    if (par.owns(r.expert)) want.insert(want.end(), {double(r.expert), double(r.token), double(r.slot)});
  REQUIRE(X.own_rows() * W == static_cast<int64_t>(want.size()));
  std::vector<double> own(want.size());
  X.dispatch(send.data(), own.data(), W, par);
  CHECK(own == want);
  for (int e = 0; e < E; ++e) {
    int64_t n = 0;
    for (const Row& r : rows_of(0, N, K, pick)) n += r.expert == e;
    CHECK(X.expert_rows()[static_cast<size_t>(e)] == n);
  }
  for (int e = par.experts_lo(); e < par.experts_hi(); ++e)  // canonical ranges of the own experts
    for (int32_t a = X.own_offsets()[e - par.experts_lo()]; a < X.own_offsets()[e - par.experts_lo() + 1]; ++a)
      CHECK(own[static_cast<size_t>(a) * W] == e);
  // owners transform their rows; the senders get the transformed rows back in their own order
  for (size_t i = 0; i < own.size(); i += W) own[i + 1] = 1000.0 * own[i] + own[i + 1];
  std::vector<double> back(send.size(), -1.0);
  X.give_back(own.data(), back.data(), W, par);
  for (size_t i = 0; i < send.size(); i += W) {
    CHECK(back[i] == send[i]);
    CHECK(back[i + 1] == 1000.0 * send[i] + send[i + 1]);
    CHECK(back[i + 2] == send[i + 2]);
  }
  int64_t off_rank = 0;  // the bytes the plan logs: rows that leave their rank, four exchanges
  for (int s = 0; s < P; ++s)
    for (const Row& r : rows_of(N * s / P, N * (s + 1) / P, K, pick)) off_rank += par.owner(r.expert) != s;
  CHECK(par.layer_bytes[0] == 4 * off_rank * W * 8 + static_cast<int64_t>(P) * (P - 1) * E * 4);
}

uint32_t hash(int t, int j, uint32_t salt) {
  CounterRng r(salt, RngPurpose::TestData, static_cast<uint32_t>(t), static_cast<uint32_t>(j));
  return r.next_u32();
}
}  // namespace

TEST_CASE("token exchange: uneven expert split, random routing, round trip", "[mpi][exchange]") {
  // E = 11 experts split over P ranks unevenly (11 / 2, / 4, / 8 are not integers)
  check_exchange(11, 37, 2, [](int t, int j) { return static_cast<int>((hash(t, 0, 7) + 5u * j) % 11u); });
}

TEST_CASE("token exchange: an expert that receives no tokens", "[mpi][exchange]") {
  check_exchange(8, 29, 2, [](int t, int j) {
    const int e = static_cast<int>((hash(t, 0, 3) + 3u * j) % 7u);  // never expert 7
    return e;
  });
}

TEST_CASE("token exchange: ranks that receive no tokens", "[mpi][exchange]") {
  // every token goes to expert 0 (rank 0's): all other ranks receive nothing, but still send
  check_exchange(8, 23, 1, [](int, int) { return 0; });
}

namespace {
// Shard s's gradient buffer: values spread over many binades, a zero block, and sign changes.
std::vector<float> shard_values(int s, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  CounterRng r(11, RngPurpose::TestData, 100u + static_cast<uint32_t>(s), 0);
  for (int64_t i = 0; i < n; ++i) {
    const double mag = std::ldexp(1.0, static_cast<int>(r.below(40)) - 30);
    v[static_cast<size_t>(i)] = static_cast<float>(mag * (r.uniform_double() - 0.5));
  }
  // one whole block of zeros: the second 256-element block of the range [300, 1000) used below
  for (int64_t i = 556; i < 812 && i < n; ++i) v[static_cast<size_t>(i)] = 0.0f;
  return v;
}
}  // namespace

TEST_CASE("shard sum's rounding is std::llround on every value it can meet", "[mpi]") {
  // halves, their neighbours one ulp either side, integers, the ends of the range, random values
  std::vector<double> xs = {0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999999999999994, -0.49999999999999994,
                            4503599627370495.5, -4503599627370495.5, 4503599627370497.0, 0x1.fffffffffffffp61,
                            -0x1.fffffffffffffp61, 1e-300, -1e-300};
  for (double h = 0.5; h < 0x1p61; h *= 3.0) {
    xs.push_back(h);
    xs.push_back(std::nextafter(h, 0.0));
    xs.push_back(std::nextafter(h, 1e300));
    xs.push_back(-std::nextafter(h, 1e300));
    xs.push_back(std::floor(h) + 0.5);
  }
  CounterRng r(7, RngPurpose::Init, 0, 0);
  for (int i = 0; i < 100000; ++i) {
    const double u = 2.0 * r.uniform() - 1.0;
    xs.push_back(std::ldexp(u, static_cast<int>(r.next_u32() % 63)));
  }
  int bad = 0;
  for (double x : xs) bad += round_half_away(x) != std::llround(x);
  CHECK(bad == 0);
}

TEST_CASE("reproducible shard sum: bitwise equal to one process, within its bound of the exact sum", "[mpi]") {
  const int S = 8;
  const int64_t n = 1000;
  const std::vector<std::pair<int64_t, int64_t>> ranges = {{0, 300}, {300, 1000}};
  std::vector<std::vector<float>> all;
  for (int s = 0; s < S; ++s) all.push_back(shard_values(s, n));
  // distributed
  Parallel par(g_comm, S, 0);
  std::vector<const float*> mine;
  for (int s = par.shard_lo; s < par.shard_hi; ++s) mine.push_back(all[static_cast<size_t>(s)].data());
  std::vector<float> got(static_cast<size_t>(n), -1.0f);
  ShardSum<float> sum;
  sum.sum(got.data(), mine, ranges, par);
  // one process holding every shard, in reversed order (integer sums do not care)
  Parallel one(nullptr, S, 0);
  std::vector<const float*> every;
  for (int s = S - 1; s >= 0; --s) every.push_back(all[static_cast<size_t>(s)].data());
  std::vector<float> ref(static_cast<size_t>(n), -1.0f);
  ShardSum<float>().sum(ref.data(), every, ranges, one);
  CHECK(std::equal(got.begin(), got.end(), ref.begin(), [](float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); }));
  // Error bound per element: each of the S terms is rounded to the block grid 2^(e-62+h) (h =
  // ceil(log2 S) = 3), at most half a grid step each; the integer sum is exact; int64 -> double
  // rounds at most half a double ulp of the sum and double -> float at most half a float ulp, so
  // |got - exact| <= S 2^(e-63+h) + ulp_float(exact) (double rounding covered by the full ulp).
  // The reference "exact" sum is taken in long double (64-bit mantissa): its own rounding, at most
  // S 2^(e-65), is inside the first term.
  int checked = 0;
  for (const auto& [b, e] : ranges)
    for (int64_t k0 = b; k0 < e; k0 += 256) {
      const int64_t k1 = std::min(e, k0 + 256);
      int emax = std::numeric_limits<int>::min();
      for (int s = 0; s < S; ++s)
        for (int64_t i = k0; i < k1; ++i)
          if (all[static_cast<size_t>(s)][static_cast<size_t>(i)] != 0.0f) {
            int ex = 0;
            std::frexp(static_cast<double>(all[static_cast<size_t>(s)][static_cast<size_t>(i)]), &ex);
            emax = std::max(emax, ex);
          }
      for (int64_t i = k0; i < k1; ++i) {
        long double exact = 0.0L;
        for (int s = 0; s < S; ++s) exact += all[static_cast<size_t>(s)][static_cast<size_t>(i)];
        const double ex_d = static_cast<double>(exact);
        if (emax == std::numeric_limits<int>::min()) {
          CHECK(got[static_cast<size_t>(i)] == 0.0f);
          continue;
        }
        const float ef = static_cast<float>(ex_d);
        const double ulp = std::nextafter(std::fabs(ef), std::numeric_limits<float>::infinity()) - std::fabs(ef);
        const double bound = S * std::ldexp(1.0, emax - 63 + 3) + ulp;
        CHECK(std::fabs(static_cast<double>(got[static_cast<size_t>(i)]) - ex_d) <= bound);
        ++checked;
      }
    }
  CHECK(checked > 700);
  for (int64_t i = 556; i < 812; ++i) CHECK(got[static_cast<size_t>(i)] == 0.0f);  // the zero block
}

TEST_CASE("reproducible shard sum: NaN or infinity on one shard poisons its block only", "[mpi]") {
  const int S = 8;  // every rank count the suite uses (1, 2, 4, 8) divides it
  Parallel par(g_comm, S, 0);
  REQUIRE(S % par.P == 0);
  const int64_t n = 856;  // blocks [0, 256), [256, 512), [512, 768), [768, 856)
  std::vector<std::vector<float>> all;
  for (int s = 0; s < S; ++s) all.push_back(std::vector<float>(static_cast<size_t>(n), 0.25f * (s + 1)));
  all[2][300] = std::numeric_limits<float>::quiet_NaN();
  all[7][600] = -std::numeric_limits<float>::infinity();
  // the largest finite magnitude is finite: +-max cancel exactly, and on the grid of a block whose
  // exponent is 128 (step 2^(128 - 62 + 3)) every other term of the block rounds to zero
  all[5][800] = -std::numeric_limits<float>::max();
  all[6][800] = std::numeric_limits<float>::max();
  std::vector<const float*> mine;
  for (int s = par.shard_lo; s < par.shard_hi; ++s) mine.push_back(all[static_cast<size_t>(s)].data());
  std::vector<float> got(static_cast<size_t>(n));
  ShardSum<float>().sum(got.data(), mine, {{0, n}}, par);
  for (int64_t i = 0; i < n; ++i) {
    const float g = got[static_cast<size_t>(i)];
    if (i < 256) CHECK(g == 9.0f);  // 0.25 (1 + 2 + ... + 8): exact
    else if (i < 768) CHECK(std::isnan(g));
    else CHECK(g == 0.0f);
  }
}

TEST_CASE("sums over shards and gathers are the same on every rank count", "[mpi]") {
  const int S = 8;
  Parallel par(g_comm, S, 0);
  std::vector<double> local;
  for (int s = par.shard_lo; s < par.shard_hi; ++s) local.insert(local.end(), {0.1 * (s + 1), 1e16 + s, -1e16});
  double got[3];
  par.sum_over_shards(local.data(), 3, got);
  double want[3] = {0.0, 0.0, 0.0};
  for (int s = 0; s < S; ++s) {  // shard order, left to right
    want[0] += 0.1 * (s + 1);
    want[1] += 1e16 + s;
    want[2] += -1e16;
  }
  for (int j = 0; j < 3; ++j) CHECK(std::bit_cast<uint64_t>(got[j]) == std::bit_cast<uint64_t>(want[j]));
  // gathers in rank order: rank r contributes 3 values 10 r + k
  const std::vector<int32_t> mine = {10 * par.rank, 10 * par.rank + 1, 10 * par.rank + 2};
  std::vector<int32_t> all(static_cast<size_t>(3 * par.P), -1);
  par.allgather(mine.data(), mine.size() * sizeof(int32_t), all.data());
  for (int r = 0; r < par.P; ++r)
    for (int k = 0; k < 3; ++k) CHECK(all[static_cast<size_t>(3 * r + k)] == 10 * r + k);
}

int main(int argc, char** argv) {
  std::unique_ptr<Comm> comm = init_world(argc, argv);
  g_comm = comm.get();
  const int failed = Catch::Session().run(argc, argv);
  // every rank must agree on the verdict: a failure on any rank fails the job on rank 0 too
  const int any = comm->allreduce_max(failed > 0 ? 1 : 0);
  return any ? 1 : 0;
}
