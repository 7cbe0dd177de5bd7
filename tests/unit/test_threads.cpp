// The rank's thread pool (src/parallel/threads.hpp): every item exactly once whatever the thread
// count, nested regions in order on the caller, exceptions carried to the caller, per-thread
// accounting; and a model step that is bitwise the same on 1, 2, 3 and 4 threads.
#include <catch2/catch.hpp>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "core/fp_mode.hpp"
#include "fixtures.hpp"
#include "parallel/threads.hpp"

using namespace hyperrnn;

TEST_CASE("thread pool runs every item exactly once", "[threads]") {
  for (int T : {1, 2, 3, 8}) {
    ThreadPool pool(T);
    for (int n : {0, 1, 2, 7, 100}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::vector<int> thread_of(static_cast<size_t>(n), -1);
      pool.run(n, [&](int i, int w) {
        hits[static_cast<size_t>(i)].fetch_add(1);
        thread_of[static_cast<size_t>(i)] = w;
      });
      for (int i = 0; i < n; ++i) {
        CHECK(hits[static_cast<size_t>(i)].load() == 1);
        CHECK(thread_of[static_cast<size_t>(i)] >= 0);
        CHECK(thread_of[static_cast<size_t>(i)] < T);
      }
    }
  }
}

TEST_CASE("thread pool: workers compute in the caller's subnormal mode (--denormals)", "[threads]") {
  // 2^-130 is subnormal in float: squared-and-scaled arithmetic on it reads as zero under DAZ and
  // gives a nonzero subnormal under IEEE gradual underflow.
  volatile float tiny = 0x1p-130f;
  ThreadPool pool(3);
  for (bool flush : {true, false, true}) {
    set_flush_denormals(flush);
    std::vector<int> mode(12, -1);
    std::vector<float> value(12, -1.0f);
    pool.run(12, [&](int i, int) {
      mode[static_cast<size_t>(i)] = flushing_denormals() ? 1 : 0;
      value[static_cast<size_t>(i)] = tiny * 2.0f;
    });
    for (int i = 0; i < 12; ++i) {
      CHECK(mode[static_cast<size_t>(i)] == (flush ? 1 : 0));
      CHECK(value[static_cast<size_t>(i)] == (flush ? 0.0f : 0x1p-129f));
    }
  }
  set_flush_denormals(false);  // the other unit tests run in IEEE mode, as before
}

TEST_CASE("thread pool: nested regions run in order on the calling thread", "[threads]") {
  ThreadPool pool(3);
  std::vector<std::vector<int>> order(6);
  pool.run(6, [&](int i, int) {
    pool.run(4, [&](int j, int w) {
      CHECK(w == 0);
      order[static_cast<size_t>(i)].push_back(j);
    });
  });
  for (const auto& o : order) CHECK(o == std::vector<int>{0, 1, 2, 3});
}

TEST_CASE("thread pool: an item's exception reaches the caller, and the pool goes on", "[threads]") {
  ThreadPool pool(2);
  std::atomic<int> ran{0};
  CHECK_THROWS_WITH(pool.run(10, [&](int i, int) {
                      ran.fetch_add(1);
                      if (i == 3) throw std::runtime_error("item 3");
                    }),
                    "item 3");
  CHECK(ran.load() == 10);  // the other items still ran
  int sum = 0;
  pool.run(1, [&](int, int) { sum = 42; });
  CHECK(sum == 42);
}

TEST_CASE("thread pool accounting: busy time per thread within the regions' time", "[threads]") {
  ThreadPool pool(2);
  pool.reset_accounting();
  volatile double sink = 0;
  pool.run(8, [&](int, int) {
    for (int k = 0; k < 200000; ++k) sink = sink + 1e-9 * k;
  });
  REQUIRE(pool.busy_s().size() == 2);
  CHECK(pool.region_s() > 0.0);
  for (double b : pool.busy_s()) CHECK(b <= pool.region_s() * 1.01 + 1e-4);
  CHECK(pool.busy_s()[0] + pool.busy_s()[1] > 0.0);
}

TEST_CASE("affinity cores and the BLAS switch", "[threads]") {
  CHECK(affinity_cores() >= 1);
  const std::string blas = make_blas_single_threaded();
  CHECK(blas.find("1 thread") != std::string::npos);
}

namespace {
// Two training steps of a 4-shard model on `threads` threads; returns parameters and moments.
std::vector<double> two_steps(ModelKind kind, int threads) {
  set_threads(threads);
  const ModelConfig mc = test::small_model(kind, 40, 16, 8, 2, 2, 4, 2, 8);
  const int B = 8;
  Parallel par(nullptr, 4, mc.is_moe() ? mc.experts : 0);
  Transformer<double> model(mc, B, B * 3, &par);
  model.init(5);
  nn::AdamW<double> opt(model.table(), {});
  MqarGenerator gen(test::small_mqar(40, 16, 3));
  Batch batch;
  batch.resize(B, 16);
  batch.shard_samples = {2, 2, 2, 2};
  for (int step = 0; step < 2; ++step) {
    gen.fill(batch, 1, RngPurpose::TestData, static_cast<uint32_t>(step), 0, B);
    model.zero_grad();
    model.forward(batch);
    model.backward();
    opt.step(model.params.data(), model.grads.data(), 1e-2);
  }
  std::vector<double> out = model.params;
  out.insert(out.end(), opt.m.begin(), opt.m.end());
  out.insert(out.end(), model.grads.begin(), model.grads.end());
  set_threads(1);
  return out;
}
}  // namespace

TEST_CASE("a 4-shard model step is bitwise the same on 1, 2, 3 and 4 threads", "[threads]") {
  for (ModelKind kind : {ModelKind::Dense, ModelKind::Moe, ModelKind::GaussMoe}) {
    const std::vector<double> one = two_steps(kind, 1);
    for (int T : {2, 3, 4}) {
      const std::vector<double> many = two_steps(kind, T);
      REQUIRE(many.size() == one.size());
      int differ = 0;
      for (size_t i = 0; i < one.size(); ++i) differ += one[i] != many[i];  // bitwise (no NaN here)
      CHECK(differ == 0);
    }
  }
}
