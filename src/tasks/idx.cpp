// IDX reading through zlib's gz* interface, which reads plain files transparently too.
#include "tasks/idx.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "core/error.hpp"

namespace hyperrnn {

namespace {

constexpr uint32_t kMagicImages = 0x00000803;  // unsigned bytes, 3 dimensions
constexpr uint32_t kMagicLabels = 0x00000801;  // unsigned bytes, 1 dimension

std::string install_hint() {
  return " (install Debian's package with 'apt-get install dataset-fashion-mnist', or pass "
         "--fmnist-dir with the directory holding the IDX files)";
}

// Reads a whole IDX file: header words (big-endian) and payload.
class IdxFile {
 public:
  explicit IdxFile(const std::string& path) : path_(path) {
    if (!std::filesystem::is_regular_file(path)) throw UsageError("cannot read '" + path + "': no such file" + install_hint());
    f_ = gzopen(path.c_str(), "rb");
    if (!f_) throw UsageError("cannot open '" + path + "'" + install_hint());
  }
  ~IdxFile() {
    if (f_) gzclose(f_);
  }
  IdxFile(const IdxFile&) = delete;
  IdxFile& operator=(const IdxFile&) = delete;

  uint32_t word(const char* what) {
    unsigned char b[4];
    if (gzread(f_, b, 4) != 4) throw UsageError("'" + path_ + "' is truncated: no " + what + " in its header");
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
  }
  void payload(std::vector<uint8_t>& out, size_t n, const std::string& what) {
    out.resize(n);
    size_t got = 0;
    while (got < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - got, 1u << 30));
      const int r = gzread(f_, out.data() + got, chunk);
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    if (got != n)
      throw UsageError("'" + path_ + "' is truncated: its header announces " + what + " (" + std::to_string(n) +
                       " bytes) but it holds " + std::to_string(got));
  }
  void magic(uint32_t expected, const char* kind) {
    const uint32_t m = word("magic number");
    if (m != expected) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "0x%08x, expected 0x%08x", m, expected);
      throw UsageError("'" + path_ + "' is not an IDX " + kind + " file (magic " + buf + ")");
    }
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
};

}  // namespace

IdxImages read_idx_images(const std::string& path) {
  IdxFile f(path);
  f.magic(kMagicImages, "image");
  IdxImages im;
  const uint32_t n = f.word("image count"), r = f.word("row count"), c = f.word("column count");
  if (n > (1u << 24) || r == 0 || c == 0 || r > 4096 || c > 4096)
    throw UsageError("'" + path + "' has an implausible header: " + std::to_string(n) + " images of " +
                     std::to_string(r) + "x" + std::to_string(c));
  im.count = static_cast<int>(n);
  im.rows = static_cast<int>(r);
  im.cols = static_cast<int>(c);
  f.payload(im.pixels, static_cast<size_t>(n) * r * c,
            std::to_string(n) + " images of " + std::to_string(r) + "x" + std::to_string(c));
  return im;
}

IdxLabels read_idx_labels(const std::string& path) {
  IdxFile f(path);
  f.magic(kMagicLabels, "label");
  IdxLabels lb;
  const uint32_t n = f.word("label count");
  if (n > (1u << 24)) throw UsageError("'" + path + "' has an implausible header: " + std::to_string(n) + " labels");
  lb.count = static_cast<int>(n);
  f.payload(lb.labels, n, std::to_string(n) + " labels");
  return lb;
}

LabelledImages load_fashion_mnist(const std::string& dir, const std::string& split) {
  HYPERRNN_CHECK(split == "train" || split == "test", "unknown Fashion-MNIST split " + split);
  const std::string stem = split == "train" ? "train" : "t10k";
  auto file = [&](const char* kind) {
    const std::filesystem::path base = std::filesystem::path(dir) / (stem + "-" + kind);
    const std::filesystem::path gz = base.string() + ".gz";
    return std::filesystem::exists(gz) || !std::filesystem::exists(base) ? gz.string() : base.string();
  };
  LabelledImages d{read_idx_images(file("images-idx3-ubyte")), read_idx_labels(file("labels-idx1-ubyte"))};
  if (d.images.count != d.labels.count)
    throw UsageError("Fashion-MNIST " + split + " split in '" + dir + "': " + std::to_string(d.images.count) +
                     " images but " + std::to_string(d.labels.count) + " labels");
  for (int i = 0; i < d.labels.count; ++i)
    if (d.labels.labels[static_cast<size_t>(i)] > 9)
      throw UsageError("Fashion-MNIST " + split + " labels in '" + dir + "': label " +
                       std::to_string(d.labels.labels[static_cast<size_t>(i)]) + " at index " + std::to_string(i) +
                       " is not a class 0..9");
  return d;
}

}  // namespace hyperrnn
