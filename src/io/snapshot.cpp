// HDF5 snapshot writing and reading (C API). Every HDF5 call that can fail goes through
// HYPERRNN_H5, which names the call, file and line.
#include "io/snapshot.hpp"

#include <hdf5.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/error.hpp"

#define HYPERRNN_H5(call)                                                                       \
  [&]() {                                                                                        \
    const auto hyperrnn_h5_rc = (call);                                                          \
    if (hyperrnn_h5_rc < 0) ::hyperrnn::fail_check(#call, "HDF5 call failed", __FILE__, __LINE__); \
    return hyperrnn_h5_rc;                                                                       \
  }()

namespace fs = std::filesystem;

namespace hyperrnn {

namespace {

// Closes an HDF5 handle when it goes out of scope.
struct H5Handle {
  hid_t id;
  herr_t (*close)(hid_t);
  ~H5Handle() {
    if (id >= 0) close(id);
  }
};

void write_string_attr(hid_t obj, const char* name, const std::string& value) {
  H5Handle type{HYPERRNN_H5(H5Tcopy(H5T_C_S1)), H5Tclose};
  HYPERRNN_H5(H5Tset_size(type.id, value.empty() ? 1 : value.size()));
  H5Handle space{HYPERRNN_H5(H5Screate(H5S_SCALAR)), H5Sclose};
  H5Handle attr{HYPERRNN_H5(H5Acreate2(obj, name, type.id, space.id, H5P_DEFAULT, H5P_DEFAULT)), H5Aclose};
  HYPERRNN_H5(H5Awrite(attr.id, type.id, value.empty() ? "" : value.data()));
}

std::string read_string_attr(hid_t obj, const char* name) {
  H5Handle attr{HYPERRNN_H5(H5Aopen(obj, name, H5P_DEFAULT)), H5Aclose};
  H5Handle type{HYPERRNN_H5(H5Aget_type(attr.id)), H5Tclose};
  const size_t n = H5Tget_size(type.id);
  std::string s(n, '\0');
  HYPERRNN_H5(H5Aread(attr.id, type.id, s.data()));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

void write_i64_attr(hid_t obj, const char* name, int64_t v) {
  H5Handle space{HYPERRNN_H5(H5Screate(H5S_SCALAR)), H5Sclose};
  H5Handle attr{HYPERRNN_H5(H5Acreate2(obj, name, H5T_STD_I64LE, space.id, H5P_DEFAULT, H5P_DEFAULT)), H5Aclose};
  HYPERRNN_H5(H5Awrite(attr.id, H5T_NATIVE_INT64, &v));
}

int64_t read_i64_attr(hid_t obj, const char* name) {
  H5Handle attr{HYPERRNN_H5(H5Aopen(obj, name, H5P_DEFAULT)), H5Aclose};
  int64_t v = 0;
  HYPERRNN_H5(H5Aread(attr.id, H5T_NATIVE_INT64, &v));
  return v;
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

}  // namespace

std::string write_snapshot(const std::string& run_dir, int64_t step, const ParamTable& table,
                           const float* params, const std::string& config_ini) {
  const fs::path root = fs::path(run_dir) / "snapshots";
  const fs::path final_dir = root / step_name(step);
  const fs::path tmp_dir = root / (step_name(step) + ".tmp");
  fs::create_directories(tmp_dir);
  {
    const std::string file = (tmp_dir / "manifest.h5").string();
    H5Handle f{HYPERRNN_H5(H5Fcreate(file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)), H5Fclose};
    write_i64_attr(f.id, "step", step);
    write_string_attr(f.id, "config", config_ini);
    write_string_attr(f.id, "format", "hyperrnn-snapshot-v0");
    H5Handle g{HYPERRNN_H5(H5Gcreate2(f.id, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)), H5Gclose};
    for (const TensorInfo& t : table.entries()) {
      std::vector<hsize_t> dims(t.shape.begin(), t.shape.end());
      H5Handle space{HYPERRNN_H5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)), H5Sclose};
      H5Handle ds{HYPERRNN_H5(H5Dcreate2(g.id, t.name.c_str(), H5T_IEEE_F32LE, space.id, H5P_DEFAULT,
                                         H5P_DEFAULT, H5P_DEFAULT)), H5Dclose};
      HYPERRNN_H5(H5Dwrite(ds.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, params + t.offset));
    }
    HYPERRNN_H5(H5Fflush(f.id, H5F_SCOPE_GLOBAL));
  }
  if (fs::exists(final_dir)) fs::remove_all(final_dir);
  fs::rename(tmp_dir, final_dir);
  {
    std::ofstream l(root / "latest.tmp");
    l << step_name(step) << "\n";
    if (!l) throw RuntimeError("cannot write " + (root / "latest.tmp").string());
  }
  fs::rename(root / "latest.tmp", root / "latest");
  return final_dir.string();
}

SnapshotInfo open_snapshot(const std::string& path) {
  fs::path p(path);
  if (fs::is_directory(p) && fs::exists(p / "snapshots" / "latest")) {
    std::ifstream l(p / "snapshots" / "latest");
    std::string name;
    l >> name;
    p = p / "snapshots" / name;
  }
  if (fs::is_directory(p)) p /= "manifest.h5";
  if (!fs::is_regular_file(p))
    throw UsageError("option '--snapshot': no snapshot at '" + path + "' (expected a run directory, a snapshot directory or a manifest.h5)");
  SnapshotInfo s;
  s.manifest = p.string();
  H5Handle f{H5Fopen(s.manifest.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose};
  if (f.id < 0) throw UsageError("option '--snapshot': '" + s.manifest + "' is not a readable HDF5 file");
  s.step = read_i64_attr(f.id, "step");
  s.config_ini = read_string_attr(f.id, "config");
  return s;
}

void read_snapshot_params(const SnapshotInfo& snap, const ParamTable& table, float* params) {
  H5Handle f{HYPERRNN_H5(H5Fopen(snap.manifest.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT)), H5Fclose};
  for (const TensorInfo& t : table.entries()) {
    const std::string name = "params/" + t.name;
    if (H5Lexists(f.id, "params", H5P_DEFAULT) <= 0 || H5Lexists(f.id, name.c_str(), H5P_DEFAULT) <= 0)
      throw RuntimeError(snap.manifest + ": dataset /" + name + " is missing");
    H5Handle ds{HYPERRNN_H5(H5Dopen2(f.id, name.c_str(), H5P_DEFAULT)), H5Dclose};
    H5Handle space{HYPERRNN_H5(H5Dget_space(ds.id)), H5Sclose};
    const int rank = H5Sget_simple_extent_ndims(space.id);
    std::vector<hsize_t> dims(static_cast<size_t>(rank > 0 ? rank : 0));
    H5Sget_simple_extent_dims(space.id, dims.data(), nullptr);
    if (dims.size() != t.shape.size() || !std::equal(dims.begin(), dims.end(), t.shape.begin(),
                                                     [](hsize_t a, int64_t b) { return a == static_cast<hsize_t>(b); }))
      throw RuntimeError(snap.manifest + ": dataset /" + name + " has a shape that does not match the model");
    HYPERRNN_H5(H5Dread(ds.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, params + t.offset));
  }
}

}  // namespace hyperrnn
