// Error handling: always-on checks (HYPERRNN_CHECK) that throw with file and line, debug-only
// asserts (HYPERRNN_DASSERT), and the two exception types the application maps to exit codes.
// Library-family macros (MPI, HDF5, CUDA, NCCL) live next to the code that calls those libraries.
#pragma once
#include <stdexcept>
#include <string>

namespace hyperrnn {

// Bad usage or bad configuration: the application prints the one-line message and exits 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Anything else that stops a run (I/O failure, numeric failure, internal error): exit 1.
struct RuntimeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A failure every rank has agreed on (collectively, so no rank waits in a later collective): each
// rank ends normally with exit 1, rank 0 printing the message once. Thrown on every rank alike.
struct AgreedError : RuntimeError {
  using RuntimeError::RuntimeError;
};

[[noreturn]] void fail_check(const char* expr, const std::string& msg, const char* file, int line);

}  // namespace hyperrnn

#define HYPERRNN_CHECK(cond, msg)                                                   \
  do {                                                                              \
    if (!(cond)) ::hyperrnn::fail_check(#cond, (msg), __FILE__, __LINE__);          \
  } while (0)

#ifdef NDEBUG
#define HYPERRNN_DASSERT(cond) ((void)0)
#else
#define HYPERRNN_DASSERT(cond) HYPERRNN_CHECK(cond, "debug assertion")
#endif
