// CSV writer.
#include "io/csv.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>

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
  HYPERRNN_CHECK(filled_ == columns_, path_ + ": row has " + std::to_string(filled_) + " columns, header " +
                                          std::to_string(columns_));
  row_ += '\n';
  if (std::fwrite(row_.data(), 1, row_.size(), f_) != row_.size() || std::fflush(f_) != 0)
    throw RuntimeError("write to '" + path_ + "' failed: " + std::strerror(errno));
  row_.clear();
  filled_ = 0;
}

}  // namespace hyperrnn
