// Entry point of `hyperrnn`: initialises MPI (always), dispatches the subcommand, maps errors to
// exit statuses (2 bad usage or configuration, 1 any other failure) with one line on rank 0.
#include <cstdio>
#include <cstring>
#include <exception>

#include "app/commands.hpp"
#include "core/error.hpp"

int main(int argc, char** argv) {
  using namespace hyperrnn;
  std::unique_ptr<Comm> comm = init_world(argc, argv);
  const bool root = comm->rank() == 0;
  auto fail = [&](int status, const char* what) {
    if (root) std::fprintf(stderr, "hyperrnn: error: %s\n", what);
    return status;
  };
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    if (root) std::fputs(usage_text().c_str(), argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    RunConfig cfg;
    if (cmd == "train") {
      if (!parse_options(Command::Train, argc - 1, argv + 1, cfg)) return 0;
      return run_train(*comm, cfg);
    }
    if (cmd == "eval") {
      if (!parse_options(Command::Eval, argc - 1, argv + 1, cfg)) return 0;
      return run_eval(*comm, cfg);
    }
    if (cmd == "bench") {
      if (!parse_options(Command::Bench, argc - 1, argv + 1, cfg)) return 0;
      return run_bench(*comm, cfg);
    }
    return fail(2, ("unknown command '" + cmd + "' (train, eval, bench); see 'hyperrnn --help'").c_str());
  } catch (const UsageError& e) {
    return fail(2, e.what());
  } catch (const std::exception& e) {
    const int status = fail(1, e.what());
    if (comm->size() > 1) comm->abort(status);
    return status;
  }
}
