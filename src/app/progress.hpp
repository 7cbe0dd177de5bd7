// Rank-0 progress report: step/total, loss, accuracy, tokens/s and ETA. On a terminal one line is
// rewritten in place; otherwise (batch jobs) one line is printed per interval. Every printed line
// is also appended to the run's log file.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace hyperrnn {

class Progress {
 public:
  // enabled false (ranks other than 0): prints and logs nothing.
  Progress(int64_t total_steps, int64_t every, const std::string& log_path, bool enabled = true);
  ~Progress();
  void step(int64_t step, double loss, double acc, double tokens_per_s);
  // A whole line (evaluation results, summaries): printed and logged.
  void line(const std::string& text);
  // A failed write to the log is kept (and the log closed) instead of thrown: see CsvWriter.
  void defer_errors(bool on) { defer_ = on; }
  const std::string& error() const { return error_; }

 private:
  int64_t total_, every_;
  bool tty_;
  bool enabled_;
  std::FILE* log_ = nullptr;
  std::string log_path_, error_;
  bool defer_ = false;
  void log_line(const std::string& text);  // throws naming the log and the system's reason
  bool dirty_ = false;  // a terminal line is being rewritten in place
  std::chrono::steady_clock::time_point start_;
};

std::string format_duration(double seconds);

}  // namespace hyperrnn
