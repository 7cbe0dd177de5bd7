// CUDA versions of the CPU ops of src/nn (ops.hpp, adamw.hpp) on device pointers, float, on the
// current device's default stream, and cuBLAS GEMMs. Each mirrors its CPU op's arguments and
// accumulation rule (parameter gradients +=, activation gradients =, layernorm's dinp +=).
// Determinism: every reduction has a fixed order (one block per row, a fixed shared-memory tree;
// column sums row by row), no floating-point atomics, so a kernel gives the same bits on every
// run on the same GPU model. Values are not the CPU's bits (a different order and CUDA's erff and
// expf): tests/gpu checks them against the CPU ops within derived error bounds.
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace hyperrnn {
class Comm;
}

namespace hyperrnn::cuda {

// Throws std::runtime_error naming `what` when the last CUDA call or launch failed.
void check(const char* what);
void synchronize();

// Device memory of n elements of T (RAII); upload/download copy whole host vectors.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  T* data() { return p_; }
  const T* data() const { return p_; }
  std::size_t size() const { return n_; }
  void upload(const std::vector<T>& host);  // host.size() == size()
  std::vector<T> download() const;

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

void gelu_forward_grad(float* out, float* grad, const float* inp, int64_t n);
void gelu_backward_cached(float* dinp, const float* dout, const float* grad, int64_t n);
void residual_forward(float* out, const float* a, const float* b, int64_t n);
void embedding_forward(float* out, const int32_t* inp, const float* wte, const float* wpe, int B, int Tn, int C);
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                       int N, int C);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C);
// losses (N): each row's loss; the CPU op's returned sum is the host's sum of them.
void crossentropy_forward(float* losses, float* probs, const float* logits, const int32_t* targets, int N, int V);
void crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, float scale, int N, int V);
// One AdamW block with its tensor's constants (nn::AdamW::step computes them on the host).
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, float b1, float b2, float eps,
                  float step_size, float decay, float sqrt_bc2);

// cuBLAS on the current device, pure FP32 (no TF32) unless tf32; row-major operands as the CPU's
// core/blas.hpp gemm: C (M,N) = alpha op(A) op(B) + beta C.
class Blas {
 public:
  explicit Blas(bool tf32 = false);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;
  void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
            int ldb, float beta, float* C, int ldc);
  // `batch` products at fixed strides (elements) between consecutive A, B and C.
  void gemm_strided_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                            int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta, float* C, int ldc,
                            int64_t stride_c, int batch);

 private:
  void* handle_ = nullptr;
};

// out = inp weight^T + bias (bias may be null), as nn::linear_forward.
void linear_forward(Blas& blas, float* out, const float* inp, const float* weight, const float* bias, int N, int IC,
                    int OC);

// The MoE router's top-k and its softmax over the chosen scores, as nn::topk_softmax_forward and
// _backward: one thread per row (E is small); the forward runs the CPU op's own row code
// (nn/topk.hpp), the backward the same double sums in the same order.
void topk_softmax_forward(int32_t* idx, float* gates, const float* scores, int N, int E, int K);
void topk_softmax_backward(float* dscores, const float* dgates, const float* gates, const int32_t* idx, int N, int E,
                           int K);

// Multi-head self-attention on packed q|k|v, as nn::attention_forward/backward without dropout:
// the per-head GEMMs as strided batches over the heads (one call per sample and product), the row
// softmax (causal rows stop at the diagonal) and its backward as row kernels.
void attention_forward(Blas& blas, float* out, float* att, const float* qkv, int B, int Tn, int C, int H, bool causal);
void attention_backward(Blas& blas, float* dqkv, float* datt, const float* dout, const float* qkv, const float* att,
                        int B, int Tn, int C, int H, bool causal);

// The diagonal-Gaussian router's log-likelihood scores, as nn::gaussian_scores_forward and
// _backward (one routing set): w = exp(-2 log_sigma), m = mu w and the per-expert constant c in
// double per expert in the CPU's order, x^2, and the score GEMMs on cuBLAS; the backward's GEMMs on
// cuBLAS, the column sums of G in double row by row (the CPU's order), and the parameter
// gradients with the CPU's expressions (+=). scratch_ec: 3 E C + E floats.
void gaussian_scores_forward(Blas& blas, float* scores, float* w, float* m, float* c, float* inp_sq, const float* inp,
                             const float* mu, const float* log_sigma, int N, int C, int E);
void gaussian_scores_backward(Blas& blas, float* dinp, float* dmu, float* dlog_sigma, float* scratch_ec, const float* dscores,
                              const float* inp, const float* inp_sq, const float* mu, const float* w, const float* m, int N,
                              int C, int E);

// RWKV-7's recurrence forward (nn::wkv7_forward, one sequence): one CUDA block per head and one
// thread per state row, the CPU's float expressions in its order (the decay through CUDA's expf,
// hence not the CPU's bits); checkpoints every d_chunk tokens as the CPU's; state0 / state_out may
// be null. N <= 64.
void wkv7_forward(float* y, float* checkpoints, const float* r, const float* u, const float* k, const float* v, const float* a,
                  const float* b, int T, int H, int N, int chunk, const float* state0, float* state_out);

// Dropout (nn/dropout.hpp) on the device: the mask bytes are the CPU's (the same Philox words of
// the stream (seed, purpose, step, index), core/philox.hpp, against the same threshold), and the
// application is the CPU's one product per element, so masks and results are bitwise the CPU's.
void dropout_mask(uint8_t* keep, int64_t n, uint64_t seed, uint32_t purpose, uint32_t step, uint32_t index, uint32_t threshold);
void dropout_forward(float* out, const float* inp, const uint8_t* keep, float scale, int64_t n);
void dropout_backward(float* dinp, const float* dout, const uint8_t* keep, float scale, int64_t n);

// The MoE dispatch and combine (nn/moe.cpp) on the device. All integer or the CPU's float
// operations in the CPU's order, so bitwise the CPU's. Dynamic top-k: sample_k (one k in [1, K] per
// sample of sample_tokens tokens; null = K for every token), whose slots beyond k are inactive
// (no row, pos -1, gate 0), as MoeDims::k_of.
// - topk_dynamic_gates: after topk_softmax_forward, the softmax over each token's first k chosen
//   scores when its k is below K (double exps and sum, as the CPU), the other slots 0;
// - moe_dispatch: the stable counting sort of the active (token, slot) pairs by expert in (token,
//   slot) order: offsets (E + 1; offsets[E] = the active pairs), tok (the token of each dispatched
//   row), pos (N, K: the row of each pair, -1 if inactive); then xs, the gathered input rows;
// - moe_combine: out = sum over the token's k slots, in slot order, of gate * y;
// - moe_combine_backward: dy = gate * dout and dgate = <dout, y> in double in lanes.hpp's order
//   (dgate 0 for an inactive slot);
// - moe_scatter_add: dinp += each token's rows of dxs in ascending row order.
void topk_dynamic_gates(float* gates, const float* scores, const int32_t* idx, int N, int E, int K, const int32_t* sample_k,
                        int sample_tokens);
void moe_dispatch(int32_t* offsets, int32_t* tok, int32_t* pos, float* xs, const int32_t* idx, const float* inp, int N, int K,
                  int E, int C, const int32_t* sample_k = nullptr, int sample_tokens = 1);
void moe_combine(float* out, const float* ys, const float* gates, const int32_t* pos, int N, int K, int C,
                 const int32_t* sample_k = nullptr, int sample_tokens = 1);
void moe_combine_backward(float* dys, float* dgates, const float* dout, const float* ys, const float* gates, const int32_t* pos,
                          int N, int K, int C, const int32_t* sample_k = nullptr, int sample_tokens = 1);
void moe_scatter_add(float* dinp, const float* dxs, const int32_t* pos, int N, int K, int C);

// The reproducible shard sum on the device: the CPU's ShardSum (parallel/layout.cpp) with the same
// blocks of 256 over `ranges`, the same block exponents (the largest magnitude over every rank's
// shards), the same fixed-point integers (parallel/fixed_point.hpp) and the same conversion back,
// hence the same bits as the CPU for the same shard values, whatever P. `shards`: this rank's
// device buffers in shard order; S: the shard count over all ranks; comm: the ranks' Comm
// (nullptr for one rank). Its maximum and integer sum get device arrays, so with more than one
// rank it must be the NCCL Comm (mpi/comm_nccl.hpp), which reduces them in place.
void shard_sum(float* out, const std::vector<const float*>& shards, const std::vector<std::pair<int64_t, int64_t>>& ranges,
               int S, Comm* comm);

}  // namespace hyperrnn::cuda
