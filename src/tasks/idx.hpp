// IDX files (the MNIST family's format), plain or gzip-compressed, and the Fashion-MNIST split
// loader on top of them. Every failure names the file and what is wrong with it; a missing file
// also says how to install Debian's dataset-fashion-mnist package.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hyperrnn {

struct IdxImages {
  int count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> pixels;  // (count, rows, cols)
};

struct IdxLabels {
  int count = 0;
  std::vector<uint8_t> labels;  // (count)
};

// Throw UsageError (exit 2): the data are input the user chose.
IdxImages read_idx_images(const std::string& path);
IdxLabels read_idx_labels(const std::string& path);

struct LabelledImages {
  IdxImages images;
  IdxLabels labels;
};

// Debian's dataset-fashion-mnist installs the four files here.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// split "train" (60000) or "test" (10000, the t10k files); checks that images and labels agree
// in count and that every label is a class 0..9.
LabelledImages load_fashion_mnist(const std::string& dir, const std::string& split);

}  // namespace hyperrnn
