// HDF5 wrapper implementation; the only translation unit besides snapshot code that sees hdf5.h.
#include "io/h5.hpp"

#include <hdf5.h>

#include "core/error.hpp"

namespace hyperrnn {

namespace {

// Closes an HDF5 handle when it goes out of scope.
struct Handle {
  hid_t id;
  herr_t (*close)(hid_t);
  ~Handle() {
    if (id >= 0) close(id);
  }
};

[[noreturn]] void h5_fail(const std::string& file, const std::string& what) {
  throw RuntimeError(file + ": " + what);
}

template <class T>
hid_t mem_type();
template <>
hid_t mem_type<float>() { return H5T_NATIVE_FLOAT; }
template <>
hid_t mem_type<double>() { return H5T_NATIVE_DOUBLE; }
template <>
hid_t mem_type<int32_t>() { return H5T_NATIVE_INT32; }
template <class T>
hid_t file_type();
template <>
hid_t file_type<float>() { return H5T_IEEE_F32LE; }
template <>
hid_t file_type<double>() { return H5T_IEEE_F64LE; }
template <>
hid_t file_type<int32_t>() { return H5T_STD_I32LE; }

}  // namespace

H5File::H5File(const std::string& path, Mode mode) : path_(path) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors are reported by us, once, with context
  id_ = mode == Mode::Create ? H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT)
                             : H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id_ < 0) h5_fail(path, mode == Mode::Create ? "cannot create HDF5 file" : "cannot open as an HDF5 file");
}

H5File::~H5File() {
  if (id_ >= 0) H5Fclose(static_cast<hid_t>(id_));
}

template <class T>
void H5File::write(const std::string& name, const T* data, const std::vector<int64_t>& shape) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space{H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose};
  Handle lcpl{H5Pcreate(H5P_LINK_CREATE), H5Pclose};
  if (space.id < 0 || lcpl.id < 0 || H5Pset_create_intermediate_group(lcpl.id, 1) < 0)
    h5_fail(path_, "cannot prepare dataset /" + name);
  Handle ds{H5Dcreate2(static_cast<hid_t>(id_), name.c_str(), file_type<T>(), space.id, lcpl.id, H5P_DEFAULT, H5P_DEFAULT), H5Dclose};
  if (ds.id < 0) h5_fail(path_, "cannot create dataset /" + name);
  if (H5Dwrite(ds.id, mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    h5_fail(path_, "cannot write dataset /" + name);
}

template <class T>
void H5File::read(const std::string& name, T* data) const {
  if (!exists(name)) h5_fail(path_, "dataset /" + name + " is missing");
  Handle ds{H5Dopen2(static_cast<hid_t>(id_), name.c_str(), H5P_DEFAULT), H5Dclose};
  if (ds.id < 0 || H5Dread(ds.id, mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    h5_fail(path_, "cannot read dataset /" + name);
}

bool H5File::exists(const std::string& name) const {
  // Check each path component, as H5Lexists requires.
  size_t pos = 0;
  while (true) {
    const size_t next = name.find('/', pos);
    const std::string prefix = name.substr(0, next);
    if (H5Lexists(static_cast<hid_t>(id_), prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (next == std::string::npos) return true;
    pos = next + 1;
  }
}

std::vector<int64_t> H5File::shape(const std::string& name) const {
  if (!exists(name)) h5_fail(path_, "dataset /" + name + " is missing");
  Handle ds{H5Dopen2(static_cast<hid_t>(id_), name.c_str(), H5P_DEFAULT), H5Dclose};
  Handle space{ds.id >= 0 ? H5Dget_space(ds.id) : -1, H5Sclose};
  const int rank = space.id >= 0 ? H5Sget_simple_extent_ndims(space.id) : -1;
  if (rank < 0) h5_fail(path_, "cannot read the shape of /" + name);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.id, dims.data(), nullptr);
  return {dims.begin(), dims.end()};
}

void H5File::set_attr(const std::string& name, const std::string& value) {
  Handle type{H5Tcopy(H5T_C_S1), H5Tclose};
  H5Tset_size(type.id, value.empty() ? 1 : value.size());
  Handle space{H5Screate(H5S_SCALAR), H5Sclose};
  Handle attr{H5Acreate2(static_cast<hid_t>(id_), name.c_str(), type.id, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose};
  if (attr.id < 0 || H5Awrite(attr.id, type.id, value.empty() ? "" : value.data()) < 0)
    h5_fail(path_, "cannot write attribute " + name);
}

void H5File::set_attr(const std::string& name, int64_t value) {
  Handle space{H5Screate(H5S_SCALAR), H5Sclose};
  Handle attr{H5Acreate2(static_cast<hid_t>(id_), name.c_str(), H5T_STD_I64LE, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose};
  if (attr.id < 0 || H5Awrite(attr.id, H5T_NATIVE_INT64, &value) < 0) h5_fail(path_, "cannot write attribute " + name);
}

std::string H5File::attr_string(const std::string& name) const {
  Handle attr{H5Aopen(static_cast<hid_t>(id_), name.c_str(), H5P_DEFAULT), H5Aclose};
  if (attr.id < 0) h5_fail(path_, "attribute " + name + " is missing");
  Handle type{H5Aget_type(attr.id), H5Tclose};
  std::string s(H5Tget_size(type.id), '\0');
  if (H5Aread(attr.id, type.id, s.data()) < 0) h5_fail(path_, "cannot read attribute " + name);
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

int64_t H5File::attr_i64(const std::string& name) const {
  Handle attr{H5Aopen(static_cast<hid_t>(id_), name.c_str(), H5P_DEFAULT), H5Aclose};
  int64_t v = 0;
  if (attr.id < 0 || H5Aread(attr.id, H5T_NATIVE_INT64, &v) < 0) h5_fail(path_, "attribute " + name + " is missing");
  return v;
}

void H5File::flush() {
  if (H5Fflush(static_cast<hid_t>(id_), H5F_SCOPE_GLOBAL) < 0) h5_fail(path_, "flush failed");
}

template void H5File::write<float>(const std::string&, const float*, const std::vector<int64_t>&);
template void H5File::write<double>(const std::string&, const double*, const std::vector<int64_t>&);
template void H5File::write<int32_t>(const std::string&, const int32_t*, const std::vector<int64_t>&);
template void H5File::read<float>(const std::string&, float*) const;
template void H5File::read<double>(const std::string&, double*) const;
template void H5File::read<int32_t>(const std::string&, int32_t*) const;

}  // namespace hyperrnn
