// A small RAII wrapper over the HDF5 C API: create/open a file, write and read n-d arrays of
// float, double and int32 by path (intermediate groups created), scalar attributes on the root.
// Every call is checked; failures name the file and the dataset.
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
  void read(const std::string& name, T* data) const;  // converts to T
  bool exists(const std::string& name) const;
  std::vector<int64_t> shape(const std::string& name) const;

  void set_attr(const std::string& name, const std::string& value);
  void set_attr(const std::string& name, int64_t value);
  std::string attr_string(const std::string& name) const;
  int64_t attr_i64(const std::string& name) const;
  void flush();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int64_t id_ = -1;  // hid_t
};

}  // namespace hyperrnn
