// Parameter snapshots in HDF5: RUN/snapshots/step_XXXXXXXX/manifest.h5 holding every tensor of the
// parameter table under /params/<name>, the run configuration and the step; RUN/snapshots/latest
// names the newest. This first version is single-file and parameters only (enough for `eval`);
// sharding, optimizer state, checksums and resume are the snapshot issue's.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "core/param_table.hpp"

namespace hyperrnn {

struct SnapshotInfo {
  std::string manifest;    // path of manifest.h5
  int64_t step = 0;
  std::string config_ini;  // the run's effective configuration
};

class H5File;

// Writes a snapshot under a temporary name and renames it into place, then replaces `latest`.
// `extra` (optional) writes further state into the manifest before it is closed. Returns the
// snapshot directory.
std::string write_snapshot(const std::string& run_dir, int64_t step, const ParamTable& table,
                           const float* params, const std::string& config_ini,
                           const std::function<void(H5File&)>& extra = {});

// PATH may be a manifest.h5, a snapshot directory, or a run directory (then snapshots/latest).
SnapshotInfo open_snapshot(const std::string& path);

// Reads every tensor of the table; throws when one is missing or has another shape.
void read_snapshot_params(const SnapshotInfo& snap, const ParamTable& table, float* params);

}  // namespace hyperrnn
