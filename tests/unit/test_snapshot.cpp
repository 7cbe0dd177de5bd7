// Snapshot writing and verification (src/io/snapshot.hpp) on one rank: a written snapshot verifies
// and becomes `latest`; a flipped byte in a shard file, a truncated, missing or foreign shard (one
// of another step) are each reported, naming the file; older complete snapshots stay, `latest`
// names the newest. (Damage inside datasets and manifests: tests/mpi/test_snapshots.py.)
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "io/h5.hpp"
#include "io/snapshot.hpp"

using namespace hyperrnn;
namespace fs = std::filesystem;

namespace {
std::string write_one(const std::string& run, int64_t step, float value) {
  SnapshotWrite w;
  w.run_dir = run;
  w.step = step;
  w.config_ini = "model = test\n";
  w.groups = {"params"};
  w.sharded = {{"experts.0.w", {3}, 0, "w", 0, 1}};
  w.manifest = [value](H5File& f) {
    const float v[2] = {value, 2.0f};
    f.write("params/dense", v, {2});
  };
  w.shard = [value](H5File& f) {
    const float v[3] = {value, value + 1, value + 2};
    f.write("params/experts.0.w", v, {3});
  };
  return write_snapshot(nullptr, w);
}

void flip_byte(const fs::path& p, std::streamoff at) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(at);
  f.write(&c, 1);
}

fs::path fresh_dir(const char* name) {
  const fs::path d = fs::temp_directory_path() / (std::string("hyperrnn-test-snapshot-") + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
}  // namespace

TEST_CASE("snapshot: written, verified, latest; older ones kept", "[snapshot]") {
  const fs::path run = fresh_dir("ok");
  const std::string a = write_one(run.string(), 5, 1.0f);
  const std::string b = write_one(run.string(), 10, 3.0f);
  const SnapshotInfo s = open_snapshot(run.string());  // a run directory: its latest
  CHECK(s.step == 10);
  CHECK(s.files == 1);
  CHECK(s.run_id == run_id_of("model = test\n"));
  CHECK(verify_snapshot(s).empty());
  CHECK(verify_snapshot(open_snapshot(a)).empty());
  CHECK(list_snapshots(run.string()) == std::vector<std::string>{b, a});
  fs::remove_all(run);
}

TEST_CASE("snapshot verification names each kind of damage", "[snapshot]") {
  struct Case {
    const char* name;
    std::function<void(const fs::path& dir)> damage;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"flipped byte in the shard", [](const fs::path& d) {
         const fs::path p = d / "shard-00000-of-00001.h5";
         flip_byte(p, static_cast<std::streamoff>(fs::file_size(p) / 2));
       },
       "shard-00000-of-00001.h5"},
      {"shard missing", [](const fs::path& d) { fs::remove(d / "shard-00000-of-00001.h5"); }, "missing"},
      {"shard from another snapshot", [](const fs::path& d) {
         fs::copy_file(d.parent_path() / "step_00000005" / "shard-00000-of-00001.h5", d / "shard-00000-of-00001.h5",
                       fs::copy_options::overwrite_existing);
       }, "shard-00000-of-00001.h5"},
      {"truncated shard", [](const fs::path& d) { fs::resize_file(d / "shard-00000-of-00001.h5", 100); },
       "shard-00000-of-00001.h5"},
  };
  for (const Case& c : cases) {
    SECTION(c.name) {
      const fs::path run = fresh_dir("damage");
      write_one(run.string(), 5, 1.0f);
      const fs::path dir = write_one(run.string(), 10, 3.0f);
      c.damage(dir);
      const std::string bad = verify_snapshot(open_snapshot(dir.string()));
      CHECK_FALSE(bad.empty());
      CHECK(bad.find(c.expect) != std::string::npos);
      fs::remove_all(run);
    }
  }
}
