// CSV files of the run directory (metrics.csv, eval.csv): a header row, then one row per call,
// floating-point values printed shortest round-trip exact (std::to_chars), flushed per row so a
// killed job leaves every finished step on disk.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace hyperrnn {

// Shortest decimal text that reads back to exactly v.
std::string format_roundtrip(double v);

class CsvWriter {
 public:
  CsvWriter() = default;
  CsvWriter(const CsvWriter&) = delete;
  CsvWriter& operator=(const CsvWriter&) = delete;
  ~CsvWriter();
  // Truncates path and writes the header.
  void open(const std::string& path, const std::vector<std::string>& header);
  // Appends to path, which already starts with this header (a resumed run).
  void open_append(const std::string& path, const std::vector<std::string>& header);
  const std::string& last_row() const { return last_; }  // the last row written, without newline
  bool is_open() const { return f_ != nullptr; }
  CsvWriter& add(double v);
  CsvWriter& add(int64_t v);
  CsvWriter& add(const std::string& v);
  void end_row();  // checks the column count, writes, flushes; drops the row when not open
  // Deferred errors (a multi-rank run agrees on them once per step): a failed write is kept as
  // error() and the file closed instead of throwing.
  void defer_errors(bool on) { defer_ = on; }
  const std::string& error() const { return error_; }

 private:
  std::FILE* f_ = nullptr;
  std::string path_, row_, last_, error_;
  bool defer_ = false;
  size_t columns_ = 0, filled_ = 0;
};

// A run's CSV checked against the snapshot it resumes from (step `step`): the header, and every row
// up to the snapshot's step: the column count, an integer step, steps strictly increasing (per-step
// files: exactly 1, 2, ..., step) or non-decreasing without repeated rows (event files), and, where
// the snapshot proves a row (metrics.csv: the snapshot step's row; event files: the last event's
// step), that it is there. Rows after the snapshot's step are the interrupted run's and are dropped.
// A row the snapshot holds itself (the last metrics row) is repaired when it is torn or missing, and
// `note` says so; any other damage throws UsageError naming the file and line. `kept` is the text to
// continue with (header and rows up to the step). authoritative = false: proven_last_row is only a
// stand-in for a torn or missing last row (timing.csv's, written after the snapshot), never a
// replacement for a present one.
enum class CsvKind { PerStep, Events };
struct CsvResume {
  std::string kept, note;
};
CsvResume check_resume_csv(const std::string& path, const std::vector<std::string>& header, int64_t step, CsvKind kind,
                           const std::string& proven_last_row = "", int64_t last_event_step = -1, bool authoritative = true);
// Writes text to path through a temporary file and a rename.
void write_file_atomic(const std::string& path, const std::string& text);


}  // namespace hyperrnn
