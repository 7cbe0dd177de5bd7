// IDX reader: Debian's Fashion-MNIST files when installed, and small files written here that are
// good, gzip-compressed, truncated, of the wrong kind, or mismatched in count.
#include <catch2/catch.hpp>
#include <zlib.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "tasks/idx.hpp"

using namespace hyperrnn;
namespace fs = std::filesystem;

namespace {
std::vector<uint8_t> be32(uint32_t v) {
  return {static_cast<uint8_t>(v >> 24), static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)};
}
std::vector<uint8_t> images_file(uint32_t n, uint32_t r, uint32_t c, size_t payload) {
  std::vector<uint8_t> b;
  for (uint32_t w : {0x00000803u, n, r, c}) for (uint8_t x : be32(w)) b.push_back(x);
  for (size_t i = 0; i < payload; ++i) b.push_back(static_cast<uint8_t>(i * 7));
  return b;
}
std::vector<uint8_t> labels_file(uint32_t n, size_t payload, uint8_t value = 3) {
  std::vector<uint8_t> b;
  for (uint32_t w : {0x00000801u, n}) for (uint8_t x : be32(w)) b.push_back(x);
  for (size_t i = 0; i < payload; ++i) b.push_back(value);
  return b;
}
fs::path scratch(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("hyperrnn-idx-test-" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d / name;
}
void write_plain(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
void write_gz(const fs::path& p, const std::vector<uint8_t>& b) {
  gzFile f = gzopen(p.c_str(), "wb");
  gzwrite(f, b.data(), static_cast<unsigned>(b.size()));
  gzclose(f);
}
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("IDX: good files, plain and gzip", "[idx]") {
  write_plain(scratch("a-images"), images_file(3, 2, 4, 24));
  write_gz(scratch("b-images.gz"), images_file(3, 2, 4, 24));
  for (const char* name : {"a-images", "b-images.gz"}) {
    const IdxImages im = read_idx_images(scratch(name).string());
    CHECK(im.count == 3);
    CHECK(im.rows == 2);
    CHECK(im.cols == 4);
    REQUIRE(im.pixels.size() == 24);
    CHECK(im.pixels[5] == 35);
  }
  write_gz(scratch("l.gz"), labels_file(3, 3));
  CHECK(read_idx_labels(scratch("l.gz").string()).labels == std::vector<uint8_t>{3, 3, 3});
}

TEST_CASE("IDX: corrupt files are rejected with the file named", "[idx]") {
  write_gz(scratch("trunc.gz"), images_file(3, 2, 4, 20));
  std::string m = error_of([] { read_idx_images(scratch("trunc.gz").string()); });
  CHECK(m.find("trunc.gz") != std::string::npos);
  CHECK(m.find("truncated") != std::string::npos);
  write_plain(scratch("short"), {0, 0, 8});
  m = error_of([] { read_idx_images(scratch("short").string()); });
  CHECK(m.find("truncated") != std::string::npos);
  write_gz(scratch("labels-as-images.gz"), labels_file(3, 3));
  m = error_of([] { read_idx_images(scratch("labels-as-images.gz").string()); });
  CHECK(m.find("not an IDX image file") != std::string::npos);
  m = error_of([] { read_idx_images(scratch("does-not-exist.gz").string()); });
  CHECK(m.find("does-not-exist.gz") != std::string::npos);
  CHECK(m.find("dataset-fashion-mnist") != std::string::npos);  // how to install
}

TEST_CASE("Fashion-MNIST split: count mismatch and bad labels", "[idx]") {
  const fs::path d = scratch("fm");
  fs::create_directories(d);
  write_gz(d / "train-images-idx3-ubyte.gz", images_file(4, 28, 28, 4 * 784));
  write_gz(d / "train-labels-idx1-ubyte.gz", labels_file(3, 3));
  std::string m = error_of([&] { load_fashion_mnist(d.string(), "train"); });
  CHECK(m.find("4 images but 3 labels") != std::string::npos);
  write_gz(d / "train-labels-idx1-ubyte.gz", labels_file(4, 4, 12));
  m = error_of([&] { load_fashion_mnist(d.string(), "train"); });
  CHECK(m.find("not a class 0..9") != std::string::npos);
  write_gz(d / "train-labels-idx1-ubyte.gz", labels_file(4, 4, 9));
  CHECK(load_fashion_mnist(d.string(), "train").images.count == 4);
  fs::remove_all(d.parent_path());
}

TEST_CASE("Debian's Fashion-MNIST files load", "[idx]") {
  // cluster/setup.sh installs dataset-fashion-mnist, so its absence is a set-up failure.
  INFO("Debian's dataset-fashion-mnist is not installed (run cluster/setup.sh)");
  REQUIRE(fs::exists(std::string(kFashionMnistDir) + "/t10k-images-idx3-ubyte.gz"));
  const LabelledImages t = load_fashion_mnist(kFashionMnistDir, "test");
  CHECK(t.images.count == 10000);
  CHECK(t.images.rows == 28);
  CHECK(t.images.cols == 28);
  std::vector<int> per_class(10, 0);
  for (uint8_t l : t.labels.labels) ++per_class[l];
  for (int c : per_class) CHECK(c == 1000);  // the test split is balanced
}
