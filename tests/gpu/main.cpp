// The GPU tests' runner: without a visible GPU it runs nothing and exits 77, which ctest reports
// as skipped (SKIP_RETURN_CODE), never as passed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

#include "cuda/device.hpp"

int main(int argc, char** argv) {
  std::string why;
  if (hyperrnn::cuda::visible_devices(&why) == 0) {
    std::printf("skipped: no GPU visible (%s); no kernel has run\n", why.c_str());
    return 77;
  }
  hyperrnn::cuda::use_device(0);
  std::printf("GPU tests on %s\n", hyperrnn::cuda::describe(0).c_str());
  return Catch::Session().run(argc, argv);
}
