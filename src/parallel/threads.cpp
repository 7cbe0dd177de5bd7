// The rank's thread pool: workers block on a condition variable between regions (no spinning, so an
// oversubscribed node loses no time to idle threads); items are handed out by one atomic counter.
#include "parallel/threads.hpp"

#include "core/blas.hpp"
#include "core/small_gemm.hpp"
#include "core/fp_mode.hpp"

#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "core/error.hpp"

// OpenBLAS's run-time thread control, weak so that the program also links against another CBLAS.
extern "C" {
void openblas_set_num_threads(int) __attribute__((weak));
int openblas_get_num_threads(void) __attribute__((weak));
char* openblas_get_config(void) __attribute__((weak));
char* openblas_get_corename(void) __attribute__((weak));
}

namespace hyperrnn {

namespace {
thread_local bool in_region = false;
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

struct ThreadPool::Shared {
  std::mutex m;
  std::condition_variable start, done;
  uint64_t generation = 0;
  bool stop = false;
  int active = 0;  // workers still in the current region
  int n = 0;
  const std::function<void(int, int)>* fn = nullptr;
  std::atomic<int> next{0};
  std::exception_ptr error;
  Phase phase = Phase::Model;
  uint32_t fp = 0;  // the caller's floating-point mode (subnormals), applied by every worker
  std::vector<std::thread> workers;
};

ThreadPool::ThreadPool(int threads) : threads_(threads), sh_(std::make_unique<Shared>()) {
  HYPERRNN_CHECK(threads >= 1, "thread pool: at least one thread");
  busy_.assign(static_cast<size_t>(threads), 0.0);
  for (int i = 1; i < threads; ++i) sh_->workers.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(sh_->m);
    sh_->stop = true;
  }
  sh_->start.notify_all();
  for (std::thread& t : sh_->workers) t.join();
}

void ThreadPool::worker(int id) {
  Shared& s = *sh_;
  uint64_t seen = 0;
  for (;;) {
    std::unique_lock<std::mutex> lk(s.m);
    s.start.wait(lk, [&] { return s.stop || s.generation != seen; });
    if (s.stop) return;
    seen = s.generation;
    const std::function<void(int, int)>& fn = *s.fn;
    const int n = s.n;
    const Phase phase = s.phase;
    const uint32_t fp = s.fp;
    lk.unlock();
    set_fp_mode(fp);
    in_region = true;
    set_current_phase(phase);
    const double t0 = now_s();
    for (int i = s.next.fetch_add(1); i < n; i = s.next.fetch_add(1)) {
      try {
        fn(i, id);
      } catch (...) {
        std::lock_guard<std::mutex> g(s.m);
        if (!s.error) s.error = std::current_exception();
      }
    }
    busy_[static_cast<size_t>(id)] += now_s() - t0;
    in_region = false;
    set_current_phase(Phase::Model);
    lk.lock();
    if (--s.active == 0) s.done.notify_one();
  }
}

void ThreadPool::run(int n, const std::function<void(int, int)>& fn) {
  if (n <= 0) return;
  if (in_region || threads_ == 1 || n == 1) {  // nested, or nothing to share: in order, here
    const double t0 = now_s();
    const bool outer = !in_region;
    in_region = true;
    try {
      for (int i = 0; i < n; ++i) fn(i, 0);
    } catch (...) {
      if (outer) in_region = false;
      throw;
    }
    if (outer) {
      in_region = false;
      const double dt = now_s() - t0;
      busy_[0] += dt;
      region_s_ += dt;
    }
    return;
  }
  Shared& s = *sh_;
  const double t0 = now_s();
  {
    std::lock_guard<std::mutex> lk(s.m);
    s.fn = &fn;
    s.n = n;
    s.next.store(0);
    s.error = nullptr;
    s.active = threads_ - 1;
    s.phase = current_phase();  // the items work in the caller's phase (the benchmark's split)
    s.fp = fp_mode();           // and in its floating-point mode (--denormals)
    ++s.generation;
  }
  s.start.notify_all();
  in_region = true;
  for (int i = s.next.fetch_add(1); i < n; i = s.next.fetch_add(1)) {
    try {
      fn(i, 0);
    } catch (...) {
      std::lock_guard<std::mutex> g(s.m);
      if (!s.error) s.error = std::current_exception();
    }
  }
  busy_[0] += now_s() - t0;
  in_region = false;
  std::unique_lock<std::mutex> lk(s.m);
  s.done.wait(lk, [&] { return s.active == 0; });
  region_s_ += now_s() - t0;
  if (s.error) {
    std::exception_ptr e = s.error;
    s.error = nullptr;
    std::rethrow_exception(e);
  }
}

void ThreadPool::reset_accounting() {
  std::fill(busy_.begin(), busy_.end(), 0.0);
  region_s_ = 0.0;
}

namespace {
std::unique_ptr<ThreadPool>& pool_ptr() {
  static std::unique_ptr<ThreadPool> p = std::make_unique<ThreadPool>(1);
  return p;
}
}  // namespace

ThreadPool& threads() { return *pool_ptr(); }

void set_threads(int n) {
  if (pool_ptr()->size() == n) return;
  pool_ptr().reset();
  pool_ptr() = std::make_unique<ThreadPool>(n);
}

int affinity_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) {
    const unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? static_cast<int>(hw) : 1;
  }
  const int n = CPU_COUNT(&set);
  return n > 0 ? n : 1;
}

namespace {
std::string& blas_text() {
  static std::string s;
  return s;
}
}  // namespace

std::string make_blas_single_threaded() {
  if (openblas_set_num_threads == nullptr) return blas_text() = "BLAS: not OpenBLAS (its calls are taken to be single-threaded)";
  openblas_set_num_threads(1);
  const int t = openblas_get_num_threads ? openblas_get_num_threads() : 1;
  if (t != 1) throw RuntimeError("OpenBLAS still reports " + std::to_string(t) + " threads after openblas_set_num_threads(1)");
  std::string cfg = openblas_get_config ? openblas_get_config() : "";
  const std::string core = openblas_get_corename ? openblas_get_corename() : "?";
  const std::string small = small_gemm_library();
  return blas_text() = "BLAS: OpenBLAS (" + cfg + "), kernel " + core + ", 1 thread per call" +
                       (small.empty() ? "" : "; small float GEMMs: " + small) + "; attention products: core/small_gemm, " +
                       small_gemm_path_name(SmallGemmPath::automatic) + " path";
}

const std::string& blas_threading() { return blas_text(); }

std::string blas_short() {
  const std::string& t = blas_text();
  if (openblas_set_num_threads == nullptr || t.empty()) return t.empty() ? "BLAS unknown" : t.substr(6);
  std::string version = "OpenBLAS";
  if (openblas_get_config) {  // "OpenBLAS 0.3.21 NO_LAPACKE ...": the first two words
    const std::string cfg = openblas_get_config();
    const size_t sp = cfg.find(' '), sp2 = sp == std::string::npos ? sp : cfg.find(' ', sp + 1);
    version = cfg.substr(0, sp2);
  }
  const std::string small = small_gemm_library();
  // the attention's own products (core/small_gemm; "scalar": the BLAS takes them, nn/ops.cpp): the
  // path shows the speed, never the bits
  return version + ", kernel " + (openblas_get_corename ? openblas_get_corename() : "?") + ", 1 thread per call" +
         (small.empty() ? "" : ", " + small) + ", attention " + small_gemm_path_name(SmallGemmPath::automatic);
}

}  // namespace hyperrnn
