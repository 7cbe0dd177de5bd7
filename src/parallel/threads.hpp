// The threads of one rank (--threads T): a fixed pool that runs the work items of a parallel
// region (canonical shards, experts, samples, parameter blocks), each item exactly once, on
// whichever thread is free. Determinism rests on the callers: the items of a region are a
// decomposition that does not depend on T, each item writes only its own outputs, and every sum
// over items is taken afterwards in item order. The pool's only atomic hands out item numbers; it
// never adds values. Also here: the program-wide switch that makes BLAS single-threaded, and the
// per-thread accounting `hyperrnn bench` reports (busy and idle time per thread).
// Leaves out: what the items compute (src/models, src/nn, src/pilf).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace hyperrnn {

class ThreadPool {
 public:
  // threads >= 1: the calling thread plus threads - 1 workers.
  explicit ThreadPool(int threads = 1);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return threads_; }
  // fn(item, thread) for every item in [0, n), then returns. thread in [0, size()) names the thread
  // running the item (for per-thread scratch). A region started from inside a region runs its items
  // in order on the calling thread. An exception thrown by an item is rethrown here (the first one;
  // the other items still run).
  void run(int n, const std::function<void(int item, int thread)>& fn);

  // Accounting since reset_accounting(): time spent inside regions (wall), and each thread's time on
  // items; a thread's idle time in regions is region_s - busy_s[thread].
  void reset_accounting();
  double region_s() const { return region_s_; }
  const std::vector<double>& busy_s() const { return busy_; }

 private:
  struct Shared;
  void worker(int id);
  int threads_;
  std::unique_ptr<Shared> sh_;
  std::vector<double> busy_;
  double region_s_ = 0.0;
};

// The process's pool (size 1 until set_threads). Not to be called from inside a region.
ThreadPool& threads();
void set_threads(int n);

// Cores in this process's affinity mask (sched_getaffinity; the launcher's binding decides it).
int affinity_cores();

// Makes every BLAS call single-threaded, whatever OPENBLAS_NUM_THREADS / OMP_NUM_THREADS say
// (OpenBLAS: openblas_set_num_threads(1)). Returns a one-line description of the BLAS threading
// after the call; throws when the library reports more than one thread afterwards.
std::string make_blas_single_threaded();
// The description make_blas_single_threaded() returned (empty before it ran).
// "OpenBLAS 0.3.21, kernel Zen, 1 thread per call": the banner's short form.
std::string blas_short();
const std::string& blas_threading();

}  // namespace hyperrnn
