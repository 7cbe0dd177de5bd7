// Out-of-line part of the check macros.
#include "core/error.hpp"

namespace hyperrnn {

void fail_check(const char* expr, const std::string& msg, const char* file, int line) {
  throw RuntimeError(std::string(file) + ":" + std::to_string(line) + ": check failed (" + expr +
                     "): " + msg);
}

}  // namespace hyperrnn
