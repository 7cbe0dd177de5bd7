// Sharded snapshot writing, opening, verification and retention.
#include "io/snapshot.hpp"

#include <algorithm>
#include <functional>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "parallel/layout.hpp"
#include "core/sha256.hpp"
#include "core/version.hpp"
#include "io/h5.hpp"
#include "mpi/comm.hpp"

namespace fs = std::filesystem;

namespace hyperrnn {

namespace {
constexpr const char* kFormat = "hyperrnn-snapshot-v1";

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

int size_of(Comm* c) { return c ? c->size() : 1; }

// Fault injection for the crash test (tests/mpi): HYPERRNN_FAULT=kill-in-snapshot:STEP:RANK makes
// that rank die by SIGKILL halfway through writing its shard of that step's snapshot.
bool fault_here(int64_t step, int rank) {
  const char* f = std::getenv("HYPERRNN_FAULT");
  if (!f) return false;
  long long s = -1;
  int r = -1;
  return std::sscanf(f, "kill-in-snapshot:%lld:%d", &s, &r) == 2 && s == step && r == rank;
}

// The root attributes that identify a snapshot, hashed together so that a damaged attribute is
// detected like a damaged dataset.
std::string attrs_digest(const std::string& format, int64_t step, const std::string& config, const std::string& run_id,
                         const std::string& version, int64_t files, const std::string& hashes) {
  std::ostringstream o;
  o << format << '\n' << step << '\n' << config << '\n' << run_id << '\n' << version << '\n' << files << '\n' << hashes;
  const std::string s = o.str();
  return sha256_hex(s.data(), s.size());
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string l;
  while (std::getline(in, l))
    if (!l.empty()) out.push_back(l);
  return out;
}
}  // namespace

std::string run_id_of(const std::string& config_ini) { return sha256_hex(config_ini.data(), config_ini.size()); }

std::string shard_file_name(int r, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05d-of-%05d.h5", r, n);
  return buf;
}

std::string SnapshotInfo::shard_path(int r) const { return (fs::path(dir) / shard_file_name(r, files)).string(); }

std::string write_snapshot(Comm* comm, const SnapshotWrite& w) {
  const fs::path root = fs::path(w.run_dir) / "snapshots";
  const std::string name = step_name(w.step);
  const fs::path final_dir = root / name, tmp_dir = root / (name + ".tmp");
  const int P = size_of(comm), rank = comm ? comm->rank() : 0;
  const std::string run_id = run_id_of(w.config_ini);
  // A failure anywhere (a full disk, a quota, an I/O error) is agreed on by all ranks at each
  // phase's end and thrown on every rank as the same AgreedError: no rank waits alone, nothing
  // half-written becomes `latest`.
  auto agree = [&](const std::string& mine) {
    int who = -1;
    const std::string msg = comm ? first_failure(*comm, mine, &who) : mine;
    if (!msg.empty()) throw AgreedError(P > 1 && who > 0 ? msg + " (on rank " + std::to_string(who) + ")" : msg);
  };
  auto attempt = [](const std::function<void()>& fn) -> std::string {
    try {
      fn();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  };
  agree(rank != 0 ? "" : attempt([&] {
    if (fs::exists(tmp_dir)) fs::remove_all(tmp_dir);  // debris of a write that crashed: never complete
    fs::create_directories(tmp_dir);
  }));
  // 1. every rank its shard
  const fs::path shard_path = tmp_dir / shard_file_name(rank, P);
  std::string mine;
  const std::string wrote = attempt([&] {
    H5File f(shard_path.string(), H5File::Mode::Create);
    f.set_attr("format", std::string(kFormat));
    f.set_attr("step", w.step);
    f.set_attr("run_id", run_id);
    f.set_attr("shard", static_cast<int64_t>(rank));
    f.set_attr("shards", static_cast<int64_t>(P));
    if (fault_here(w.step, rank)) {
      f.flush();
      std::raise(SIGKILL);
    }
    if (w.shard) w.shard(f);
    f.close();
    fsync_path(shard_path.string());
    mine = sha256_file(shard_path.string());
  });
  agree(wrote);
  std::string hashes(static_cast<size_t>(64 * P), ' ');
  if (comm) comm->allgather_bytes(mine.data(), 64, hashes.data());
  else hashes = mine;
  // 2. rank 0: the manifest, then the renames
  agree(rank != 0 ? "" : attempt([&] {
    std::string joined;
    for (int r = 0; r < P; ++r) joined += hashes.substr(static_cast<size_t>(64 * r), 64) + "\n";
    const std::string version = code_version();
    {
      H5File f((tmp_dir / "manifest.h5").string(), H5File::Mode::Create);
      f.set_attr("format", std::string(kFormat));
      f.set_attr("step", w.step);
      f.set_attr("config", w.config_ini);
      f.set_attr("run_id", run_id);
      f.set_attr("code_version", version);
      f.set_attr("shard_files", static_cast<int64_t>(P));
      f.set_attr("shard_sha256", joined);
      f.set_attr("attrs_sha256", attrs_digest(kFormat, w.step, w.config_ini, run_id, version, P, joined));
      if (w.manifest) w.manifest(f);
      for (const std::string& g : w.groups)
        for (const ShardedTensor& t : w.sharded) {
          const std::string src = g + "/" + t.name, file = shard_file_name(t.shard, P);
          f.write_virtual<float>(src, t.shape, {{file, src, std::vector<int64_t>(t.shape.size(), 0), t.shape}});
        }
      // stacked views: /experts/<group>/<family> (count, shape...)
      std::vector<std::string> families;
      for (const ShardedTensor& t : w.sharded)
        if (std::find(families.begin(), families.end(), t.family) == families.end()) families.push_back(t.family);
      for (const std::string& g : w.groups)
        for (const std::string& fam : families) {
          std::vector<H5File::VirtualSource> srcs;
          std::vector<int64_t> shape;
          for (const ShardedTensor& t : w.sharded) {
            if (t.family != fam) continue;
            shape = t.shape;
            shape.insert(shape.begin(), t.family_count);
            std::vector<int64_t> start(shape.size(), 0);
            start[0] = t.index;
            srcs.push_back({shard_file_name(t.shard, P), g + "/" + t.name, start, t.shape});
          }
          f.write_virtual<float>("experts/" + g + "/" + fam, shape, srcs);
        }
      f.close();
    }
    fsync_path((tmp_dir / "manifest.h5").string());
    fsync_path(tmp_dir.string());
    if (fs::exists(final_dir)) {  // an older write of this step that did not verify: keep it aside
      fs::path aside = root / (name + ".superseded");
      for (int i = 1; fs::exists(aside); ++i) aside = root / (name + ".superseded-" + std::to_string(i));
      fs::rename(final_dir, aside);
    }
    fs::rename(tmp_dir, final_dir);
    fsync_path(root.string());
    {
      std::ofstream l(root / "latest.tmp", std::ios::trunc);
      l << name << "\n";
      l.flush();
      if (!l) throw RuntimeError("cannot write " + (root / "latest.tmp").string());
    }
    fsync_path((root / "latest.tmp").string());
    fs::rename(root / "latest.tmp", root / "latest");
    fsync_path(root.string());
    // retention: only after the new snapshot is complete, the oldest complete ones beyond --keep
    if (w.keep > 0) {
      const std::vector<std::string> all = list_snapshots(w.run_dir);
      for (size_t i = static_cast<size_t>(w.keep); i < all.size(); ++i) fs::remove_all(all[i]);
    }
  }));
  return final_dir.string();
}

std::vector<std::string> list_snapshots(const std::string& run_dir) {
  std::vector<std::pair<std::string, std::string>> found;
  const fs::path root = fs::path(run_dir) / "snapshots";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return {};
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.size() == 13 && n.rfind("step_", 0) == 0 &&
        std::all_of(n.begin() + 5, n.end(), [](char c) { return c >= '0' && c <= '9'; }))
      found.emplace_back(n, e.path().string());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> out;
  for (const auto& f : found) out.push_back(f.second);
  return out;
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
    throw UsageError("no snapshot at '" + path + "' (expected a run directory, a snapshot directory or a manifest.h5; " +
                     p.string() + " does not exist)");
  SnapshotInfo s;
  s.manifest = p.string();
  s.dir = p.parent_path().string();
  try {
    H5File f(s.manifest, H5File::Mode::Read);
    const std::string format = f.attr_string("format");
    if (format != kFormat)
      throw UsageError(s.manifest + ": format '" + format + "' is not " + kFormat + " (a snapshot of an older hyperrnn)");
    s.step = f.attr_i64("step");
    s.config_ini = f.attr_string("config");
    s.run_id = f.attr_string("run_id");
    s.code_version = f.attr_string("code_version");
    s.files = static_cast<int>(f.attr_i64("shard_files"));
    s.shard_sha256 = split_lines(f.attr_string("shard_sha256"));
  } catch (const RuntimeError& e) {
    throw UsageError(std::string("not a readable snapshot: ") + e.what());
  }
  return s;
}

namespace {
// Everything about one file, "" when it holds.
std::string verify_shard(const SnapshotInfo& s, int r) {
  const std::string path = s.shard_path(r);
  if (!fs::is_regular_file(path)) return path + ": shard file is missing";
  if (r >= static_cast<int>(s.shard_sha256.size())) return s.manifest + ": no hash recorded for shard " + std::to_string(r);
  try {
    H5File f(path, H5File::Mode::Read);
    if (f.attr_string("run_id") != s.run_id || f.attr_i64("step") != s.step || f.attr_i64("shard") != r ||
        f.attr_i64("shards") != s.files)
      return path + ": belongs to another snapshot or run (its step, run or shard attributes differ from the manifest's)";
    int checked = 0;
    const std::string bad = f.verify_datasets(checked);
    if (!bad.empty()) return path + ": " + bad;
  } catch (const RuntimeError& e) {
    return std::string(e.what()) + " (truncated or not an HDF5 file)";
  }
  const std::string got = sha256_file(path);
  if (got != s.shard_sha256[static_cast<size_t>(r)])
    return path + ": file sha256 " + got + " does not match the manifest's " + s.shard_sha256[static_cast<size_t>(r)];
  return "";
}

std::string verify_manifest(const SnapshotInfo& s) {
  try {
    H5File f(s.manifest, H5File::Mode::Read);
    std::string joined;
    for (const std::string& h : s.shard_sha256) joined += h + "\n";
    if (f.attr_string("attrs_sha256") != attrs_digest(kFormat, s.step, s.config_ini, s.run_id, s.code_version, s.files, joined))
      return s.manifest + ": root attributes do not match their recorded sha256 (damaged manifest)";
    if (s.run_id != run_id_of(s.config_ini)) return s.manifest + ": run_id does not match the recorded configuration";
    if (static_cast<int>(s.shard_sha256.size()) != s.files) return s.manifest + ": shard hash count differs from shard_files";
    int checked = 0;
    const std::string bad = f.verify_datasets(checked);
    if (!bad.empty()) return s.manifest + ": " + bad;
  } catch (const RuntimeError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

std::string verify_snapshot(const SnapshotInfo& s, Comm* comm) {
  const int P = size_of(comm), rank = comm ? comm->rank() : 0;
  std::string failure = rank == 0 ? verify_manifest(s) : "";
  for (int r = rank; r < s.files && failure.empty(); r += P) failure = verify_shard(s, r);
  return comm ? first_failure(*comm, failure) : failure;
}

}  // namespace hyperrnn
