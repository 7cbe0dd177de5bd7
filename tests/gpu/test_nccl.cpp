// NCCL behind Comm (mpi/comm_nccl.hpp) against the MPI Comm, under mpiexec with 1 and 2 ranks and
// one GPU per rank. Every case is exact, so the two must agree bit for bit: integer sums and
// maxima, float and double sums of small integers (exact in any order), the allgather and the
// personalised exchange, on device buffers (used in place) and on host buffers (staged), and the
// reproducible shard sum, whose integer reduction makes it the same bits over NCCL as over MPI,
// on the CPU and on the device (cuda::shard_sum).
// Without a GPU for every rank the runner exits 77 on every rank (ctest: skipped).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "cuda/device.hpp"
#include "cuda/kernels.hpp"
#include "mpi/comm.hpp"
#include "mpi/comm_nccl.hpp"
#include "parallel/layout.hpp"

using namespace hyperrnn;

#ifdef HYPERRNN_NCCL_STANDIN
namespace hyperrnn {
std::unique_ptr<Comm> make_standin_nccl_comm(Comm& host);  // tests/gpu/nccl_standin.cpp
}
#endif

namespace {
Comm* g_mpi = nullptr;
Comm* g_nccl = nullptr;

// this rank's place among the ranks on its host (host names gathered over MPI)
int local_rank(Comm& c) {
  char name[256] = {};
  gethostname(name, sizeof name - 1);
  std::vector<char> all(sizeof name * static_cast<size_t>(c.size()));
  c.allgather_bytes(name, sizeof name, all.data());
  int local = 0;
  for (int r = 0; r < c.rank(); ++r) local += std::strncmp(all.data() + sizeof name * static_cast<size_t>(r), name, sizeof name) == 0;
  return local;
}

}  // namespace

TEST_CASE("NCCL: integer sums and maxima equal MPI's, on device and host buffers", "[nccl]") {
  const int r = g_mpi->rank();
  const size_t n = 1000;
  std::vector<int64_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = (r + 1) * static_cast<int64_t>(i * 1000003 % 7919) - static_cast<int64_t>(i % 3) * (int64_t{1} << 40);
  std::vector<int64_t> ref = v, host = v;
  g_mpi->allreduce_sum(ref.data(), n);
  g_nccl->allreduce_sum(host.data(), n);
  CHECK(host == ref);
  cuda::DeviceBuffer<int64_t> d(n);
  d.upload(v);
  g_nccl->allreduce_sum(d.data(), n);
  CHECK(d.download() == ref);

  std::vector<int> m(257);
  for (size_t i = 0; i < m.size(); ++i) m[i] = static_cast<int>((i * 31 + static_cast<size_t>(r) * 17) % 101) - 50;
  std::vector<int> mref = m, mh = m;
  g_mpi->allreduce_max(mref.data(), m.size());
  g_nccl->allreduce_max(mh.data(), m.size());
  CHECK(mh == mref);
  cuda::DeviceBuffer<int32_t> dm(m.size());
  dm.upload(std::vector<int32_t>(m.begin(), m.end()));
  g_nccl->allreduce_max(dm.data(), m.size());
  const std::vector<int32_t> got = dm.download();
  CHECK(std::vector<int>(got.begin(), got.end()) == mref);
  CHECK(g_nccl->allreduce_max(10 * r - 3) == g_mpi->allreduce_max(10 * r - 3));
}

TEST_CASE("NCCL: float and double sums of small integers are exact and equal MPI's", "[nccl]") {
  const int r = g_mpi->rank(), P = g_mpi->size();
  const size_t n = 4099;
  std::vector<float> f(n);
  std::vector<double> g(n);
  for (size_t i = 0; i < n; ++i) {
    f[i] = static_cast<float>((r + 1) * static_cast<int>(i % 97)) - 40.0f;  // |sum| < 2^24: exact
    g[i] = static_cast<double>((r + 1) * static_cast<int64_t>(i)) * 0.5;
  }
  std::vector<float> fref = f, fh = f;
  std::vector<double> gref = g, gh = g;
  g_mpi->allreduce_sum(fref.data(), n);
  g_nccl->allreduce_sum(fh.data(), n);
  g_mpi->allreduce_sum(gref.data(), n);
  g_nccl->allreduce_sum(gh.data(), n);
  CHECK(fh == fref);
  CHECK(gh == gref);
  for (size_t i = 0; i < n; i += 500)  // and the exact value itself
    CHECK(fh[i] == static_cast<float>(P * (P + 1) / 2 * static_cast<int>(i % 97)) - 40.0f * static_cast<float>(P));
  cuda::DeviceBuffer<float> df(n);
  df.upload(f);
  g_nccl->allreduce_sum(df.data(), n);
  CHECK(df.download() == fref);
}

TEST_CASE("NCCL: allgather and the personalised exchange equal MPI's", "[nccl]") {
  const int r = g_mpi->rank(), P = g_mpi->size();
  std::vector<uint8_t> mine(37);
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = static_cast<uint8_t>(r * 50 + static_cast<int>(i));
  std::vector<uint8_t> aref(mine.size() * static_cast<size_t>(P)), ah(aref.size());
  g_mpi->allgather_bytes(mine.data(), mine.size(), aref.data());
  g_nccl->allgather_bytes(mine.data(), mine.size(), ah.data());
  CHECK(ah == aref);

  // rank r sends (r + 1) (d + 2) % 5 rows of 3 floats to rank d (some counts zero), each float
  // naming its source, destination and place; the counts every rank receives come over MPI
  const int W = 3;
  std::vector<int64_t> sc(static_cast<size_t>(P)), sd(static_cast<size_t>(P)), rc(static_cast<size_t>(P)), rd(static_cast<size_t>(P));
  int64_t at = 0;
  for (int d = 0; d < P; ++d) {
    sc[static_cast<size_t>(d)] = W * static_cast<int64_t>((r + 1) * (d + 2) % 5);
    sd[static_cast<size_t>(d)] = at;
    at += sc[static_cast<size_t>(d)];
  }
  std::vector<float> send(static_cast<size_t>(at));
  for (int d = 0; d < P; ++d)
    for (int64_t j = 0; j < sc[static_cast<size_t>(d)]; ++j)
      send[static_cast<size_t>(sd[static_cast<size_t>(d)] + j)] = static_cast<float>(10000 * r + 100 * d + j);
  std::vector<int64_t> all(static_cast<size_t>(P * P));
  g_mpi->allgather_bytes(sc.data(), sizeof(int64_t) * static_cast<size_t>(P), all.data());
  int64_t rat = 0;
  for (int s = 0; s < P; ++s) {
    rc[static_cast<size_t>(s)] = all[static_cast<size_t>(s * P + r)];
    rd[static_cast<size_t>(s)] = rat + 2;  // a gap of 2 before each slice: left untouched
    rat += rc[static_cast<size_t>(s)] + 2;
  }
  std::vector<float> ref(static_cast<size_t>(rat), -1.0f), host(ref.size(), -1.0f);
  g_mpi->alltoallv(send.data(), sc.data(), sd.data(), ref.data(), rc.data(), rd.data());
  g_nccl->alltoallv(send.data(), sc.data(), sd.data(), host.data(), rc.data(), rd.data());
  CHECK(host == ref);
  for (int s = 0; s < P; ++s)
    for (int64_t j = 0; j < rc[static_cast<size_t>(s)]; ++j)
      CHECK(ref[static_cast<size_t>(rd[static_cast<size_t>(s)] + j)] == static_cast<float>(10000 * s + 100 * r + j));
  if (!send.empty() && !ref.empty()) {
    cuda::DeviceBuffer<float> ds(send.size()), dr(ref.size());
    ds.upload(send);
    dr.upload(std::vector<float>(ref.size(), -1.0f));
    g_nccl->alltoallv(ds.data(), sc.data(), sd.data(), dr.data(), rc.data(), rd.data());
    CHECK(dr.download() == ref);
  }
}

TEST_CASE("NCCL: the reproducible shard sum over NCCL equals it over MPI, bitwise", "[nccl]") {
  const int S = 8;
  const int64_t n = 3000;
  std::vector<std::vector<float>> shards;
  for (int s = 0; s < S; ++s) {
    std::vector<float> v(static_cast<size_t>(n));
    CounterRng rng(5, RngPurpose::TestData, 200u + static_cast<uint32_t>(s), 0);
    for (auto& x : v) x = static_cast<float>(std::ldexp(1.0, static_cast<int>(rng.below(40)) - 30) * (rng.uniform_double() - 0.5));
    shards.push_back(std::move(v));
  }
  Parallel pm(g_mpi, S, 0), pn(g_nccl, S, 0);
  std::vector<const float*> mine;
  for (int s = pm.shard_lo; s < pm.shard_hi; ++s) mine.push_back(shards[static_cast<size_t>(s)].data());
  std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
  ShardSum<float>().sum(a.data(), mine, {{0, 1000}, {1000, n}}, pm);
  ShardSum<float>().sum(b.data(), mine, {{0, 1000}, {1000, n}}, pn);
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
  // the device shard sum over NCCL (its maximum and integer sum on device arrays in place)
  std::vector<cuda::DeviceBuffer<float>> dev;
  std::vector<const float*> dp;
  for (int s = pm.shard_lo; s < pm.shard_hi; ++s) {
    dev.emplace_back(static_cast<size_t>(n));
    dev.back().upload(shards[static_cast<size_t>(s)]);
  }
  for (const auto& d : dev) dp.push_back(d.data());
  cuda::DeviceBuffer<float> out(static_cast<size_t>(n));
  cuda::shard_sum(out.data(), dp, {{0, 1000}, {1000, n}}, S, g_nccl);
  const std::vector<float> c = out.download();
  CHECK(std::memcmp(a.data(), c.data(), a.size() * sizeof(float)) == 0);
}

int main(int argc, char** argv) {
  std::unique_ptr<Comm> mpi = init_world(argc, argv);
  g_mpi = mpi.get();
#ifdef HYPERRNN_NCCL_STANDIN  // the test's own checks, with MPI behind the "NCCL" Comm and host "device" buffers
  std::unique_ptr<Comm> standin = make_standin_nccl_comm(*mpi);
  g_nccl = standin.get();
  if (mpi->rank() == 0) std::printf("stand-in: %s\n", standin->library().c_str());
  const int failed_standin = Catch::Session().run(argc, argv);
  return mpi->allreduce_max(failed_standin > 0 ? 1 : 0) ? 1 : 0;
#endif
  std::string why;
  const int gpus = cuda::visible_devices(&why);
  const int local = local_rank(*mpi);
  // every rank needs a GPU of its own on its node; otherwise all skip together
  const int missing = mpi->allreduce_max(local >= gpus ? 1 : 0);
  if (missing) {
    if (mpi->rank() == 0)
      std::printf("skipped: %d rank(s) need one GPU each; this node sees %d (%s); no NCCL call has run\n", mpi->size(), gpus,
                  gpus == 0 ? why.c_str() : "too few");
    return 77;
  }
  cuda::use_device(gpus == 1 ? 0 : local);
  std::unique_ptr<Comm> nccl = make_nccl_comm(*mpi);
  g_nccl = nccl.get();
  if (mpi->rank() == 0) std::printf("NCCL tests on %s: %s\n", cuda::describe(gpus == 1 ? 0 : local).c_str(), nccl->library().c_str());
  const int failed = Catch::Session().run(argc, argv);
  const int any = mpi->allreduce_max(failed > 0 ? 1 : 0);
  nccl.reset();  // before MPI is finalised
  return any ? 1 : 0;
}
