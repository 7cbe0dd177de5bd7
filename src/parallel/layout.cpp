// Layout, shard sums, the reproducible gradient sum and the MoE token exchange.
#include "parallel/layout.hpp"

#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>

#include "core/error.hpp"
#include "mpi/comm.hpp"
#include "parallel/threads.hpp"

namespace hyperrnn {

namespace {
// Adds the seconds since construction to `acc` when it goes out of scope.
}  // namespace

Parallel::Parallel(Comm* c, int shards, int experts) : comm(c), S(shards), E(experts) {
  if (comm && comm->size() > 1) {
    P = comm->size();
    rank = comm->rank();
  } else {
    comm = nullptr;
  }
  shard_lo = S / P * rank;
  shard_hi = S / P * (rank + 1);
  expert_lo.resize(static_cast<size_t>(P) + 1);
  for (int r = 0; r <= P; ++r) expert_lo[static_cast<size_t>(r)] = static_cast<int>(static_cast<int64_t>(E) * r / P);
}

int Parallel::owner_of(int e, int E, int P) {
  int r = 0;
  while (r + 1 < P && static_cast<int64_t>(e) >= static_cast<int64_t>(E) * (r + 1) / P) ++r;
  return r;
}

void Parallel::local_block(int64_t n, int64_t& first, int& count, std::vector<int>& shard_samples) const {
  first = shard_begin(n, shard_lo);
  count = static_cast<int>(shard_begin(n, shard_hi) - first);
  shard_samples.resize(static_cast<size_t>(local_shards()));
  for (int s = shard_lo; s < shard_hi; ++s)
    shard_samples[static_cast<size_t>(s - shard_lo)] = static_cast<int>(shard_begin(n, s + 1) - shard_begin(n, s));
}

void Parallel::reset_accounting(int moe_layers) {
  dispatch_s = reduce_s = expert_s = 0.0;
  layer_bytes.assign(static_cast<size_t>(moe_layers), 0);
}

void Parallel::sum_over_shards(const double* local, int m, double* out) {
  const double* all = local;
  if (P > 1) {
    ScopedTimer w(reduce_s);
    gather_.resize(static_cast<size_t>(S) * static_cast<size_t>(m));
    comm->allgather_bytes(local, static_cast<size_t>(local_shards()) * static_cast<size_t>(m) * sizeof(double), gather_.data());
    all = gather_.data();
  }
  for (int j = 0; j < m; ++j) out[j] = 0.0;
  for (int s = 0; s < S; ++s)
    for (int j = 0; j < m; ++j) out[j] += all[static_cast<int64_t>(s) * m + j];
}

void Parallel::merge_owned(double* v, size_t n) {
  if (P == 1) return;
  ScopedTimer w(reduce_s);
  comm->allreduce_sum(v, n);
}

void Parallel::allgather(const void* send, size_t bytes, void* recv) {
  if (P == 1) {
    if (bytes && send != recv) std::memmove(recv, send, bytes);
    return;
  }
  ScopedTimer w(reduce_s);
  comm->allgather_bytes(send, bytes, recv);
}

std::string first_failure(Comm& comm, const std::string& mine, int* who) {
  if (who) *who = mine.empty() ? -1 : comm.rank();
  if (comm.size() == 1) return mine;
  const int P = comm.size();
  const int top = comm.allreduce_max(mine.empty() ? 0 : P - comm.rank());  // max of P - rank: lowest rank
  if (who) *who = top == 0 ? -1 : P - top;
  if (top == 0) return "";
  std::string msg = mine;
  bcast_string(comm, msg, P - top);
  return msg;
}

void bcast_string(Comm& comm, std::string& s, int root) {
  if (comm.size() == 1) return;
  uint64_t len = s.size();
  comm.bcast_bytes(&len, sizeof len, root);
  s.resize(static_cast<size_t>(len));
  if (len > 0) comm.bcast_bytes(s.data(), static_cast<size_t>(len), root);
}

// ---------------------------------------------------------------------------------------------
// Reproducible sum

namespace {
using fixed_point::kBlock;
using fixed_point::kNonFinite;
using fixed_point::kZero;

// a[i] += llround(x[i] * scale) over one block (|x[i] * scale| < 2^62). Integer results, exact
// conversions and comparisons only: every clone (AVX-512's vcvttpd2qq, or scalar conversions)
// gives the same integers.
template <class T>
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
void add_fixed_point(int64_t* __restrict a, const T* __restrict x, int n, double scale) {
  for (int i = 0; i < n; ++i) a[i] += round_half_away(static_cast<double>(x[i]) * scale);
}

// The largest |x[i]| over a block, carried in m, as a bit pattern: the sign bit cleared, the order
// of non-negative IEEE values is the order of their bit patterns as unsigned integers, and inf and
// every NaN lie above the largest finite value. An integer max vectorises; a float max reduction
// does not without -ffast-math (GCC left this loop scalar: most of the shard sum's time).
template <class T>
using BitsOf = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
template <class T>
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
BitsOf<T> absmax_bits(const T* __restrict x, int n, BitsOf<T> m) {
  using U = BitsOf<T>;
  const U mask = ~(U{1} << (8 * sizeof(U) - 1));
  for (int i = 0; i < n; ++i) {
    U u;
    std::memcpy(&u, x + i, sizeof u);
    u &= mask;
    m = u > m ? u : m;
  }
  return m;
}
}  // namespace

template <class T>
void ShardSum<T>::sum(T* out, const std::vector<const T*>& shards, const std::vector<std::pair<int64_t, int64_t>>& ranges,
                      Parallel& par) {
  const int Sl = static_cast<int>(shards.size());
  HYPERRNN_CHECK(Sl == par.local_shards(), "ShardSum: one buffer per local shard");
  ScopedTimer w(par.reduce_s);
  if (par.reduction == Reduction::Plain) {  // benchmark baseline: shard order locally, then MPI's sum
    for (const auto& [b, e] : ranges) {
      for (int64_t i = b; i < e; ++i) {
        T acc = shards[0][i];
        for (int s = 1; s < Sl; ++s) acc += shards[static_cast<size_t>(s)][i];
        out[i] = acc;
      }
      if (par.P > 1) par.comm->allreduce_sum(out + b, static_cast<size_t>(e - b));
    }
    return;
  }
  // the blocks of 256 elements (a fixed decomposition: the ranges only), then work items of 16
  // blocks each on the rank's threads; every element's value depends on its block alone
  struct Block {
    int64_t b0, b1, at;
  };
  std::vector<Block> blocks;
  int64_t at0 = 0;
  for (const auto& [b, e] : ranges)
    for (int64_t b0 = b; b0 < e; b0 += kBlock) {
      const int64_t b1 = std::min(e, b0 + kBlock);
      blocks.push_back({b0, b1, at0});
      at0 += b1 - b0;
    }
  const int nblocks = static_cast<int>(blocks.size());
  constexpr int kPerItem = 16;
  const int items = (nblocks + kPerItem - 1) / kPerItem;
  auto each_block = [&](const std::function<void(int k, const Block& bl)>& fn) {
    threads().run(items, [&](int it, int) {
      for (int k = it * kPerItem; k < std::min(nblocks, (it + 1) * kPerItem); ++k) fn(k, blocks[static_cast<size_t>(k)]);
    });
  };
  exps_.assign(static_cast<size_t>(nblocks), kZero);
  const int headroom = fixed_point::headroom(par.S);
  acc_.assign(static_cast<size_t>(at0), 0);
  // 1. the largest binary exponent of each block over this rank's shards (then over all ranks)
  auto exponent = [&](int k, const Block& bl) {
    // frexp's exponent grows with |v|, so the block's largest is that of its largest |v|: one
    // frexp per block after a max that vectorises (on bit patterns: inf and NaN lie above max)
    int& ex = exps_[static_cast<size_t>(k)];
    using U = BitsOf<T>;
    U m = 0;
    for (int s = 0; s < Sl; ++s) m = absmax_bits(shards[static_cast<size_t>(s)] + bl.b0, static_cast<int>(bl.b1 - bl.b0), m);
    const T big = std::numeric_limits<T>::max();
    U big_bits;
    std::memcpy(&big_bits, &big, sizeof big_bits);
    T mx;
    std::memcpy(&mx, &m, sizeof mx);
    ex = fixed_point::block_exponent(static_cast<double>(mx), m > big_bits);  // above max: inf or NaN
  };
  // 2. fixed point on the block's exponent with headroom for S terms, exact integer sums (scaling
  // by a power of two is exact, so x * 2^shift is ldexp(x, shift)) (then over all ranks)
  auto accumulate = [&](int k, const Block& bl) {
    const int ex = exps_[static_cast<size_t>(k)];
    if (ex == kZero || ex == kNonFinite) return;
    const int shift = fixed_point::shift_of(ex, headroom);
    const bool pow2 = shift > -1000 && shift < 1000;  // 2^shift is a normal double
    const double scale = pow2 ? std::ldexp(1.0, shift) : 0.0;
    int64_t* a = acc_.data() + bl.at;  // zero (assigned above); shard by shard, in shard order
    const int n = static_cast<int>(bl.b1 - bl.b0);
    for (int s = 0; s < Sl; ++s) {
      const T* x = shards[static_cast<size_t>(s)] + bl.b0;
      if (pow2) {
        add_fixed_point(a, x, n, scale);
      } else {
        for (int i = 0; i < n; ++i) a[i] += round_half_away(std::ldexp(static_cast<double>(x[i]), shift));
      }
    }
  };
  // 3. back to floating point, once
  auto output = [&](int k, const Block& bl) {
    const int ex = exps_[static_cast<size_t>(k)];
    const int shift = ex == kZero || ex == kNonFinite ? 0 : fixed_point::shift_of(ex, headroom);
    const bool pow2 = shift > -1000 && shift < 1000;
    const double inv = pow2 ? std::ldexp(1.0, -shift) : 0.0;
    for (int64_t i = bl.b0, at = bl.at; i < bl.b1; ++i, ++at) {
      const double a = static_cast<double>(acc_[static_cast<size_t>(at)]);
      if (ex == kZero) out[i] = T(0);
      else if (ex == kNonFinite) out[i] = std::numeric_limits<T>::quiet_NaN();
      else out[i] = static_cast<T>(pow2 ? a * inv : std::ldexp(a, -shift));
    }
  };
  each_block(exponent);
  if (par.P > 1) par.comm->allreduce_max(exps_.data(), exps_.size());
  each_block(accumulate);
  if (par.P > 1) par.comm->allreduce_sum(acc_.data(), acc_.size());
  each_block(output);
}

template class ShardSum<float>;
template class ShardSum<double>;

// ---------------------------------------------------------------------------------------------
// Token exchange

template <>
std::vector<float>& ExpertExchange::tmp<float>() { return tmp_f_; }
template <>
std::vector<double>& ExpertExchange::tmp<double>() { return tmp_d_; }

void ExpertExchange::plan(const int32_t* local_offsets, Parallel& par, int layer, int width_bytes) {
  const int P = par.P, E = par.E;
  ScopedTimer w(par.dispatch_s);
  mine_.resize(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) mine_[static_cast<size_t>(e)] = local_offsets[e + 1] - local_offsets[e];
  counts_.resize(static_cast<size_t>(P) * E);
  par.comm->allgather_bytes(mine_.data(), sizeof(int32_t) * static_cast<size_t>(E), counts_.data());
  expert_rows_.assign(static_cast<size_t>(E), 0);
  for (int s = 0; s < P; ++s)
    for (int e = 0; e < E; ++e) expert_rows_[static_cast<size_t>(e)] += counts_[static_cast<size_t>(s) * E + e];
  sc_.assign(static_cast<size_t>(P), 0); sd_.assign(static_cast<size_t>(P), 0);
  rc_.assign(static_cast<size_t>(P), 0); rd_.assign(static_cast<size_t>(P), 0);
  int64_t off_rank = 0;  // rows that leave their rank, all ranks together
  for (int d = 0; d < P; ++d) {
    const int e0 = par.expert_lo[static_cast<size_t>(d)], e1 = par.expert_lo[static_cast<size_t>(d) + 1];
    sd_[static_cast<size_t>(d)] = local_offsets[e0];
    sc_[static_cast<size_t>(d)] = local_offsets[e1] - local_offsets[e0];
    for (int s = 0; s < P; ++s)
      for (int e = e0; e < e1; ++e)
        if (s != d) off_rank += counts_[static_cast<size_t>(s) * E + e];
  }
  const int lo = par.experts_lo(), hi = par.experts_hi();
  int64_t at = 0;
  for (int s = 0; s < P; ++s) {
    rd_[static_cast<size_t>(s)] = at;
    for (int e = lo; e < hi; ++e) rc_[static_cast<size_t>(s)] += counts_[static_cast<size_t>(s) * E + e];
    at += rc_[static_cast<size_t>(s)];
  }
  first_own_ = lo;
  own_offsets_.assign(static_cast<size_t>(hi - lo) + 1, 0);
  for (int e = lo; e < hi; ++e) own_offsets_[static_cast<size_t>(e - lo) + 1] = own_offsets_[static_cast<size_t>(e - lo)] + expert_rows_[static_cast<size_t>(e)];
  // four exchanges of the rows (forward there and back, backward there and back) plus the counts
  if (layer >= 0 && layer < static_cast<int>(par.layer_bytes.size()))
    par.layer_bytes[static_cast<size_t>(layer)] += 4 * off_rank * width_bytes + static_cast<int64_t>(P) * (P - 1) * E * 4;
}

void ExpertExchange::scale(int W) {
  const size_t P = sc_.size();
  sc_w_.resize(P); sd_w_.resize(P); rc_w_.resize(P); rd_w_.resize(P);
  for (size_t r = 0; r < P; ++r) {
    sc_w_[r] = sc_[r] * W; sd_w_[r] = sd_[r] * W; rc_w_[r] = rc_[r] * W; rd_w_[r] = rd_[r] * W;
  }
}

template <class T>
void ExpertExchange::permute(const T* from, T* to, int W, bool to_canonical) {
  // recv layout: source-major (s, e, rows); canonical: expert-major (e, s, rows)
  const int P = static_cast<int>(rc_.size());
  const int n_own = static_cast<int>(own_offsets_.size()) - 1;
  const int E = static_cast<int>(expert_rows_.size());
  std::vector<int64_t>& cur = cur_;  // per own expert: next canonical row
  cur.assign(static_cast<size_t>(n_own), 0);
  for (int j = 0; j < n_own; ++j) cur[static_cast<size_t>(j)] = own_offsets_[static_cast<size_t>(j)];
  for (int s = 0; s < P; ++s) {
    int64_t r = rd_[static_cast<size_t>(s)];
    for (int j = 0; j < n_own; ++j) {
      const int e = first_own_ + j;
      const int64_t n = counts_[static_cast<size_t>(s) * E + e];
      if (n == 0) continue;
      const T* src = to_canonical ? from + r * W : from + cur[static_cast<size_t>(j)] * W;
      T* dst = to_canonical ? to + cur[static_cast<size_t>(j)] * W : to + r * W;
      std::memcpy(dst, src, static_cast<size_t>(n) * W * sizeof(T));
      r += n;
      cur[static_cast<size_t>(j)] += n;
    }
  }
}

template <class T>
void ExpertExchange::dispatch(const T* local, T* own, int W, Parallel& par) {
  ScopedTimer w(par.dispatch_s);
  std::vector<T>& buf = tmp<T>();
  buf.resize(static_cast<size_t>(own_rows()) * W);
  scale(W);
  par.comm->alltoallv(local, sc_w_.data(), sd_w_.data(), buf.data(), rc_w_.data(), rd_w_.data());
  permute(buf.data(), own, W, true);
}

template <class T>
void ExpertExchange::give_back(const T* own, T* local, int W, Parallel& par) {
  ScopedTimer w(par.dispatch_s);
  std::vector<T>& buf = tmp<T>();
  buf.resize(static_cast<size_t>(own_rows()) * W);
  permute(own, buf.data(), W, false);
  scale(W);
  par.comm->alltoallv(buf.data(), rc_w_.data(), rd_w_.data(), local, sc_w_.data(), sd_w_.data());
}

template void ExpertExchange::dispatch<float>(const float*, float*, int, Parallel&);
template void ExpertExchange::dispatch<double>(const double*, double*, int, Parallel&);
template void ExpertExchange::give_back<float>(const float*, float*, int, Parallel&);
template void ExpertExchange::give_back<double>(const double*, double*, int, Parallel&);

}  // namespace hyperrnn
