// The expert-parallel layout of a run over P ranks and what the hyper-step builds on the Comm
// interface: canonical batch shards, expert ownership, the MoE token exchange (plan, dispatch to
// the experts' owners in canonical order, return), reproducible sums over shards, and per-step
// accounting (time in exchanges and reductions, bytes moved). With P = 1 nothing here calls Comm.
// Leaves out: the maths (src/nn, src/models) and MPI itself (mpi/).
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "parallel/fixed_point.hpp"

namespace hyperrnn {

class Comm;

// Adds the seconds of its lifetime to acc (the step's time accounting).
class ScopedTimer {
 public:
  explicit ScopedTimer(double& acc) : acc_(acc), t0_(std::chrono::steady_clock::now()) {}
  ~ScopedTimer() { acc_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  double& acc_;
  std::chrono::steady_clock::time_point t0_;
};

// Gradients of replicated tensors are summed over shards either reproducibly (the result does
// not depend on P) or, for the benchmark's comparison only, by a plain floating-point allreduce.
enum class Reduction { Exact, Plain };

class Parallel {
 public:
  // comm null or of size 1: one rank. shards = S (P must divide it); experts = E per MoE layer
  // (0 for dense models): rank r owns experts [floor(rE/P), floor((r+1)E/P)), so an uneven split
  // gives some ranks one expert more. Checks nothing: options validation rejects bad layouts.
  Parallel(Comm* comm = nullptr, int shards = 1, int experts = 0);

  Comm* comm = nullptr;
  int P = 1, rank = 0, S = 1, E = 0;
  int shard_lo = 0, shard_hi = 1;  // this rank's canonical shards [lo, hi)
  std::vector<int> expert_lo;      // (P+1)
  Reduction reduction = Reduction::Exact;

  int local_shards() const { return shard_hi - shard_lo; }
  int owner(int e) const { return owner_of(e, E, P); }
  // The rank that owns expert e of E among P ranks (also for a snapshot written by P ranks).
  static int owner_of(int e, int E, int P);
  int experts_lo() const { return expert_lo[static_cast<size_t>(rank)]; }
  int experts_hi() const { return expert_lo[static_cast<size_t>(rank) + 1]; }
  bool owns(int e) const { return e >= experts_lo() && e < experts_hi(); }
  // Shard s of a global batch of n samples covers [n s / S, n (s+1) / S): the split depends on n
  // and S only, never on P.
  int64_t shard_begin(int64_t n, int s) const { return n * s / S; }
  // This rank's part of a global batch of n samples: first global index, count, and the sample
  // count of each local shard.
  void local_block(int64_t n, int64_t& first, int& count, std::vector<int>& shard_samples) const;

  // Accounting, accumulated until reset (train logs it per step).
  double dispatch_s = 0.0, reduce_s = 0.0;
  double expert_s = 0.0;  // the rank's expert FFN forward and backward (part of the compute)
  std::vector<int64_t> layer_bytes;  // (MoE layers) bytes moved between ranks, all ranks together
  void reset_accounting(int moe_layers);

  // Sum over all S canonical shards of m values per shard, added in shard order: local holds this
  // rank's shards (local_shards() x m); out (m) is identical on every rank and for every P.
  void sum_over_shards(const double* local, int m, double* out);
  // Sum over ranks of vectors in which every element has at most one non-zero contributor (values
  // that one rank owns): x + 0 = x, so the floating-point sum is exact in any order.
  void merge_owned(double* v, size_t n);
  // Concatenation in rank order of every rank's `bytes` bytes (the same count on every rank, as
  // for the equal blocks of a training batch) into recv (P x bytes).
  void allgather(const void* send, size_t bytes, void* recv);

 private:
  std::vector<double> gather_;
};

// Agreement on failures across ranks (collective over comm): every rank passes its own failure
// message ("" = none); every rank gets the lowest failing rank's message and that rank (or "" and
// -1). A failure seen by some ranks thus becomes the same failure everywhere and no rank waits
// alone in a later collective.
std::string first_failure(Comm& comm, const std::string& mine, int* who = nullptr);
// Rank root's string on every rank.
void bcast_string(Comm& comm, std::string& s, int root);

using fixed_point::round_half_away;  // parallel/fixed_point.hpp

// Reproducible sum of the replicated tensors' per-shard gradients (deliverable 4; docs/
// architecture.md): each block of 256 consecutive elements gets a shared exponent (the largest over
// all shards, agreed by an integer max-allreduce); every value becomes a 64-bit integer on that
// exponent with ceil(log2 S) bits of headroom; integers are summed exactly (locally, then by an
// integer allreduce) and converted back once. Integer addition is associative, so the result is the
// same for every P and every reduction order. Values below 2^(e - 62 + ceil(log2 S)) of their
// block's largest magnitude 2^e are rounded to that grid (absolute error <= S 2^(e-63+ceil(log2 S))).
// A block holding NaN or Inf on any shard yields NaN (the step is then skipped).
template <class T>
class ShardSum {
 public:
  // ranges: [begin, end) element ranges of the buffer to reduce. shards: this rank's local
  // per-shard buffers (same layout as out). out receives the sum over all S shards.
  void sum(T* out, const std::vector<const T*>& shards, const std::vector<std::pair<int64_t, int64_t>>& ranges,
           Parallel& par);

 private:
  std::vector<int> exps_;
  std::vector<int64_t> acc_;
};

// One MoE layer's token exchange in the last forward. Each rank sorts its active (token, slot)
// rows by (expert, token, slot); the rows for rank d's experts are then one contiguous block.
// Owners receive blocks in rank order and rearrange them into canonical order: for each of their
// experts, the rows of rank 0, then rank 1, ... which is (expert, global token, slot) order
// because rank blocks are consecutive in the global batch. So an expert's rows, and its GEMMs,
// are the same for every P.
class ExpertExchange {
 public:
  // Collective: agrees on counts (local_offsets (E+1): row ranges of each expert in this rank's
  // sorted rows). Afterwards own_offsets() gives the canonical row ranges of this rank's experts.
  void plan(const int32_t* local_offsets, Parallel& par, int layer, int width_bytes);
  int64_t own_rows() const { return own_offsets_.empty() ? 0 : own_offsets_.back(); }
  const int32_t* own_offsets() const { return own_offsets_.data(); }  // (my experts + 1)
  // Global tokens routed to each expert (all ranks), (E).
  const std::vector<int32_t>& expert_rows() const { return expert_rows_; }
  // local (A, W) sorted rows -> own (own_rows, W) canonical rows on the owners.
  template <class T>
  void dispatch(const T* local, T* own, int W, Parallel& par);
  // own (own_rows, W) canonical rows -> local (A, W) sorted rows back on their senders.
  template <class T>
  void give_back(const T* own, T* local, int W, Parallel& par);

 private:
  template <class T>
  void permute(const T* from, T* to, int W, bool to_canonical);
  std::vector<int32_t> counts_;       // (P,E) rows rank s sends to expert e
  std::vector<int32_t> mine_;         // (E) this rank's part of counts_
  std::vector<int32_t> expert_rows_;  // (E)
  std::vector<int64_t> sc_, sd_, rc_, rd_, sc_w_, sd_w_, rc_w_, rd_w_;  // (P) rows, then elements
  std::vector<int32_t> own_offsets_;
  int first_own_ = 0;
  std::vector<int64_t> cur_;
  void scale(int W);  // element counts and displacements for rows of W values
  std::vector<float> tmp_f_;
  std::vector<double> tmp_d_;
  template <class T>
  std::vector<T>& tmp();
};

}  // namespace hyperrnn
