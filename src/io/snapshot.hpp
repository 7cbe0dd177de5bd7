// Sharded HDF5 snapshots of the hyper-state (format hyperrnn-snapshot-v1, docs/snapshot-format.md):
//   RUN/snapshots/step_XXXXXXXX/manifest.h5                rank 0: replicated state, configuration,
//                                                          code version, per-shard hashes, virtual
//                                                          datasets over the shards' tensors
//   RUN/snapshots/step_XXXXXXXX/shard-RRRRR-of-PPPPP.h5    rank r: the tensors it owns
//   RUN/snapshots/latest                                   name of the newest complete snapshot
// Written under step_XXXXXXXX.tmp, every file fsynced, renamed after every rank finished, `latest`
// replaced atomically last; a complete snapshot is never overwritten or deleted by a later write
// (only --keep retention prunes, after a newer one is complete). Readers verify every file
// themselves: a missing shard behind a virtual dataset would read as fill values.
// Leaves out: what the state is (src/app/hyper_state.cpp fills and reads the files).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hyperrnn {

class Comm;
class H5File;

// A tensor that lives in one shard file; the manifest presents it as the virtual dataset
// /<group>/<name> for every group, and stacked with its family as /experts/<group>/<family>
// (family_count entries along a new first axis, this one at `index`).
struct ShardedTensor {
  std::string name;
  std::vector<int64_t> shape;
  int shard = 0;
  std::string family;
  int index = 0, family_count = 1;
};

struct SnapshotWrite {
  std::string run_dir;
  int64_t step = 0;
  std::string config_ini;    // the run's effective configuration (its identity)
  std::vector<std::string> groups;      // groups holding sharded tensors, e.g. params, adam/m, adam/v
  std::vector<ShardedTensor> sharded;
  std::function<void(H5File&)> manifest;  // rank 0: the replicated state
  std::function<void(H5File&)> shard;     // every rank: its shard's datasets
  int keep = 0;                           // complete snapshots to keep (0 = all)
};

// Collective over comm (null = one rank): one shard file per rank. Returns the snapshot directory. On failure it throws;
// the complete snapshots and `latest` stay as they were.
std::string write_snapshot(Comm* comm, const SnapshotWrite& w);

struct SnapshotInfo {
  std::string dir;        // the snapshot directory
  std::string manifest;   // its manifest.h5
  int64_t step = 0;
  std::string config_ini;
  std::string run_id;     // sha256 of config_ini
  std::string code_version;
  int files = 0;          // shard files
  std::vector<std::string> shard_sha256;  // (files)
  std::string shard_path(int r) const;
};

// The file name of shard r of n: shard-RRRRR-of-NNNNN.h5.
std::string shard_file_name(int r, int n);
// PATH may be a manifest.h5, a snapshot directory, or a run directory (then snapshots/latest).
// Reads the manifest's attributes only. UsageError naming PATH when it is not a snapshot.
SnapshotInfo open_snapshot(const std::string& path);
// Full verification: the manifest's attributes and datasets, then every shard file (present, whole-
// file sha256 as recorded, its own attributes naming this step and run, every dataset against its
// sha256). Returns "" or the first failure, naming the file and the dataset. With comm, rank r checks
// files r, r+P, ... and the ranks agree (collective); the result is the same on every rank.
std::string verify_snapshot(const SnapshotInfo& s, Comm* comm = nullptr);
// Complete snapshot directories of a run (step_XXXXXXXX, no suffix), newest first.
std::vector<std::string> list_snapshots(const std::string& run_dir);
// sha256 of a configuration text: the run identity stored in every snapshot file.
std::string run_id_of(const std::string& config_ini);

}  // namespace hyperrnn
