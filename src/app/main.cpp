// Entry point of `hyperrnn`: initialises MPI (always), dispatches the subcommand, maps errors to
// exit statuses (2 bad usage or configuration, 1 any other failure) with one line on rank 0.
#include <cstdio>
#include <cstring>
#include <exception>

#include "app/commands.hpp"
#include "core/error.hpp"
#include "core/fp_mode.hpp"
#include "core/version.hpp"
#include "cuda/device.hpp"
#include "parallel/threads.hpp"

int main(int argc, char** argv) {
  using namespace hyperrnn;
  std::unique_ptr<Comm> comm = init_world(argc, argv);
  const bool root = comm->rank() == 0;
  // BLAS never threads on its own: the rank's parallelism is its own --threads (docs/architecture.md),
  // so OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and the launcher's binding cannot change a result.
  try {
    make_blas_single_threaded();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hyperrnn: error: %s\n", e.what());
    return 1;
  }
  auto fail = [&](int status, const char* what) {
    if (root) std::fprintf(stderr, "hyperrnn: error: %s\n", what);
    return status;
  };
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    if (root) std::fputs(usage_text().c_str(), argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (std::strcmp(argv[1], "--version") == 0 || std::strcmp(argv[1], "version") == 0) {
    if (root)
      std::printf("%s\n%s\n", code_version(),
                  cuda::built() ? "CUDA backend: built (its kernels only; the step runs on the CPU: docs/gpu.md)"
                                : "CUDA backend: not built (-DHYPERRNN_CUDA=ON builds it)");
    return 0;
  }
  if (std::strcmp(argv[1], "help") == 0) {
    if (root) std::fputs(usage_text().c_str(), stdout);
    return 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "inspect") {
      if (argc == 3 && (std::strcmp(argv[2], "--help") == 0 || std::strcmp(argv[2], "-h") == 0)) {
        if (root) std::puts("usage: hyperrnn inspect PATH   (a run directory, a snapshot directory or its manifest.h5)");
        return 0;
      }
      if (argc != 3) return fail(2, "inspect takes one argument: a run directory, a snapshot directory or a manifest.h5");
      return run_inspect(*comm, argv[2]);
    }
    RunConfig cfg;
    Command c = Command::Train;
    if (cmd == "train") c = Command::Train;
    else if (cmd == "eval") c = Command::Eval;
    else if (cmd == "bench") c = Command::Bench;
    else return fail(2, ("unknown command '" + cmd + "' (train, eval, inspect, bench); see 'hyperrnn --help'").c_str());
    // Every rank parses its own arguments; errors and differences are agreed on collectively, so
    // a bad option on any rank ends every rank with status 2 and none hangs.
    bool go = true;
    collective(*comm, [&] { go = parse_options(c, argc - 1, argv + 1, cfg, root); });
    if (!go) return 0;
    std::string warning;
    const int T = resolve_threads(cfg.threads, &warning);
    if (!warning.empty()) {
      if (comm->size() == 1) std::fprintf(stderr, "hyperrnn: %s\n", warning.c_str());
      else std::fprintf(stderr, "hyperrnn: rank %d: %s\n", comm->rank(), warning.c_str());
    }
    set_threads(T);
    set_flush_denormals(cfg.denormals == "flush");  // the pool's workers follow this thread's mode
    check_same_everywhere(*comm, cmd + "\n" + to_ini(cfg) + "snapshot = " + cfg.snapshot + "\n");
    attach_device(*comm, cfg);
    if (c == Command::Train) return run_train(*comm, cfg);
    if (c == Command::Eval) return run_eval(*comm, cfg);
    return run_bench(*comm, cfg);
  } catch (const UsageError& e) {
    return fail(2, e.what());
  } catch (const AgreedError& e) {  // every rank knows it: a normal end with exit 1, said once
    return fail(1, e.what());
  } catch (const std::exception& e) {
    // a failure on one rank: that rank reports it (the others may be waiting in a collective)
    // and takes the whole job down
    if (comm->size() == 1) return fail(1, e.what());
    std::fprintf(stderr, "hyperrnn: error on rank %d: %s\n", comm->rank(), e.what());
    comm->abort(1);
  }
}
