// CSV writer.
#include "io/csv.hpp"

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace hyperrnn {

std::string format_roundtrip(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

CsvWriter::~CsvWriter() {
  if (f_) std::fclose(f_);
}

void CsvWriter::open_append(const std::string& path, const std::vector<std::string>& header) {
  f_ = std::fopen(path.c_str(), "a");
  if (!f_) throw RuntimeError("cannot append to '" + path + "': " + std::strerror(errno));
  path_ = path;
  columns_ = header.size();
}

namespace {
size_t count_fields(const std::string& line) {
  size_t n = 1;
  for (char c : line) n += c == ',';
  return n;
}
bool parse_step(const std::string& line, int64_t& step) {
  const size_t comma = line.find(',');
  const std::string f = line.substr(0, comma);
  if (f.empty()) return false;
  const auto r = std::from_chars(f.data(), f.data() + f.size(), step);
  return r.ec == std::errc() && r.ptr == f.data() + f.size() && step >= 0;
}
}  // namespace

CsvResume check_resume_csv(const std::string& path, const std::vector<std::string>& header, int64_t step, CsvKind kind,
                           const std::string& proven_last_row, int64_t last_event_step, bool authoritative) {
  const std::string name = std::filesystem::path(path).filename().string();
  auto refuse = [&](size_t line, const std::string& why) -> UsageError {
    return UsageError("option '--resume': " + path + (line > 0 ? " line " + std::to_string(line) : std::string()) + ": " + why +
                      "; the snapshot at step " + std::to_string(step) + " cannot vouch for it (restore the file, or resume from another snapshot)");
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw refuse(0, "missing");
  std::string want;
  for (size_t i = 0; i < header.size(); ++i) want += (i ? "," : "") + header[i];
  std::string line;
  if (!std::getline(in, line)) throw refuse(1, "empty (no header)");
  if (line != want) throw refuse(1, "the header is not this run's ('" + line.substr(0, 60) + "...')");
  CsvResume out;
  out.kept = line + "\n";
  int64_t prev = 0, last_event = -1;
  std::string prev_line;
  size_t no = 1;
  bool done = false;
  while (!done && std::getline(in, line)) {
    ++no;
    const bool torn = in.eof();  // no newline at the end: an interrupted write
    int64_t s = 0;
    const bool ok = !torn && parse_step(line, s) && count_fields(line) == header.size();
    if (ok && s > step) break;  // the interrupted run's rows after the snapshot
    if (!ok) {
      if (kind == CsvKind::PerStep && !proven_last_row.empty() && prev == step - 1) break;  // the row we can restore
      if (prev >= step) break;  // everything the snapshot needs is there: the rest is the interrupted run's
      throw refuse(no, torn ? "a torn row (no line end)" : "a malformed row ('" + line.substr(0, 60) + "')");
    }
    if (kind == CsvKind::PerStep && s != prev + 1)
      throw refuse(no, s <= prev ? "step " + std::to_string(s) + " again (a duplicated row)"
                                 : "rows for steps " + std::to_string(prev + 1) + "-" + std::to_string(s - 1) + " are missing");
    if (kind == CsvKind::Events && (s < prev || line == prev_line))
      throw refuse(no, s < prev ? "step " + std::to_string(s) + " after step " + std::to_string(prev) : "a repeated row");
    if (kind == CsvKind::PerStep && s == step && authoritative && !proven_last_row.empty() && line != proven_last_row) {
      out.kept += proven_last_row + "\n";  // the snapshot's own copy of this row wins
      out.note = name + " line " + std::to_string(no) + ": step " + std::to_string(step) + "'s row differed from the snapshot's copy; restored from the snapshot";
      prev = s;
      done = true;
      continue;
    }
    out.kept += line + "\n";
    prev = s;
    prev_line = line;
    last_event = s;
    if (kind == CsvKind::PerStep && s == step) done = true;
  }
  if (kind == CsvKind::PerStep && prev < step) {
    if (prev == step - 1 && !proven_last_row.empty()) {
      out.kept += proven_last_row + "\n";
      out.note = name + ": step " + std::to_string(step) + "'s row was torn or missing; " +
                 (authoritative ? "restored from the snapshot" : "written as unknown (nan): the snapshot does not hold it");
    } else {
      throw refuse(no, "rows for steps " + std::to_string(prev + 1) + "-" + std::to_string(step) + " are missing");
    }
  }
  if (kind == CsvKind::Events && last_event_step > 0 && last_event < last_event_step)
    throw refuse(no, "the row for step " + std::to_string(last_event_step) + " (the snapshot's last evaluation) is missing");
  return out;
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream o(tmp, std::ios::trunc | std::ios::binary);
    o << text;
    o.flush();
    if (!o) throw RuntimeError("cannot write '" + tmp + "': " + std::strerror(errno));
  }
  std::filesystem::rename(tmp, path);
}

void CsvWriter::open(const std::string& path, const std::vector<std::string>& header) {
  f_ = std::fopen(path.c_str(), "w");
  if (!f_) throw RuntimeError("cannot write '" + path + "': " + std::strerror(errno));
  path_ = path;
  columns_ = header.size();
  for (const std::string& h : header) add(h);
  end_row();
}

CsvWriter& CsvWriter::add(double v) { return add(format_roundtrip(v)); }
CsvWriter& CsvWriter::add(int64_t v) { return add(std::to_string(v)); }
CsvWriter& CsvWriter::add(const std::string& v) {
  if (filled_++) row_ += ',';
  row_ += v;
  return *this;
}

void CsvWriter::end_row() {
  if (!f_) {  // never opened (ranks other than 0): rows are dropped
    row_.clear();
    filled_ = 0;
    return;
  }
  last_ = row_;
  HYPERRNN_CHECK(filled_ == columns_, path_ + ": row has " + std::to_string(filled_) + " columns, header " +
                                          std::to_string(columns_));
  row_ += '\n';
  if (std::fwrite(row_.data(), 1, row_.size(), f_) != row_.size() || std::fflush(f_) != 0) {
    const std::string msg = "write to '" + path_ + "' failed: " + std::strerror(errno);
    if (!defer_) throw RuntimeError(msg);
    error_ = msg;
    std::fclose(f_);
    f_ = nullptr;
  }
  row_.clear();
  filled_ = 0;
}

}  // namespace hyperrnn
