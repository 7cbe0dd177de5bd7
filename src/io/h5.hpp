// A small RAII wrapper over the HDF5 C API: create/open a file, write and read n-d arrays of
// float, double, int32 and int64 by path (intermediate groups created), scalar attributes on the
// root, and virtual datasets over other files. Every written dataset is chunked with the Fletcher32
// filter (HDF5 checks it on every read) and carries a "sha256" attribute of its data, which read()
// and verify_datasets() check. Every call is checked; failures name the file and the dataset.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hyperrnn {

class H5File {
 public:
  enum class Mode { Create, Read };
  H5File(const std::string& path, Mode mode);
  ~H5File();
  H5File(const H5File&) = delete;
  H5File& operator=(const H5File&) = delete;

  template <class T>
  void write(const std::string& name, const T* data, const std::vector<int64_t>& shape);
  template <class T>
  void read(const std::string& name, T* data) const;  // converts to T; checks the stored sha256
  // One source of a virtual dataset: dataset `dataset` of file `file` (a name relative to the
  // virtual dataset's own file, which HDF5 resolves next to it), placed with its first element at
  // `start` of the virtual dataset (its shape is `shape`, of the same rank as the virtual one).
  struct VirtualSource {
    std::string file, dataset;
    std::vector<int64_t> start, shape;
  };
  // A virtual dataset of element type T presenting the sources as one array.
  template <class T>
  void write_virtual(const std::string& name, const std::vector<int64_t>& shape, const std::vector<VirtualSource>& sources);
  // Reads every stored (non-virtual) dataset and checks it against its sha256 attribute; returns
  // the first failure as "dataset /name: reason" (empty when all hold), after `checked` datasets.
  std::string verify_datasets(int& checked) const;
  bool exists(const std::string& name) const;
  std::vector<int64_t> shape(const std::string& name) const;

  void set_attr(const std::string& name, const std::string& value);
  void set_attr(const std::string& name, int64_t value);
  std::string attr_string(const std::string& name) const;
  int64_t attr_i64(const std::string& name) const;
  void flush();
  // Read: closes. Create: writes the file (built in memory) to its path and closes; throws naming
  // the file and the system's reason. The destructor does the same, silently.
  void close();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool create_ = false;
  int64_t id_ = -1;  // hid_t
};

// Forces a file's (or a directory's) data to stable storage: fsync(2); throws naming the path.
void fsync_path(const std::string& path);

}  // namespace hyperrnn
