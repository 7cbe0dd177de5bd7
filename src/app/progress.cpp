// Progress printing.
#include "app/progress.hpp"

#include <cstdlib>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cmath>

#include "core/error.hpp"

namespace hyperrnn {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long t = std::lround(s);
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

namespace {
// mpirun forwards a rank's output through a pseudo-terminal even when the job's output goes to a
// file, so isatty() cannot tell: under a launcher, print one line per interval (batch style).
bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "SLURM_STEP_ID"})
    if (std::getenv(v)) return true;
  return false;
}
}  // namespace

Progress::Progress(int64_t total, int64_t every, const std::string& log_path, bool enabled)
    : total_(total), every_(every > 0 ? every : std::max<int64_t>(1, total / 20)),
      tty_(isatty(STDOUT_FILENO) != 0 && !launched_by_mpi()), enabled_(enabled), start_(std::chrono::steady_clock::now()) {
  log_path_ = log_path;
  if (enabled_ && !log_path.empty()) log_ = std::fopen(log_path.c_str(), "a");
}

Progress::~Progress() {
  if (dirty_) std::printf("\n");
  if (log_) std::fclose(log_);
}

void Progress::step(int64_t step, double loss, double acc, double tokens_per_s) {
  if (!enabled_) return;
  const int64_t done = step + 1;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double eta = elapsed / static_cast<double>(done) * static_cast<double>(total_ - done);
  char buf[256];
  std::snprintf(buf, sizeof buf, "step %lld/%lld | loss %.4f | acc %.4f | %.0f tok/s | ETA %s",
                static_cast<long long>(done), static_cast<long long>(total_), loss, acc, tokens_per_s,
                format_duration(eta).c_str());
  const bool interval = done % every_ == 0 || done == total_ || done == 1;
  if (tty_) {
    std::printf("\r%s\033[K", buf);
    std::fflush(stdout);
    dirty_ = true;
  } else if (interval) {
    std::printf("%s\n", buf);
    std::fflush(stdout);
  }
  if (interval && log_) log_line(buf);
}

void Progress::log_line(const std::string& text) {
  if (std::fprintf(log_, "%s\n", text.c_str()) < 0 || std::fflush(log_) != 0) {
    const std::string msg = "write to '" + log_path_ + "' failed: " + std::strerror(errno);
    if (!defer_) throw RuntimeError(msg);
    error_ = msg;
    std::fclose(log_);
    log_ = nullptr;
  }
}

void Progress::line(const std::string& text) {
  if (!enabled_) return;
  if (dirty_) {
    std::printf("\n");
    dirty_ = false;
  }
  std::printf("%s\n", text.c_str());
  std::fflush(stdout);
  if (log_) log_line(text);
}

}  // namespace hyperrnn
