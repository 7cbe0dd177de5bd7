// HDF5 wrapper implementation; the only translation unit besides snapshot code that sees hdf5.h.
#include "io/h5.hpp"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "core/error.hpp"
#include "core/sha256.hpp"

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
template <>
hid_t mem_type<int64_t>() { return H5T_NATIVE_INT64; }
template <class T>
hid_t file_type();
template <>
hid_t file_type<float>() { return H5T_IEEE_F32LE; }
template <>
hid_t file_type<double>() { return H5T_IEEE_F64LE; }
template <>
hid_t file_type<int32_t>() { return H5T_STD_I32LE; }
template <>
hid_t file_type<int64_t>() { return H5T_STD_I64LE; }

void write_string_attr(hid_t obj, const std::string& file, const std::string& name, const std::string& value) {
  Handle type{H5Tcopy(H5T_C_S1), H5Tclose};
  H5Tset_size(type.id, value.empty() ? 1 : value.size());
  Handle space{H5Screate(H5S_SCALAR), H5Sclose};
  Handle attr{H5Acreate2(obj, name.c_str(), type.id, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose};
  if (attr.id < 0 || H5Awrite(attr.id, type.id, value.empty() ? "" : value.data()) < 0)
    h5_fail(file, "cannot write attribute " + name);
}

// Returns false when the attribute is absent.
bool read_string_attr(hid_t obj, const std::string& name, std::string& out) {
  if (H5Aexists(obj, name.c_str()) <= 0) return false;
  Handle attr{H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose};
  Handle type{attr.id >= 0 ? H5Aget_type(attr.id) : -1, H5Tclose};
  if (type.id < 0) return false;
  out.assign(H5Tget_size(type.id), '\0');
  if (H5Aread(attr.id, type.id, out.data()) < 0) return false;
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return true;
}

// Reads a stored dataset in its native type and checks its sha256 attribute; "" when it holds.
std::string check_dataset(hid_t ds, const std::string& name) {
  Handle dcpl{H5Dget_create_plist(ds), H5Pclose};
  if (dcpl.id >= 0 && H5Pget_layout(dcpl.id) == H5D_VIRTUAL) return "";
  std::string want;
  if (!read_string_attr(ds, "sha256", want)) return "dataset /" + name + ": no sha256 attribute";
  Handle ftype{H5Dget_type(ds), H5Tclose};
  Handle ntype{ftype.id >= 0 ? H5Tget_native_type(ftype.id, H5T_DIR_ASCEND) : -1, H5Tclose};
  Handle space{H5Dget_space(ds), H5Sclose};
  if (ntype.id < 0 || space.id < 0) return "dataset /" + name + ": unreadable type or shape";
  const hssize_t n = H5Sget_simple_extent_npoints(space.id);
  std::vector<unsigned char> buf(static_cast<size_t>(n) * H5Tget_size(ntype.id));
  if (n > 0 && H5Dread(ds, ntype.id, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()) < 0)
    return "dataset /" + name + ": cannot be read (HDF5 error, e.g. a Fletcher32 checksum failure)";
  const std::string got = sha256_hex(buf.data(), buf.size());
  if (got != want) return "dataset /" + name + ": sha256 " + got + " does not match the stored " + want;
  return "";
}

}  // namespace

// A created file is built in memory (HDF5's core driver, no backing store) and written to its path
// by close() with plain POSIX writes: a full disk, a quota or an I/O error then fails in our own
// write(2), reported with the system's reason, and never inside HDF5, whose library shutdown
// crashed (in MPI_Finalize) after a failed flush had left a file half-closed. Cost: the file's
// size in memory while it is being written (one snapshot shard, or the manifest).
H5File::H5File(const std::string& path, Mode mode) : path_(path), create_(mode == Mode::Create) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors are reported by us, once, with context
  if (create_) {
    // reserve the name now (the same "must not exist" rule as H5F_ACC_EXCL)
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) h5_fail(path, std::string("cannot create HDF5 file: ") + std::strerror(errno));
    ::close(fd);
    Handle fapl{H5Pcreate(H5P_FILE_ACCESS), H5Pclose};
    if (fapl.id < 0 || H5Pset_fapl_core(fapl.id, 1 << 20, 0) < 0) h5_fail(path, "cannot set up the in-memory HDF5 driver");
    id_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id);
  } else {
    id_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  }
  if (id_ < 0) h5_fail(path, create_ ? "cannot create HDF5 file" : "cannot open as an HDF5 file");
}

H5File::~H5File() {
  if (id_ < 0) return;
  try {
    close();  // a created file is written now; a failure here has no one to tell (call close() to hear it)
  } catch (const std::exception&) {
  }
}

template <class T>
void H5File::write(const std::string& name, const T* data, const std::vector<int64_t>& shape) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space{H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose};
  Handle lcpl{H5Pcreate(H5P_LINK_CREATE), H5Pclose};
  if (space.id < 0 || lcpl.id < 0 || H5Pset_create_intermediate_group(lcpl.id, 1) < 0)
    h5_fail(path_, "cannot prepare dataset /" + name);
  // one chunk per dataset (at most ~1 GiB of elements per chunk dimension product), Fletcher32
  Handle dcpl{H5Pcreate(H5P_DATASET_CREATE), H5Pclose};
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (n > 0 && !dims.empty()) {
    std::vector<hsize_t> chunk = dims;
    for (size_t i = 0; i < chunk.size(); ++i) {
      hsize_t rest = 1;
      for (size_t j = i + 1; j < chunk.size(); ++j) rest *= chunk[j];
      const hsize_t limit = std::max<hsize_t>(1, (hsize_t{1} << 28) / (rest * sizeof(T)));
      if (chunk[i] > limit) chunk[i] = limit;
    }
    if (H5Pset_chunk(dcpl.id, static_cast<int>(chunk.size()), chunk.data()) < 0 || H5Pset_fletcher32(dcpl.id) < 0)
      h5_fail(path_, "cannot set the chunked Fletcher32 layout of /" + name);
  }
  Handle ds{H5Dcreate2(static_cast<hid_t>(id_), name.c_str(), file_type<T>(), space.id, lcpl.id, dcpl.id, H5P_DEFAULT), H5Dclose};
  if (ds.id < 0) h5_fail(path_, "cannot create dataset /" + name);
  if (n > 0 && H5Dwrite(ds.id, mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    h5_fail(path_, "cannot write dataset /" + name);
  write_string_attr(ds.id, path_, "sha256", sha256_hex(data, static_cast<size_t>(n) * sizeof(T)));
}

template <class T>
void H5File::write_virtual(const std::string& name, const std::vector<int64_t>& shape, const std::vector<VirtualSource>& sources) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle vspace{H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose};
  Handle dcpl{H5Pcreate(H5P_DATASET_CREATE), H5Pclose};
  Handle lcpl{H5Pcreate(H5P_LINK_CREATE), H5Pclose};
  if (vspace.id < 0 || dcpl.id < 0 || lcpl.id < 0 || H5Pset_create_intermediate_group(lcpl.id, 1) < 0)
    h5_fail(path_, "cannot prepare virtual dataset /" + name);
  for (const VirtualSource& src : sources) {
    std::vector<hsize_t> sdims(src.shape.begin(), src.shape.end()), start(src.start.begin(), src.start.end()),
        count(src.shape.begin(), src.shape.end());
    // the source's shape may have fewer dimensions than the virtual one: pad with leading 1s
    while (count.size() < dims.size()) count.insert(count.begin(), 1);
    Handle sspace{H5Screate_simple(static_cast<int>(sdims.size()), sdims.data(), nullptr), H5Sclose};
    Handle region{H5Scopy(vspace.id), H5Sclose};
    if (sspace.id < 0 || region.id < 0 ||
        H5Sselect_hyperslab(region.id, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr) < 0 ||
        H5Pset_virtual(dcpl.id, region.id, src.file.c_str(), src.dataset.c_str(), sspace.id) < 0)
      h5_fail(path_, "cannot map " + src.file + ":/" + src.dataset + " into virtual dataset /" + name);
  }
  Handle ds{H5Dcreate2(static_cast<hid_t>(id_), name.c_str(), file_type<T>(), vspace.id, lcpl.id, dcpl.id, H5P_DEFAULT), H5Dclose};
  if (ds.id < 0) h5_fail(path_, "cannot create virtual dataset /" + name);
}

std::string H5File::verify_datasets(int& checked) const {
  struct Ctx {
    std::string failure;
    int checked = 0;
  } ctx;
  auto visit = [](hid_t loc, const char* name, const H5O_info_t* info, void* op) -> herr_t {
    Ctx& c = *static_cast<Ctx*>(op);
    if (info->type != H5O_TYPE_DATASET) return 0;
    Handle ds{H5Dopen2(loc, name, H5P_DEFAULT), H5Dclose};
    if (ds.id < 0) {
      c.failure = std::string("dataset /") + name + ": cannot be opened";
      return 1;
    }
    c.failure = check_dataset(ds.id, name);
    ++c.checked;
    return c.failure.empty() ? 0 : 1;
  };
  if (H5Ovisit(static_cast<hid_t>(id_), H5_INDEX_NAME, H5_ITER_NATIVE, visit, &ctx) < 0 && ctx.failure.empty())
    ctx.failure = "the file's object structure cannot be read";
  checked = ctx.checked;
  return ctx.failure;
}

template <class T>
void H5File::read(const std::string& name, T* data) const {
  if (!exists(name)) h5_fail(path_, "dataset /" + name + " is missing");
  Handle ds{H5Dopen2(static_cast<hid_t>(id_), name.c_str(), H5P_DEFAULT), H5Dclose};
  if (ds.id < 0) h5_fail(path_, "cannot open dataset /" + name);
  const std::string bad = check_dataset(ds.id, name);  // the stored bytes against their sha256
  if (!bad.empty()) h5_fail(path_, bad);
  Handle space{H5Dget_space(ds.id), H5Sclose};
  if (H5Sget_simple_extent_npoints(space.id) > 0 && H5Dread(ds.id, mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
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
  write_string_attr(static_cast<hid_t>(id_), path_, name, value);
}

void H5File::set_attr(const std::string& name, int64_t value) {
  Handle space{H5Screate(H5S_SCALAR), H5Sclose};
  Handle attr{H5Acreate2(static_cast<hid_t>(id_), name.c_str(), H5T_STD_I64LE, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose};
  if (attr.id < 0 || H5Awrite(attr.id, H5T_NATIVE_INT64, &value) < 0) h5_fail(path_, "cannot write attribute " + name);
}

std::string H5File::attr_string(const std::string& name) const {
  std::string s;
  if (!read_string_attr(static_cast<hid_t>(id_), name, s)) h5_fail(path_, "attribute " + name + " is missing or unreadable");
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

void H5File::close() {
  if (id_ < 0) return;
  const hid_t id = static_cast<hid_t>(id_);
  id_ = -1;  // closed once, whatever happens below
  if (!create_) {
    if (H5Fclose(id) < 0) h5_fail(path_, "close failed");
    return;
  }
  // the in-memory image, then our own writes
  std::vector<unsigned char> image;
  bool ok = H5Fflush(id, H5F_SCOPE_GLOBAL) >= 0;
  const ssize_t n = ok ? H5Fget_file_image(id, nullptr, 0) : -1;
  if (n > 0) {
    image.resize(static_cast<size_t>(n));
    ok = H5Fget_file_image(id, image.data(), image.size()) == n;
  } else {
    ok = false;
  }
  ok = H5Fclose(id) >= 0 && ok;
  if (!ok) h5_fail(path_, "cannot build the HDF5 file image");
  const int fd = ::open(path_.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) h5_fail(path_, std::string("cannot write: ") + std::strerror(errno));
  size_t at = 0;
  while (at < image.size()) {
    const ssize_t w = ::write(fd, image.data() + at, image.size() - at);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = w < 0 ? errno : ENOSPC;
      ::close(fd);
      h5_fail(path_, std::string("cannot write: ") + std::strerror(err));
    }
    at += static_cast<size_t>(w);
  }
  if (::close(fd) != 0) h5_fail(path_, std::string("cannot write: ") + std::strerror(errno));
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw RuntimeError(path + ": cannot open to sync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw RuntimeError(path + ": fsync failed: " + std::strerror(errno));
}

template void H5File::write<float>(const std::string&, const float*, const std::vector<int64_t>&);
template void H5File::write<double>(const std::string&, const double*, const std::vector<int64_t>&);
template void H5File::write<int32_t>(const std::string&, const int32_t*, const std::vector<int64_t>&);
template void H5File::write<int64_t>(const std::string&, const int64_t*, const std::vector<int64_t>&);
template void H5File::read<int64_t>(const std::string&, int64_t*) const;
template void H5File::write_virtual<float>(const std::string&, const std::vector<int64_t>&, const std::vector<VirtualSource>&);
template void H5File::read<float>(const std::string&, float*) const;
template void H5File::read<double>(const std::string&, double*) const;
template void H5File::read<int32_t>(const std::string&, int32_t*) const;

}  // namespace hyperrnn
