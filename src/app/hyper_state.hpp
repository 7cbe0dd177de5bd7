// The whole hyper-state theta_t of a training session in a sharded snapshot, and back: the main
// model's parameters and AdamW state (replicated tensors in the manifest, experts in their owner's
// shard), PILR statistics, pilf's GatingTransformer with its AdamW state, experience buffers and
// dynamic top-k statistics, and what the training loop needs to continue exactly (skip counters,
// last evaluation, marathon accuracies, the step's metrics row). The data stream and every RNG
// are counter-based, so the step itself is the only counter. Dataset names come from the tables.
// Leaves out: the file mechanics (src/io/snapshot.cpp).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "app/session.hpp"
#include "io/h5.hpp"
#include "io/snapshot.hpp"

namespace hyperrnn {

// What the training loop adds to theta for an exact continuation.
struct LoopState {
  int64_t skipped_in_a_row = 0, skipped_total = 0, last_eval_step = -1;
  double last_eval_loss = 0.0, last_eval_acc = 0.0;
  int64_t last_eval_samples = 0;
  std::vector<double> marathon_best, marathon_last_acc;  // (tasks)
  double marathon_forgetting = 0.0;
  std::string metrics_header, metrics_row;  // the snapshot step's metrics.csv row (for inspect)
};

// Collective: snapshot of the session after `step` steps. Returns the snapshot directory.
std::string save_hyper_state(Session<float>& ses, int64_t step, const std::string& config_ini, const LoopState& loop,
                             int keep);
// Collective: restores a verified snapshot into the session, whatever rank count wrote it (each
// rank reads the replicated state and the experts it owns now, optimizer moments included).
void load_hyper_state(Session<float>& ses, const SnapshotInfo& snap, LoopState& loop);

// Reads the tensors of `table` from a snapshot group ("params", "adam/m", "adam/v") into buf (table
// layout): replicated ones from the manifest, experts from the shard file that holds them; with
// `layout`, only the experts that layout's rank owns. Throws naming the file and dataset when one
// is missing or misshapen.
void read_tensors(const SnapshotInfo& snap, const ParamTable& table, const std::string& group, float* buf,
                  const Parallel* layout = nullptr);

// pilf's routing state (GatingTransformer parameters, buffers, dynamic top-k statistics).
void write_pilf_state(H5File& f, const PilfState<float>& ps);
void read_pilf_state(const H5File& f, PilfState<float>& ps);

// SHA-256 of theta's parameters in canonical order: the main model's tensors in table order, then
// the GatingTransformer's (pilf), each as little-endian float32 bytes.
std::string theta_sha256(const Transformer<float>& model, const PilfState<float>* pilf);

// --init-from: theta (and with --init-optimizer the optimizer state) from a snapshot into a new
// run's session (collective). The model's tensors must match by name and shape; pilf's
// GatingTransformer and buffers come along where they fit. UsageError naming the option otherwise.
struct BranchInfo {
  std::string parent_dir, parent_theta, start_theta;  // start_theta: this run's theta after loading (1 rank; else "")
  int64_t parent_step = 0;
  std::vector<std::string> notes;
};
BranchInfo init_from_snapshot(Comm& comm, Session<float>& ses, const RunConfig& cfg);

// PATH opened as a snapshot for --option (collective): its configuration into cfg, check run on it
// within the same agreement, then full verification. UsageError naming the option.
SnapshotInfo open_option_snapshot(Comm& comm, const std::string& path, const std::string& option, RunConfig& cfg,
                                  const std::function<void(const RunConfig&)>& check = {});

}  // namespace hyperrnn
