// `hyperrnn train`: run directory, the training loop on P ranks (expert parallel, every rank in
// every step), metrics and timing on rank 0, progress, held-out evaluation and the final snapshot.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>

#include "app/commands.hpp"
#include "app/hyper_state.hpp"
#include "app/progress.hpp"
#include "app/run_lock.hpp"
#include "app/signals.hpp"
#include "core/error.hpp"
#include "core/version.hpp"
#include "io/csv.hpp"
#include "io/snapshot.hpp"
#include "parallel/threads.hpp"
#include "app/session.hpp"

namespace fs = std::filesystem;

namespace hyperrnn {

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The first lines where two INI texts differ ("<none>" past the end of one); both empty when the
// texts are equal.
std::pair<std::string, std::string> first_difference(const std::string& a, const std::string& b) {
  std::istringstream sa(a), sb(b);
  std::string la, lb;
  while (true) {
    const bool ga = static_cast<bool>(std::getline(sa, la)), gb = static_cast<bool>(std::getline(sb, lb));
    if (!ga && !gb) return {};
    if (!ga) la = "<none>";
    if (!gb) lb = "<none>";
    if (la != lb) return {la, lb};
  }
}

// The compiler that built this binary, with its name (GCC's __VERSION__ is the bare number).
std::string compiler_name() {
#if defined(__clang__)
  return std::string("Clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("GCC ") + __VERSION__;
#else
  return "unknown compiler";
#endif
}

std::string gib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return b;
}

// Ranks of this job on this node (OpenMPI or Slurm tell; 1 otherwise): they share its memory.
int ranks_on_node() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"})
    if (const char* s = std::getenv(v)) {
      const int n = std::atoi(s);
      if (n > 0) return n;
    }
  return 1;
}

std::string memory_message(const RunConfig& cfg, int ranks, const std::string& what) {
  const MemoryEstimate m = estimate_memory(cfg, ranks);
  return "sizes: the run needs about " + gib(m.total) + " per rank (parameters, gradients and Adam state " + gib(m.params) +
         ", activations " + gib(m.activations) + ") x " + std::to_string(ranks_on_node()) + " rank(s) on this node, which " + what +
         " (available: " + gib(available_memory_bytes()) + "); use a smaller --batch, more ranks or smaller model options";
}

// Refuses, before anything is allocated or written, a run whose estimated memory exceeds what the
// node has.
void check_memory(const RunConfig& cfg, int ranks) {
  const double avail = available_memory_bytes();
  if (avail <= 0.0) return;  // unknown: allocation failures are still caught
  if (estimate_memory(cfg, ranks).total * ranks_on_node() > avail) throw UsageError(memory_message(cfg, ranks, "exceeds this node's memory"));
}

// Checks --out before anything is written: absent, empty, or holding this very configuration (and
// then, when it has snapshots, only with --resume: a finished or interrupted run is continued,
// never silently started over).
void check_out_dir(const RunConfig& cfg, const std::string& ini) {
  const fs::path out(cfg.out);
  std::error_code ec;
  if (cfg.out.empty()) throw UsageError("option '--out': needs a directory path, got an empty string");
  if (!fs::exists(out, ec)) {
    // it will be created: its nearest existing ancestor must be a directory we can write to
    fs::path up = fs::absolute(out, ec).parent_path();
    while (!up.empty() && !fs::exists(up, ec) && up != up.parent_path()) up = up.parent_path();
    if (!fs::is_directory(up, ec))
      throw UsageError("option '--out': cannot create '" + cfg.out + "': '" + up.string() + "' is not a directory");
    if (access(up.c_str(), W_OK | X_OK) != 0)
      throw UsageError("option '--out': cannot create '" + cfg.out + "' in '" + up.string() + "': " + std::strerror(errno));
    return;
  }
  if (!fs::is_directory(out)) throw UsageError("option '--out': '" + cfg.out + "' exists and is not a directory");
  if (access(out.c_str(), W_OK | X_OK) != 0)
    throw UsageError("option '--out': cannot write to '" + cfg.out + "': " + std::strerror(errno));
  bool empty = true;  // the lock file alone does not make a run
  for (const fs::directory_entry& e : fs::directory_iterator(out))
    if (e.path().filename() != RunLock::file_name()) empty = false;
  if (empty) return;
  if (!fs::exists(out / "config.ini"))
    throw UsageError("option '--out': directory '" + cfg.out + "' is not empty and holds no hyperrnn run (no config.ini)");
  const std::string old = read_file(out / "config.ini");
  const auto [there, here] = first_difference(old, ini);
  if (!there.empty() || !here.empty())
    throw UsageError("option '--out': directory '" + cfg.out + "' already holds a different run ('" + there + "' there, '" +
                     here + "' here); choose another --out");
  const std::vector<std::string> snaps = list_snapshots(cfg.out);
  if (!snaps.empty() && cfg.resume.empty())
    throw UsageError("option '--out': directory '" + cfg.out + "' already holds snapshots of this run (newest " +
                     fs::path(snaps.front()).filename().string() + "); continue it with --resume auto, or choose another --out");
}

// "" when a snapshot's configuration is this run's, else why not: a model-shape option that
// differs, or (any other option) another run.
std::string config_mismatch(const std::string& snap_ini, const std::string& ini) {
  const auto [there, here] = first_difference(snap_ini, ini);
  if (there.empty() && here.empty()) return "";
  auto value = [](const std::string& line) {
    const size_t eq = line.find(" = ");
    return eq == std::string::npos ? line : line.substr(eq + 3);
  };
  const std::string& line = here != "<none>" ? here : there;
  const std::string key = line.substr(0, line.find(" = "));
  const std::string d = key + " = " + value(there) + " in the snapshot, " + value(here) + " here";
  static const char* const shape_keys[] = {"model", "d-model", "layers", "heads", "experts", "top-k", "d-ff", "vocab",
                                           "seq-len", "task", "patch", "tie-embeddings", "gating-layers", "gating-heads",
                                           "history", "buffer-capacity", "classes-per-task", "marathon-head"};
  for (const char* sk : shape_keys)
    if (key == sk) return "the snapshot's model shape does not match the options (" + d + ")";
  return "the snapshot belongs to another run (" + d + ")";
}

// The snapshot to resume from (collective; the same answer on every rank): --resume PATH must
// verify (UsageError otherwise: exit 2); --resume auto takes the newest complete snapshot in --out
// that verifies, noting every one it passes over, and none (a fresh start) when none does.
std::optional<SnapshotInfo> choose_snapshot(Comm& comm, const RunConfig& cfg, const std::string& ini,
                                            std::vector<std::string>& notes) {
  Comm* c = comm.size() > 1 ? &comm : nullptr;
  auto check = [&](const std::string& path) {
    SnapshotInfo snap;
    collective(comm, [&] {
      snap = open_snapshot(path);
      const std::string why = config_mismatch(snap.config_ini, ini);
      if (!why.empty()) throw UsageError(snap.manifest + ": " + why);
    });
    const std::string bad = verify_snapshot(snap, c);
    if (!bad.empty()) throw UsageError("snapshot " + snap.dir + " fails verification: " + bad);
    return snap;
  };
  if (cfg.resume != "auto") {
    try {
      return check(cfg.resume);
    } catch (const UsageError& e) {
      throw UsageError(std::string("option '--resume': ") + e.what());
    }
  }
  std::vector<std::string> snaps;
  collective(comm, [&] { snaps = list_snapshots(cfg.out); }, true);
  std::string listed;  // rank 0 lists; every rank uses its list
  for (const std::string& s : snaps) listed += s + "\n";
  bcast_string(comm, listed, 0);
  snaps.clear();
  std::istringstream in(listed);
  for (std::string line; std::getline(in, line);) snaps.push_back(line);
  for (const std::string& s : snaps) {
    try {
      return check(s);
    } catch (const UsageError& e) {
      notes.push_back(std::string("resume: passing over ") + fs::path(s).filename().string() + ": " + e.what() +
                      "; falling back to the previous snapshot");
    }
  }
  notes.push_back(snaps.empty() ? "resume: no snapshot in " + cfg.out + " yet; starting at step 0"
                                : "resume: no snapshot in " + cfg.out + " verifies; starting at step 0");
  return std::nullopt;
}

}  // namespace

// Evaluation batches are global, like training batches: `chunk` samples cut into the run's S
// shards, each rank evaluating its block, so the figures do not depend on P. fill(first, n) puts
// the global samples [first, first + n) of the evaluated stream into the batch.
static EvalResult evaluate(Transformer<float>& model, Batch& batch, int64_t samples, int64_t chunk,
                           const std::function<void(int64_t, int)>& fill, bool recurrent) {
  Parallel& par = model.parallel();
  double loss_sum = 0.0, correct = 0.0;
  int64_t scored = 0, counted = 0;
  for (int64_t first = 0; first < samples; first += chunk) {
    const int64_t n = std::min<int64_t>(chunk, samples - first);
    int64_t f0 = 0;
    int cnt = 0;
    par.local_block(n, f0, cnt, batch.shard_samples);
    fill(first + f0, cnt);
    batch.step = -1;  // evaluation: no dropout
    batch.first = first + f0;
    const double loss = recurrent ? model.forward_recurrent(batch) : model.forward(batch);  // over the global chunk
    loss_sum += loss * model.scored();
    scored += model.scored();
    correct += model.correct();
    counted += model.samples_scored();
  }
  return {scored ? loss_sum / static_cast<double>(scored) : 0.0,
          counted ? correct / static_cast<double>(counted) : 0.0, samples};
}

EvalResult evaluate_heldout(Transformer<float>& model, MqarGenerator& gen, Batch& batch, uint64_t seed,
                            int64_t samples, int64_t chunk, bool recurrent) {
  return evaluate(model, batch, samples, chunk, [&](int64_t first, int n) {
    gen.fill(batch, seed, RngPurpose::HeldOut, 0, static_cast<uint32_t>(first), n);
  }, recurrent);
}

EvalResult evaluate_fmnist(Transformer<float>& model, const FmnistTask& task, Batch& batch, int which, int64_t max_samples,
                           int64_t chunk, bool recurrent) {
  return evaluate(model, batch, std::min<int64_t>(max_samples, task.test_count(which)), chunk,
                  [&](int64_t first, int n) { task.fill_test(batch, which, static_cast<int>(first), n); }, recurrent);
}

// --dry-run: the checks a launch makes before it writes anything, for --ranks ranks, on one
// process; prints what would run. Leaves out: the dataset files and snapshot verification (both
// need the data read; a launch checks them before it writes).
int dry_run(const Comm& comm, const RunConfig& cfg) {
  const int P = cfg.dry_ranks > 0 ? static_cast<int>(cfg.dry_ranks) : comm.size();
  validate_layout(cfg, P);
  check_stop_signal(cfg.stop_signal);
  const std::string ini = to_ini(cfg);
  if (!cfg.resume.empty() && cfg.resume != "auto" && !fs::exists(cfg.resume))
    throw UsageError("option '--resume': '" + cfg.resume + "' does not exist");
  if (fs::is_directory(cfg.out)) RunLock::check_free(cfg.out);
  check_out_dir(cfg, ini);
  check_memory(cfg, P);
  if (comm.rank() == 0) {
    const std::vector<std::string> snaps = fs::is_directory(cfg.out) ? list_snapshots(cfg.out) : std::vector<std::string>{};
    const std::string what = snaps.empty() ? "a new run"
                                           : "continues from " + fs::path(snaps.front()).filename().string() + " (--resume auto)";
    std::printf("hyperrnn train --dry-run: ok: %s on %s, %lld steps on %d rank(s), %s in %s; about %s per rank\n",
                cfg.model.c_str(), cfg.task.c_str(), static_cast<long long>(cfg.steps), P, what.c_str(), cfg.out.c_str(),
                gib(estimate_memory(cfg, P).total).c_str());
  }
  return 0;
}

int run_train(Comm& comm, const RunConfig& cfg) {
  if (cfg.dry_run) return dry_run(comm, cfg);
  validate_layout(cfg, comm.size());
  install_stop_handlers(cfg.stop_signal);
  const bool root = comm.rank() == 0;
  const std::string ini = to_ini(cfg);
  RunLock lock;  // rank 0 holds it for the whole run
  collective(comm, [&] {
    if (!cfg.resume.empty() && cfg.resume != "auto" && cfg.resume.find_first_not_of(' ') == std::string::npos)
      throw UsageError("option '--resume': must be auto or a snapshot path");
    if (fs::is_directory(cfg.out)) RunLock::check_free(cfg.out);  // in use: say so first, writing nothing
    check_out_dir(cfg, ini);  // nothing is written for a directory that is not ours
    if (fs::is_directory(cfg.out)) {  // one run per --out: lock it, then look again under the lock
      lock.acquire(cfg.out);
      check_out_dir(cfg, ini);
    }
  }, true);
  const fs::path out(cfg.out);
  // loads the data first: a missing dataset leaves no run directory behind
  std::unique_ptr<Session<float>> session;
  collective(comm, [&] { check_memory(cfg, comm.size()); });
  collective(comm, [&] {
    try {
      session = std::make_unique<Session<float>>(cfg, &comm);
    } catch (const std::bad_alloc&) {
      throw UsageError(memory_message(cfg, comm.size(), "could not be allocated"));
    }
  });
  Session<float>& ses = *session;
  Parallel& par = ses.par;
  Transformer<float>& model = ses.model;
  const ModelConfig& mc = model.config();
  const int B = static_cast<int>(cfg.batch), L = static_cast<int>(cfg.positions());
  const bool marathon = cfg.task == "fmnist-marathon";
  const int n_tasks = marathon ? ses.fmnist->tasks() : 0;

  // Resume: choose and verify before anything is written; then load theta on every rank.
  LoopState loop;
  loop.marathon_best.assign(static_cast<size_t>(n_tasks), -1.0);
  loop.marathon_last_acc.assign(static_cast<size_t>(n_tasks), NAN);
  std::vector<std::string> notes;
  int64_t start = 0;
  std::string source_run;  // the run directory whose CSV rows precede the resumed step
  if (!cfg.resume.empty()) {
    const std::optional<SnapshotInfo> snap = choose_snapshot(comm, cfg, ini, notes);
    if (snap) {
      load_hyper_state(ses, *snap, loop);
      start = snap->step;
      source_run = fs::path(snap->dir).parent_path().parent_path().string();
      notes.push_back("resume: continuing from " + snap->dir + " (step " + std::to_string(start) + ", written by " +
                      std::to_string(snap->files) + " rank(s), now " + std::to_string(par.P) + ")");
      if (cfg.stop_after > 0 && cfg.stop_after <= start)
        throw UsageError("option '--stop-after': " + std::to_string(cfg.stop_after) + " is at or before the snapshot's step " +
                         std::to_string(start) + " (--stop-after names the absolute step to stop after)");
      if (start > cfg.steps)
        throw UsageError("option '--resume': the snapshot is at step " + std::to_string(start) + ", beyond --steps " +
                         std::to_string(cfg.steps));
      if (start == cfg.steps) {
        if (root) {
          for (const std::string& n : notes) std::printf("%s\n", n.c_str());
          std::printf("hyperrnn train: %s is already complete (snapshot at step %lld); nothing to do\n", cfg.out.c_str(),
                      static_cast<long long>(start));
        }
        return 0;
      }
    }
  }
  // Branching: a new run (not a resumed one) whose theta starts from another run's snapshot.
  BranchInfo branch;
  if (start == 0 && !cfg.init_from.empty()) {
    branch = init_from_snapshot(comm, ses, cfg);
    for (const std::string& n : branch.notes) notes.push_back(n);
  }
  std::vector<std::string> header = {"step", "loss", "acc", "lr", "grad_norm", "tokens_per_s", "step_time_s", "scored", "skipped",
                                     "epsilon", "tau", "surprise", "expert_surprise", "gating_surprise", "pi",
                                     "lr_mod_expert", "lr_mod_gating", "gating_loss", "routing_acc", "k_mean"};
  for (int l = 0; l < mc.layers && mc.is_moe(); ++l)
    for (int e = 0; e < mc.experts; ++e)
      header.push_back("tokens_l" + std::to_string(l) + "_e" + std::to_string(e));
  for (int l = 0; l < mc.layers && mc.is_moe(); ++l) header.push_back("smk_l" + std::to_string(l));
  // one buffer per MoE layer (columns per layer), or one shared by all of them
  const int nbuf = static_cast<int>(ses.pilf.buffers.size());
  for (int k = 0; k < nbuf; ++k) {
    const std::string suffix = ses.pilf.cfg.shared_buffer ? std::string() : "_l" + std::to_string(k);
    header.push_back("buffer_size" + suffix);
    header.push_back("prototypes" + suffix);
  }
  // timing.csv: where each step's time went (rank 0's view) and the bytes each MoE layer moved
  // between ranks (all ranks together): everything that depends on the rank count lives here, so
  // metrics.csv is the same for every P apart from its wall-clock columns.
  const int Lmoe = mc.is_moe() ? mc.layers : 0;
  std::vector<std::string> theader = {"step", "ranks", "threads", "step_time_s", "compute_s", "dispatch_s", "reduce_s",
                                      "optimizer_s", "pilf_s", "expert_s"};
  for (int l = 0; l < Lmoe; ++l) theader.push_back("xfer_bytes_l" + std::to_string(l));
  theader.push_back("snapshot_s");  // a snapshot written after this step (0 when none)
  const std::vector<std::string> eheader = {"step", "split", "loss", "acc"};
  std::vector<std::string> mheader = {"step", "cycle", "task"};
  for (int j = 0; j < n_tasks; ++j) mheader.push_back("acc_task" + std::to_string(j));
  mheader.push_back("avg_acc");
  mheader.push_back("avg_forgetting");
  // A resumed run's CSVs, checked against the snapshot before anything is written: what they keep
  // (the rows up to the snapshot's step), a repair note, or a refusal naming file and line.
  std::vector<std::pair<std::string, CsvResume>> resumed;  // (file name, check) on rank 0
  collective(comm, [&] {
    if (start == 0) return;
    const std::string ph = [&] {  // timing.csv's row of the snapshot step may not have been written yet
      std::string r = std::to_string(start);
      for (size_t i = 1; i < theader.size(); ++i) r += ",nan";
      return r;
    }();
    auto check = [&](const char* name, const std::vector<std::string>& h, CsvKind kind, const std::string& proven, int64_t last_event,
                     bool authoritative) {
      resumed.emplace_back(name, check_resume_csv((fs::path(source_run) / name).string(), h, start, kind, proven, last_event,
                                                  authoritative));
    };
    check("metrics.csv", header, CsvKind::PerStep, loop.metrics_row, -1, true);
    check("eval.csv", eheader, CsvKind::Events, "", loop.last_eval_step, true);
    check("timing.csv", theader, CsvKind::PerStep, ph, -1, false);
    if (marathon) check("marathon.csv", mheader, CsvKind::Events, "", -1, true);
  }, true);
  collective(comm, [&] {  // a new --out: created now (data loaded, snapshot chosen), locked, checked again
    if (lock.held()) return;
    std::error_code ec;
    fs::create_directories(cfg.out, ec);
    if (ec) throw UsageError("option '--out': cannot create '" + cfg.out + "': " + ec.message());
    lock.acquire(cfg.out);
    check_out_dir(cfg, ini);
  }, true);
  if (root) {
    fs::create_directories(out / "logs");
    std::ofstream c(out / "config.ini");
    c << ini;
    if (!c) throw RuntimeError("cannot write " + (out / "config.ini").string());
    if (!branch.parent_dir.empty()) {  // where theta came from
      std::ofstream pv(out / "provenance.ini");
      pv << "# hyperrnn train --init-from: this run's theta at step 0 is its parent's\n"
         << "parent_snapshot = " << fs::absolute(branch.parent_dir).string() << "\n"
         << "parent_step = " << branch.parent_step << "\n"
         << "parent_theta_sha256 = " << branch.parent_theta << "\n"
         << "start_theta_sha256 = " << (branch.start_theta.empty() ? "n/a (computed on one rank only)" : branch.start_theta) << "\n"
         << "init_optimizer = " << (cfg.init_optimizer ? "true" : "false") << "\n";
      if (!pv) throw RuntimeError("cannot write " + (out / "provenance.ini").string());
    }
  }

  CsvWriter metrics, evals, timing, mara;
  // A resumed run keeps the rows up to its snapshot's step (checked above) and appends.
  auto open_csv = [&](CsvWriter& w, const char* name, const std::vector<std::string>& h) {
    const std::string dst = (out / name).string();
    for (const auto& [file, r] : resumed)
      if (file == name) {
        write_file_atomic(dst, r.kept);
        if (!r.note.empty()) notes.push_back("resume: " + r.note);
        w.open_append(dst, h);
        return;
      }
    w.open(dst, h);
  };
  if (root) {
    open_csv(metrics, "metrics.csv", header);
    open_csv(evals, "eval.csv", eheader);
    open_csv(timing, "timing.csv", theader);
    if (marathon) open_csv(mara, "marathon.csv", mheader);
  }
  std::string joined_header;
  for (size_t i = 0; i < header.size(); ++i) joined_header += (i ? "," : "") + header[i];
  loop.metrics_header = joined_header;
  // this invocation's provenance (not part of the run's identity): logs/invocations.csv, one row per
  // start; logs/events.csv, one row per start and per stop with its reason
  const std::vector<int32_t> per_rank = threads_per_rank(par);
  auto csv_field = [](std::string v) {
    if (v.empty()) return std::string("-");
    if (v.find_first_of(",\"\n") == std::string::npos) return v;
    std::string q = "\"";
    for (char ch : v) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
    return q + "\"";
  };
  auto utc = [] {
    const std::time_t now = std::time(nullptr);
    char when[32];
    std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    return std::string(when);
  };
  auto env = [](const char* k) { const char* v = std::getenv(k); return std::string(v ? v : ""); };
  auto event = [&](int64_t step, const std::string& what, const std::string& detail) {
    if (!root) return;
    const fs::path ev = out / "logs" / "events.csv";
    const bool fresh = !fs::exists(ev);
    std::ofstream f(ev, std::ios::app);
    if (fresh) f << "utc,step,event,detail\n";
    f << utc() << "," << step << "," << what << "," << csv_field(detail) << "\n";
    if (!f) throw RuntimeError("cannot write " + ev.string());
  };
  const std::string mpi_lib = comm.library();
  if (root) {
    const fs::path inv = out / "logs" / "invocations.csv";
    const bool fresh = !fs::exists(inv);
    std::ofstream f(inv, std::ios::app);
    if (fresh)
      f << "utc,start_step,ranks,threads_per_rank,resume,host,slurm_job_id,slurm_array_task_id,slurm_restart_count,blas,mpi,"
           "compiler,code_version\n";
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    std::string threads_list;
    for (size_t r = 0; r < per_rank.size(); ++r) threads_list += (r ? " " : "") + std::to_string(per_rank[r]);
    f << utc() << "," << start << "," << par.P << "," << threads_list << "," << csv_field(cfg.resume) << "," << csv_field(host) << ","
      << csv_field(env("SLURM_JOB_ID")) << "," << csv_field(env("SLURM_ARRAY_TASK_ID")) << "," << csv_field(env("SLURM_RESTART_COUNT"))
      << "," << csv_field(blas_threading()) << "," << csv_field(mpi_lib) << "," << csv_field(compiler_name()) << ","
      << csv_field(code_version()) << "\n";
    if (!f) throw RuntimeError("cannot write " + inv.string());
  }
  event(start, start > 0 ? "resume" : "start", start > 0 ? "from " + source_run + " step " + std::to_string(start) : "fresh");
  Progress progress(cfg.steps, cfg.log_every, (out / "logs" / "train.log").string(), root);
  // in the step loop, write failures are agreed on by all ranks (below) rather than thrown by rank 0
  for (CsvWriter* w : {&metrics, &evals, &timing, &mara}) w->defer_errors(par.P > 1);
  progress.defer_errors(par.P > 1);
  // rank 0's writes (CSVs, log) failed? All ranks agree and end alike (outside the step loop;
  // inside it, the per-step agreement below also carries the stop decision).
  std::string cost_error;  // model.csv's, written at the end
  auto write_error = [&] {  // the first of rank 0's deferred write failures ("" when none)
    for (const std::string* e : {&metrics.error(), &evals.error(), &timing.error(), &mara.error(), &progress.error(), static_cast<const std::string*>(&cost_error)})
      if (!e->empty()) return *e;
    return std::string();
  };
  auto agree_on_writes = [&] {
    std::string err = write_error();
    if (par.P > 1) err = first_failure(*par.comm, err);
    if (!err.empty()) throw AgreedError(err);
  };
  progress.line("hyperrnn train: " + cfg.model + " on " + cfg.task + ", " +
                std::to_string(model.table().elements()) + " parameters" +
                (par.P > 1 ? " (" + std::to_string(model.table().total()) + " held by rank 0)" : std::string()) +
                (ses.pilf.gating ? " (+" + std::to_string(ses.pilf.gating->table().total()) + " GatingTransformer)" : std::string()) +
                ", " + std::to_string(cfg.steps) +
                " steps of " + std::to_string(B) + " samples in " + std::to_string(cfg.shards) + " shard(s) on " +
                ranks_x_threads(per_rank) + " -> " + cfg.out + " (" + blas_short() + "; denormals " + cfg.denormals + ")");
  if (cfg.model == "pilf") {
    const std::vector<std::string> dev = profile_deviations(cfg);
    std::string line = "pilf profile " + cfg.pilf_profile;
    if (dev.empty()) line += " (docs/pilf.md)";
    else {
      line += "; explicit options win over it:";
      for (size_t i = 0; i < dev.size(); ++i) line += (i ? ", " : " ") + dev[i];
    }
    progress.line(line);
  }
  for (const std::string& n : notes) progress.line(n);

  auto run_eval_now = [&](int64_t step) {
    const EvalResult r = ses.fmnist ? evaluate_fmnist(model, *ses.fmnist, ses.batch, -1, cfg.eval_samples, cfg.batch)
                                    : evaluate_heldout(model, ses.gen, ses.batch, cfg.seed, cfg.eval_samples, cfg.batch);
    const char* split = ses.fmnist ? "test" : "heldout";
    evals.add(step).add(std::string(split)).add(r.loss).add(r.acc).end_row();
    char buf[160];
    std::snprintf(buf, sizeof buf, "eval step %lld: %s loss %.4f acc %.4f (%lld samples)",
                  static_cast<long long>(step), split, r.loss, r.acc, static_cast<long long>(r.samples));
    progress.line(buf);
    loop.last_eval_step = step;
    loop.last_eval_loss = r.loss;
    loop.last_eval_acc = r.acc;
    loop.last_eval_samples = r.samples;
  };

  // fmnist-marathon: after each task, validate on every task seen so far; average forgetting is
  // the mean over seen tasks other than the current one of (best earlier accuracy - accuracy now).
  std::vector<double>& best = loop.marathon_best;
  auto validate_tasks = [&](int64_t step) {  // step: steps done, a multiple of task-steps
    const int64_t done = step / cfg.task_steps;  // tasks completed
    const int current = static_cast<int>((done - 1) % n_tasks);
    const int seen = done >= n_tasks ? n_tasks : static_cast<int>(done);
    std::vector<double> acc(static_cast<size_t>(n_tasks), NAN);
    double sum = 0.0, forget = 0.0;
    int nf = 0;
    std::string line = "validation after task " + std::to_string(current) + " (cycle " + std::to_string((done - 1) / n_tasks) + "):";
    for (int j = 0; j < seen; ++j) {
      const EvalResult r = evaluate_fmnist(model, *ses.fmnist, ses.batch, j, cfg.eval_samples, cfg.batch);
      evals.add(step).add("task" + std::to_string(j)).add(r.loss).add(r.acc).end_row();
      acc[static_cast<size_t>(j)] = r.acc;
      sum += r.acc;
      if (j != current && best[static_cast<size_t>(j)] >= 0.0) {
        forget += best[static_cast<size_t>(j)] - r.acc;
        ++nf;
      }
      char b[48];
      std::snprintf(b, sizeof b, " t%d %.3f", j, r.acc);
      line += b;
    }
    for (int j = 0; j < seen; ++j) best[static_cast<size_t>(j)] = std::max(best[static_cast<size_t>(j)], acc[static_cast<size_t>(j)]);
    loop.marathon_last_acc = acc;
    loop.marathon_forgetting = nf ? forget / nf : 0.0;
    mara.add(step).add((done - 1) / n_tasks).add(static_cast<int64_t>(current));
    for (double a : acc) mara.add(a);
    mara.add(sum / seen).add(loop.marathon_forgetting).end_row();
    char b[96];
    std::snprintf(b, sizeof b, " | mean %.3f, average forgetting %.3f", sum / seen, loop.marathon_forgetting);
    progress.line(line + b);
  };

  double snap_s = 0.0, snap_bytes = 0.0;
  int snaps_written = 0;
  std::string last_snap;
  auto snapshot = [&](int64_t step) {  // returns its wall time
    const auto t0 = std::chrono::steady_clock::now();
    loop.metrics_row = metrics.last_row();
    last_snap = save_hyper_state(ses, step, ini, loop, static_cast<int>(cfg.keep));
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    snap_s += dt;
    ++snaps_written;
    if (root) {
      double bytes = 0.0;
      for (const auto& e : fs::directory_iterator(last_snap)) bytes += static_cast<double>(e.file_size());
      snap_bytes += bytes;
      char b[200];
      std::snprintf(b, sizeof b, "snapshot %s: %.2f MB in %.3f s (%.1f MB/s)", fs::path(last_snap).filename().string().c_str(),
                    bytes * 1e-6, dt, bytes * 1e-6 / std::max(dt, 1e-9));
      progress.line(b);
    }
    return dt;
  };

  const int64_t N = static_cast<int64_t>(B) * L;
  double flops = 0.0, busy = 0.0;
  int64_t counted = 0;  // steps whose FLOPs are in `flops`
  const auto t_run = std::chrono::steady_clock::now();
  // Time budget: --time-budget seconds from now, or Slurm's projected job end (the earlier).
  double deadline = cfg.time_budget > 0.0 ? cfg.time_budget : 0.0;  // seconds after t_run; 0 = none
  if (const char* end = std::getenv("SLURM_JOB_END_TIME")) {
    const double left = std::strtod(end, nullptr) - static_cast<double>(std::time(nullptr));
    if (left > 0.0 && (deadline == 0.0 || left < deadline)) deadline = left;
  }
  double step_max = 0.0, snap_max = 0.0;  // the slowest step and snapshot so far (the next ones' estimates)
  const double snap_guess = 1.0 + 12.0 * static_cast<double>(model.table().total()) / 50e6;  // before the first
  for (int64_t step = start; step < cfg.steps; ++step) {
    par.reset_accounting(Lmoe);
    const auto t0 = std::chrono::steady_clock::now();
    const StepStats st = ses.train(step);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    timing.add(step + 1).add(static_cast<int64_t>(par.P)).add(static_cast<int64_t>(threads().size())).add(dt)
        .add(std::max(0.0, dt - par.dispatch_s - par.reduce_s - st.optimizer_s - st.pilf_s))
        .add(par.dispatch_s).add(par.reduce_s).add(st.optimizer_s).add(st.pilf_s).add(par.expert_s);
    for (int64_t b : par.layer_bytes) timing.add(b);  // the row ends after the snapshot decision
    busy += dt;
    if (!st.skipped) {  // a skipped step ran no backward
      flops += model.step_flops() + ses.pilf.step_flops(B, st.meta);
      ++counted;
    }

    metrics.add(step + 1).add(st.loss).add(st.acc).add(st.lr).add(st.grad_norm)
        .add(static_cast<double>(N) / dt).add(dt).add(static_cast<int64_t>(model.scored()))
        .add(static_cast<int64_t>(st.skipped))
        .add(st.epsilon).add(st.tau).add(st.surprise).add(st.expert_surprise).add(st.gating_surprise).add(st.pi)
        .add(st.lr_mod_expert).add(st.lr_mod_gating).add(st.gating_loss).add(st.routing_acc).add(st.k_mean);
    for (int32_t n : model.expert_tokens()) metrics.add(static_cast<int64_t>(n));
    for (int l = 0; l < mc.layers && mc.is_moe(); ++l)
      metrics.add(static_cast<int64_t>(st.smk_mask.empty() ? 0u : st.smk_mask[static_cast<size_t>(l)]));
    for (int k = 0; k < nbuf; ++k) {
      const bool have = !st.buffer_size.empty();
      metrics.add(static_cast<int64_t>(have ? st.buffer_size[static_cast<size_t>(k)] : ses.pilf.buffers[static_cast<size_t>(k)].size()));
      metrics.add(static_cast<int64_t>(have ? st.prototypes[static_cast<size_t>(k)] : ses.pilf.buffers[static_cast<size_t>(k)].active_prototypes()));
    }
    metrics.end_row();
    progress.step(step, st.loss, st.acc, static_cast<double>(N) / dt);
    if (st.skipped) {
      ++loop.skipped_total;
      ++loop.skipped_in_a_row;
      const std::string what = std::isfinite(st.loss) ? "gradient norm " + format_roundtrip(st.grad_norm)
                                                      : "loss " + format_roundtrip(st.loss);
      progress.line("step " + std::to_string(step + 1) + ": " + what + "; step skipped, nothing updated (" +
                    std::to_string(loop.skipped_in_a_row) + " in a row)");
      if (loop.skipped_in_a_row >= cfg.max_bad_steps)
        throw RuntimeError("stopping at step " + std::to_string(step + 1) + ": " + std::to_string(loop.skipped_in_a_row) +
                           " steps in a row had NaN or Inf loss or gradients (--max-bad-steps " +
                           std::to_string(cfg.max_bad_steps) + "); lower --lr or check the data. Metrics so far are in " +
                           cfg.out + "/metrics.csv");
    } else {
      loop.skipped_in_a_row = 0;
    }
    const int64_t done = step + 1;
    if (marathon && done % cfg.task_steps == 0) validate_tasks(done);
    if (cfg.eval_every > 0 && done % cfg.eval_every == 0) run_eval_now(done);
    const bool stop_here = cfg.stop_after > 0 && done == cfg.stop_after && done < cfg.steps;
    double this_snap = 0.0;
    if (done < cfg.steps && ((cfg.snapshot_every > 0 && done % cfg.snapshot_every == 0) || stop_here)) this_snap = snapshot(done);
    if (done == cfg.steps) {  // the final evaluation and snapshot come first
      if (loop.last_eval_step != cfg.steps) run_eval_now(cfg.steps);
      this_snap = snapshot(cfg.steps);
    }
    timing.add(this_snap).end_row();
    // After every step, one agreement (a two-integer max over ranks): did rank 0's writes fail, and
    // did a stop signal (SIGTERM, SIGINT, --stop-signal) reach any rank or the time budget (rank
    // 0's clock) run out? All ranks then end or stop after the same step.
    step_max = std::max(step_max, dt);
    if (this_snap > 0.0) snap_max = std::max(snap_max, this_snap);
    constexpr int kTimeUp = 1000;  // above every signal number
    std::string write_err = write_error();
    int state[2] = {write_err.empty() ? 0 : 1, stop_requested()};
    if (root && deadline > 0.0) {
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
      if (elapsed + 2.0 * step_max + (snap_max > 0.0 ? 2.0 * snap_max : snap_guess) + 1.0 > deadline) state[1] = kTimeUp;
    }
    if (par.P > 1) par.comm->allreduce_max(state, 2);
    if (state[0] != 0) {  // only rank 0 writes: its message to every rank
      if (par.P > 1) bcast_string(*par.comm, write_err, 0);
      throw AgreedError(write_err);
    }
    const int sig = state[1];
    if (sig != 0 && done < cfg.steps) {
      const std::string why = sig == kTimeUp ? std::string("the time budget") : signal_name(sig);
      if (this_snap == 0.0) snapshot(done);
      event(done, "stop", why + ", snapshot " + last_snap);
      progress.line("stopping after step " + std::to_string(done) + " on " + why + " with snapshot " + last_snap +
                    "; continue with --resume auto (exit status " + std::to_string(kExitStopped) + ")");
      agree_on_writes();
      return kExitStopped;
    }
    if (stop_here) {
      event(done, "stop", "--stop-after, snapshot " + last_snap);
      progress.line("stopping after step " + std::to_string(done) + " (--stop-after) with snapshot " + last_snap +
                    "; continue with --resume auto");
      return 0;
    }
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count();
  const int64_t ran = cfg.steps - start;
  char buf[400];
  std::snprintf(buf, sizeof buf,
                "done: %lld steps (%lld skipped)%s in %s | %.0f tokens/s | %.2f GFLOP/s (model FLOPs) | final held-out accuracy %.4f, loss %.4f",
                static_cast<long long>(cfg.steps), static_cast<long long>(loop.skipped_total),
                start > 0 ? (", " + std::to_string(ran) + " of them after resuming").c_str() : "", format_duration(wall).c_str(),
                busy > 0 ? static_cast<double>(N) * static_cast<double>(ran) / busy : 0.0, busy > 0 ? flops / busy * 1e-9 : 0.0,
                loop.last_eval_acc, loop.last_eval_loss);
  progress.line(buf);
  std::snprintf(buf, sizeof buf, "snapshots: %d written, %.2f MB in %.2f s (%.1f MB/s, %.2f%% of the run's wall time)",
                snaps_written, snap_bytes * 1e-6, snap_s, snap_bytes * 1e-6 / std::max(snap_s, 1e-9),
                100.0 * snap_s / std::max(1e-9, wall));
  progress.line(buf);
  if (marathon && cfg.steps >= cfg.task_steps) {
    double sum = 0.0;
    int seen = 0;
    for (double a : loop.marathon_last_acc)
      if (!std::isnan(a)) {
        sum += a;
        ++seen;
      }
    std::snprintf(buf, sizeof buf, "marathon: last validation mean task accuracy %.4f over %d tasks, average forgetting %.4f (marathon.csv)",
                  seen ? sum / seen : 0.0, seen, loop.marathon_forgetting);
    progress.line(buf);
  }
  progress.line("run directory: " + cfg.out + " (config.ini, metrics.csv, timing.csv, eval.csv, " + (marathon ? "marathon.csv, " : "") + "model.csv, " +
                "logs/, snapshot " + fs::path(last_snap).filename().string() + ")");
  progress.line("next: build/bin/hyperrnn inspect " + cfg.out + " (what the snapshot holds) | hyperrnn eval --snapshot " + cfg.out +
                " | analysis/hyperrnn-analysis report " + cfg.out + " (curves and figures as HTML)");
  if (root) {  // model.csv: what the run cost, for studies that compare models (analysis/hyperrnn_analysis/comparison.py)
    // Memory one sequence carries at inference: rwkv7's recurrent state per layer (the wkv matrix of
    // every head, the time-mix and channel-mix token shifts); a Transformer's KV cache at the run's
    // sequence length (keys and values of every layer and position).
    const int64_t per_seq = mc.is_rwkv()
        ? static_cast<int64_t>(mc.layers) * (static_cast<int64_t>(mc.d_model / mc.head_size) * mc.head_size * mc.head_size +
                                             mc.d_model + (mc.channel_mix ? mc.d_model : 0))
        : 2 * static_cast<int64_t>(mc.layers) * L * mc.d_model;
    const double per_token = counted > 0 ? flops / (static_cast<double>(counted) * static_cast<double>(N))
                                         : (model.step_flops() + ses.pilf.step_flops(B, false)) / static_cast<double>(N);
    std::string text = "parameters,gating_parameters,model_flops_per_token,memory_floats_per_sequence,memory,positions,tokens_per_s\n";
    text += std::to_string(model.table().elements()) + "," +
            std::to_string(ses.pilf.gating ? ses.pilf.gating->table().total() : 0) + "," + format_roundtrip(per_token) + "," +
            std::to_string(per_seq) + "," + (mc.is_rwkv() ? "recurrent-state" : "kv-cache") + "," + std::to_string(L) + "," +
            format_roundtrip(busy > 0 ? static_cast<double>(N) * static_cast<double>(ran) / busy : 0.0) + "\n";
    try {
      write_file_atomic((out / "model.csv").string(), text);
    } catch (const std::exception& e) {
      cost_error = e.what();
    }
  }
  event(cfg.steps, "complete", "snapshot " + last_snap);
  agree_on_writes();
  return 0;
}

}  // namespace hyperrnn
