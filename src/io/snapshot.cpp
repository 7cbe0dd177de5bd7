// Snapshot writing and reading over the H5File wrapper.
#include "io/snapshot.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "io/h5.hpp"

namespace fs = std::filesystem;

namespace hyperrnn {

namespace {
std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}
}  // namespace

std::string write_snapshot(const std::string& run_dir, int64_t step, const ParamTable& table,
                           const float* params, const std::string& config_ini,
                           const std::function<void(H5File&)>& extra) {
  const fs::path root = fs::path(run_dir) / "snapshots";
  const fs::path final_dir = root / step_name(step);
  const fs::path tmp_dir = root / (step_name(step) + ".tmp");
  if (fs::exists(tmp_dir)) fs::remove_all(tmp_dir);  // debris of an earlier crashed write
  fs::create_directories(tmp_dir);
  {
    H5File f((tmp_dir / "manifest.h5").string(), H5File::Mode::Create);
    f.set_attr("format", std::string("hyperrnn-snapshot-v0"));
    f.set_attr("step", step);
    f.set_attr("config", config_ini);
    for (const TensorInfo& t : table.entries()) f.write("params/" + t.name, params + t.offset, t.shape);
    if (extra) extra(f);
    f.flush();
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
    throw UsageError("option '--snapshot': no snapshot at '" + path +
                     "' (expected a run directory, a snapshot directory or a manifest.h5)");
  SnapshotInfo s;
  s.manifest = p.string();
  try {
    H5File f(s.manifest, H5File::Mode::Read);
    s.step = f.attr_i64("step");
    s.config_ini = f.attr_string("config");
  } catch (const RuntimeError& e) {
    throw UsageError(std::string("option '--snapshot': ") + e.what());
  }
  return s;
}

void read_snapshot_params(const SnapshotInfo& snap, const ParamTable& table, float* params) {
  H5File f(snap.manifest, H5File::Mode::Read);
  for (const TensorInfo& t : table.entries()) {
    const std::string name = "params/" + t.name;
    if (f.shape(name) != t.shape)
      throw RuntimeError(snap.manifest + ": dataset /" + name + " has a shape that does not match the model");
    f.read(name, params + t.offset);
  }
}

}  // namespace hyperrnn
