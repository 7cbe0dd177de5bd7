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

bool continue_csv(const std::string& src, const std::string& dst, const std::vector<std::string>& header, int64_t step) {
  std::ifstream in(src);
  if (!in) return false;
  std::string want;
  for (size_t i = 0; i < header.size(); ++i) want += (i ? "," : "") + header[i];
  std::string line;
  if (!std::getline(in, line) || line != want) return false;
  std::ostringstream kept;
  kept << line << '\n';
  while (std::getline(in, line)) {
    const long long s = std::strtoll(line.c_str(), nullptr, 10);
    if (s <= step && !line.empty()) kept << line << '\n';
  }
  in.close();
  const std::string tmp = dst + ".tmp";
  {
    std::ofstream o(tmp, std::ios::trunc);
    o << kept.str();
    o.flush();
    if (!o) throw RuntimeError("cannot write '" + tmp + "'");
  }
  std::filesystem::rename(tmp, dst);
  return true;
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
  if (std::fwrite(row_.data(), 1, row_.size(), f_) != row_.size() || std::fflush(f_) != 0)
    throw RuntimeError("write to '" + path_ + "' failed: " + std::strerror(errno));
  row_.clear();
  filled_ = 0;
}

}  // namespace hyperrnn
