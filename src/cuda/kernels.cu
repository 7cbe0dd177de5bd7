// CUDA kernels of kernels.hpp. Reductions: kThreads threads per row, each summing a strided
// subset in a fixed order (double, as the CPU ops), then a fixed shared-memory tree.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "core/philox.hpp"
#include "cuda/kernels.hpp"
#include "mpi/comm.hpp"
#include "nn/gaussian_router.hpp"
#include "nn/lanes.hpp"
#include "nn/topk.hpp"
#include "nn/wkv7.hpp"
#include "parallel/fixed_point.hpp"

namespace hyperrnn::cuda {

namespace {
constexpr int kThreads = 256;  // per block of the row kernels (a power of two: the tree below)

int grid_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8)); }

// The block's sum of v over its kThreads threads, the same tree every time; every thread gets it.
__device__ double block_sum(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

__device__ float block_max(float v, float* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
    __syncthreads();
  }
  const float r = sh[0];
  __syncthreads();
  return r;
}

__global__ void k_gelu_forward_grad(float* out, float* grad, const float* inp, int64_t n) {
  const float inv_sqrt2 = 0.70710678118654752f, inv_sqrt2pi = 0.39894228040143268f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = inp[i];
    const float e = erff(x * inv_sqrt2);
    out[i] = 0.5f * x * (1.0f + e);
    grad[i] = 0.5f * (1.0f + e) + x * inv_sqrt2pi * expf(-0.5f * x * x);
  }
}

__global__ void k_mul(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = a[i] * b[i];
}

__global__ void k_add(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}

__global__ void k_embedding_forward(float* out, const int32_t* inp, const float* wte, const float* wpe, int Tn, int C,
                                    int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / C, c = i % C;
    out[i] = wte[int64_t(inp[row]) * C + c] + wpe[(row % Tn) * C + c];
  }
}

__global__ void k_layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                                    const float* b, int C) {
  __shared__ double sh[kThreads];
  const float* x = inp + int64_t(blockIdx.x) * C;
  double s = 0.0;
  for (int i = threadIdx.x; i < C; i += kThreads) s += x[i];
  const double m = block_sum(s, sh) / C;
  double q = 0.0;
  for (int i = threadIdx.x; i < C; i += kThreads) q += (x[i] - m) * (x[i] - m);
  const double r = 1.0 / sqrt(block_sum(q, sh) / C + 1e-5);
  float* o = out + int64_t(blockIdx.x) * C;
  for (int i = threadIdx.x; i < C; i += kThreads) o[i] = static_cast<float>((x[i] - m) * r) * w[i] + b[i];
  if (threadIdx.x == 0) mean[blockIdx.x] = static_cast<float>(m), rstd[blockIdx.x] = static_cast<float>(r);
}

__global__ void k_layernorm_backward_input(float* dinp, const float* dout, const float* inp, const float* w,
                                           const float* mean, const float* rstd, int C) {
  __shared__ double sh[kThreads];
  const int64_t off = int64_t(blockIdx.x) * C;
  const float mn = mean[blockIdx.x], rs = rstd[blockIdx.x];
  double a = 0.0, bsum = 0.0;
  for (int i = threadIdx.x; i < C; i += kThreads) {
    const double dn = double(w[i]) * dout[off + i];
    a += dn;
    bsum += dn * double((inp[off + i] - mn) * rs);
  }
  const double mdn = block_sum(a, sh) / C, mdnx = block_sum(bsum, sh) / C;
  for (int i = threadIdx.x; i < C; i += kThreads) {
    const double xhat = (inp[off + i] - mn) * rs;
    const double dn = double(w[i]) * dout[off + i];
    dinp[off + i] += static_cast<float>(rs * (dn - mdn - xhat * mdnx));
  }
}

// Column sums over the N rows, row by row (one thread per column: a fixed order, coalesced rows).
__global__ void k_layernorm_backward_params(float* dw, float* db, const float* dout, const float* inp,
                                            const float* mean, const float* rstd, int N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double sw = 0.0, sb = 0.0;
  for (int n = 0; n < N; ++n) {
    const float d = dout[int64_t(n) * C + c];
    const double xhat = (inp[int64_t(n) * C + c] - mean[n]) * rstd[n];
    sb += d;
    sw += xhat * d;
  }
  dw[c] += static_cast<float>(sw);
  db[c] += static_cast<float>(sb);
}

__global__ void k_crossentropy_forward(float* losses, float* probs, const float* logits, const int32_t* targets, int V) {
  __shared__ double sh[kThreads];
  __shared__ float shf[kThreads];
  const int64_t off = int64_t(blockIdx.x) * V;
  float mx = -INFINITY;
  for (int v = threadIdx.x; v < V; v += kThreads) mx = fmaxf(mx, logits[off + v]);
  mx = block_max(mx, shf);
  double s = 0.0;
  for (int v = threadIdx.x; v < V; v += kThreads) {
    const float e = expf(logits[off + v] - mx);
    probs[off + v] = e;
    s += e;
  }
  s = block_sum(s, sh);
  const float inv = static_cast<float>(1.0 / s);
  for (int v = threadIdx.x; v < V; v += kThreads) probs[off + v] *= inv;
  if (threadIdx.x == 0) losses[blockIdx.x] = static_cast<float>(log(s) + double(mx) - double(logits[off + targets[blockIdx.x]]));
}

__global__ void k_crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, float scale, int V,
                                        int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / V;
    const int v = static_cast<int>(i % V);
    dlogits[i] = scale * probs[i] - (v == targets[row] ? scale : 0.0f);
  }
}

__global__ void k_adamw(float* p, const float* g, float* m, float* v, int64_t n, float b1, float b2, float eps,
                        float step_size, float decay, float sqrt_bc2) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float pi = p[i] * decay;
    const float mi = b1 * m[i] + (1.0f - b1) * g[i];
    const float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
    pi -= step_size * mi / (sqrtf(vi) / sqrt_bc2 + eps);
    p[i] = pi, m[i] = mi, v[i] = vi;
  }
}

__global__ void k_add_bias(float* out, const float* bias, int OC, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] += bias[i % OC];
}

// One row of a (Tn, Tn) score block per block of threads: in place, as nn's softmax_block.
__global__ void k_softmax_rows(float* p, int Tn, bool causal) {
  __shared__ double sh[kThreads];
  __shared__ float shf[kThreads];
  float* row = p + int64_t(blockIdx.x) * Tn;
  const int jmax = causal ? static_cast<int>(blockIdx.x % Tn) + 1 : Tn;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < jmax; j += kThreads) mx = fmaxf(mx, row[j]);
  mx = block_max(mx, shf);
  double s = 0.0;
  for (int j = threadIdx.x; j < jmax; j += kThreads) {
    const float e = expf(row[j] - mx);
    row[j] = e;
    s += e;
  }
  const float inv = static_cast<float>(1.0 / block_sum(s, sh));
  for (int j = threadIdx.x; j < Tn; j += kThreads) row[j] = j < jmax ? row[j] * inv : 0.0f;
}

// dZ = P (dP - rowsum(P dP)) in place, as nn's softmax_backward_block.
__global__ void k_softmax_backward_rows(float* dp, const float* p, int Tn, bool causal) {
  __shared__ double sh[kThreads];
  const int64_t off = int64_t(blockIdx.x) * Tn;
  const int jmax = causal ? static_cast<int>(blockIdx.x % Tn) + 1 : Tn;
  double s = 0.0;
  for (int j = threadIdx.x; j < jmax; j += kThreads) s += double(p[off + j]) * dp[off + j];
  s = block_sum(s, sh);
  for (int j = threadIdx.x; j < Tn; j += kThreads)
    dp[off + j] = j < jmax ? static_cast<float>(p[off + j] * (dp[off + j] - s)) : 0.0f;
}

__global__ void k_topk_softmax_forward(int32_t* idx, float* gates, const float* scores, int N, int E, int K) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  nn::topk_softmax_row(idx + int64_t(n) * K, gates + int64_t(n) * K, scores + int64_t(n) * E, E, K);
}

__global__ void k_topk_softmax_backward(float* dscores, const float* dgates, const float* gates, const int32_t* idx,
                                        int N, int E, int K) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  nn::topk_softmax_backward_row(dscores + int64_t(n) * E, dgates + int64_t(n) * K, gates + int64_t(n) * K, idx + int64_t(n) * K, E, K);
}

const char* cublas_text(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialised";
    case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "error";
  }
}

void cublas_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(std::string("cuBLAS ") + what + ": " + cublas_text(s));
}
// Gaussian router: per expert (one thread each; E is small) w, m and c, the CPU's expressions and
// its left-to-right double sum over the channels.
__global__ void k_gaussian_wmc(float* w, float* m, float* c, const float* mu, const float* log_sigma, int C, int E) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= E) return;
  const int64_t o = int64_t(e) * C;
  c[e] = nn::gaussian_expert_wmc(w + o, m + o, mu + o, log_sigma + o, C);
}

__global__ void k_rows_of(float* out, const float* row, int E, int64_t n) {  // out (N,E) = row on every row
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) out[i] = row[i % E];
}

__global__ void k_column_sums(float* gs, const float* g, int N, int E) {  // double, row by row (the CPU's order)
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= E) return;
  double s = 0.0;
  for (int n = 0; n < N; ++n) s += g[int64_t(n) * E + e];
  gs[e] = static_cast<float>(s);
}

__global__ void k_gaussian_param_grads(float* dmu, float* dls, const float* w, const float* mu, const float* gx, const float* gx2,
                                       const float* gs, int C, int64_t n) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x) {
    nn::gaussian_param_grad(dmu[k], dls[k], w[k], mu[k], gx[k], gx2[k], gs[k / C]);
  }
}

__global__ void k_sub_mul(float* out, const float* a, const float* b, int64_t n) {  // out -= a b
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) out[i] -= a[i] * b[i];
}

// wkv7: block h, thread i holds row i of head h's state. Per token: the decays, a, b, k and r of
// the head in shared memory; sa_i = sum_j S_ij a_j, then S_ij = S_ij w_j + (sa_i b_j + k_j v_i) and
// y_i = sum_j S_ij r_j, left to right, as the CPU's head_step.
constexpr int kWkvMaxN = 64;
__global__ void k_wkv7_forward(float* y, float* ckpt, const float* r, const float* u, const float* k, const float* v,
                               const float* a, const float* b, int T, int H, int N, int chunk, const float* state0,
                               float* state_out) {
  __shared__ float sw[kWkvMaxN], sa_[kWkvMaxN], sb[kWkvMaxN], sk[kWkvMaxN], sr[kWkvMaxN];
  const int h = blockIdx.x, i = threadIdx.x;
  const int64_t HN = int64_t(H) * N, NN = int64_t(N) * N, SS = HN * N;
  float row[kWkvMaxN];
  for (int j = 0; j < N; ++j) row[j] = state0 ? state0[h * NN + int64_t(i) * N + j] : 0.0f;
  const float scale = static_cast<float>(nn::kWkvDecayScale);  // as nn::wkv7_decay
  for (int t = 0; t < T; ++t) {
    if (t % chunk == 0)
      for (int j = 0; j < N; ++j) ckpt[(t / chunk) * SS + h * NN + int64_t(i) * N + j] = row[j];
    const int64_t o = t * HN + int64_t(h) * N;
    __syncthreads();  // the previous token's shared values are no longer read
    const float s = 1.0f / (1.0f + expf(-u[o + i]));
    sw[i] = expf(scale * s);
    sa_[i] = a[o + i], sb[i] = b[o + i], sk[i] = k[o + i], sr[i] = r[o + i];
    __syncthreads();
    float sa = 0.0f;
    for (int j = 0; j < N; ++j) sa += row[j] * sa_[j];
    const float vi = v[o + i];
    float yi = 0.0f;
    for (int j = 0; j < N; ++j) {
      const float st = row[j] * sw[j] + (sa * sb[j] + sk[j] * vi);
      row[j] = st;
      yi += st * sr[j];
    }
    y[o + i] = yi;
  }
  if (state_out)
    for (int j = 0; j < N; ++j) state_out[h * NN + int64_t(i) * N + j] = row[j];
}

// One thread per Philox block: words 4 b .. 4 b + 3 of the stream, each against the threshold.
__global__ void k_dropout_mask(uint8_t* keep, int64_t n, uint32_t k0, uint32_t k1, uint32_t purpose, uint32_t step,
                               uint32_t index, uint32_t threshold) {
  const uint32_t key[2] = {k0, k1};
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < blocks; b += int64_t(gridDim.x) * blockDim.x) {
    uint32_t c[4] = {static_cast<uint32_t>(b), index, step, purpose};  // CounterRng's counter layout
    philox::block(c, key);
    for (int j = 0; j < 4 && 4 * b + j < n; ++j) keep[4 * b + j] = c[j] >= threshold ? 1 : 0;
  }
}

__global__ void k_dropout_apply(float* out, const float* inp, const uint8_t* keep, float scale, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = keep[i] ? inp[i] * scale : 0.0f;
}

// MoE dispatch: the (token, slot) pairs in chunks of kThreads. Per chunk, each expert's count;
// then, per expert, the chunks' bases (offsets[e] + the counts of the chunks before); then each
// pair's row = its chunk's base for its expert + the pairs of that expert before it in the chunk.
// The pair's expert, or -1 for a slot beyond its token's k (dynamic top-k: sample_k per sample of
// sample_tokens tokens; null = every slot active).
__device__ int32_t active_expert(const int32_t* idx, int64_t p, int64_t pairs, int K, const int32_t* sample_k, int sample_tokens) {
  if (p >= pairs) return -1;
  if (sample_k && p % K >= sample_k[(p / K) / sample_tokens]) return -1;
  return idx[p];
}

__device__ int k_of_token(int64_t n, int K, const int32_t* sample_k, int sample_tokens) {
  return sample_k ? sample_k[n / sample_tokens] : K;
}

__global__ void k_moe_chunk_counts(int32_t* counts, const int32_t* idx, int64_t pairs, int E, int K, const int32_t* sample_k,
                                   int sample_tokens) {
  __shared__ int32_t sh[kThreads];
  const int64_t p = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  sh[threadIdx.x] = active_expert(idx, p, pairs, K, sample_k, sample_tokens);
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += kThreads) {
    int32_t c = 0;
    for (int t = 0; t < kThreads; ++t) c += sh[t] == e;
    counts[int64_t(blockIdx.x) * E + e] = c;
  }
}

__global__ void k_moe_bases(int32_t* base, int32_t* offsets, int chunks, int E) {  // one block
  __shared__ int32_t total[1024];
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int32_t run = 0;
    for (int ch = 0; ch < chunks; ++ch) {
      const int32_t c = base[int64_t(ch) * E + e];
      base[int64_t(ch) * E + e] = run;
      run += c;
    }
    total[e] = run;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    offsets[0] = 0;
    for (int e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + total[e];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    for (int ch = 0; ch < chunks; ++ch) base[int64_t(ch) * E + e] += offsets[e];
}

__global__ void k_moe_rows(int32_t* tok, int32_t* pos, const int32_t* base, const int32_t* idx, int64_t pairs, int K, int E,
                           const int32_t* sample_k, int sample_tokens) {
  __shared__ int32_t sh[kThreads];
  const int64_t p = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const int32_t e = active_expert(idx, p, pairs, K, sample_k, sample_tokens);
  sh[threadIdx.x] = e;
  __syncthreads();
  if (p >= pairs) return;
  if (e < 0) {  // an inactive slot: no row
    pos[p] = -1;
    return;
  }
  int32_t rank = 0;
  for (int t = 0; t < static_cast<int>(threadIdx.x); ++t) rank += sh[t] == e;
  const int32_t a = base[int64_t(blockIdx.x) * E + e] + rank;
  tok[a] = static_cast<int32_t>(p / K);
  pos[p] = a;
}

// Dynamic top-k: tokens whose k is below K take the softmax over their first k chosen scores (the
// CPU's expressions: float differences, double exps and sum), the other slots gate 0.
__global__ void k_dynamic_gates(float* gates, const float* scores, const int32_t* idx, int N, int E, int K, const int32_t* sample_k,
                                int sample_tokens) {
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < N; n += int64_t(gridDim.x) * blockDim.x) {
    const int k = sample_k[n / sample_tokens];
    if (k < K) nn::dynamic_gates_row(gates + n * K, scores + n * E, idx + n * K, k, K);
  }
}

__global__ void k_moe_gather(float* xs, const float* inp, const int32_t* tok, const int32_t* offsets, int E, int64_t capacity, int C) {
  const int64_t rows = offsets[E];  // the active pairs (capacity N K with a fixed top-k)
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < capacity * C; i += int64_t(gridDim.x) * blockDim.x)
    if (i / C < rows) xs[i] = inp[int64_t(tok[i / C]) * C + i % C];
}

__global__ void k_moe_combine(float* out, const float* ys, const float* gates, const int32_t* pos, int N, int K, int C,
                              const int32_t* sample_k, int sample_tokens) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < int64_t(N) * C; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    float o = 0.0f;  // the CPU's o = 0, then o += g y slot by slot over the token's k slots
    for (int j = 0, k = k_of_token(n, K, sample_k, sample_tokens); j < k; ++j) o += gates[n * K + j] * ys[int64_t(pos[n * K + j]) * C + c];
    out[i] = o;
  }
}

__global__ void k_moe_combine_backward(float* dys, float* dgates, const float* dout, const float* ys, const float* gates,
                                       const int32_t* pos, int64_t pairs, int K, int C, const int32_t* sample_k, int sample_tokens) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < pairs; p += int64_t(gridDim.x) * blockDim.x) {
    if (p % K >= k_of_token(p / K, K, sample_k, sample_tokens)) {  // inactive slot: gate 0, no gradient (the CPU's j >= k)
      dgates[p] = 0.0f;
      continue;
    }
    const float g = gates[p];
    const float* dn = dout + (p / K) * C;
    const float* y = ys + int64_t(pos[p]) * C;
    float* dy = dys + int64_t(pos[p]) * C;
    for (int i = 0; i < C; ++i) dy[i] = g * dn[i];
    dgates[p] = static_cast<float>(nn::lane_sum(C, [&](int i) { return static_cast<double>(dn[i]) * y[i]; }));
  }
}

__global__ void k_moe_scatter_add(float* dinp, const float* dxs, const int32_t* pos, int N, int K, int C) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < int64_t(N) * C; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    int32_t rows[16];  // K <= 16: the token's rows in ascending order, as the CPU sorts them
    int cnt = 0;
    for (int j = 0; j < K; ++j) {
      const int32_t a = pos[n * K + j];
      if (a < 0) continue;
      int at = cnt++;
      while (at > 0 && rows[at - 1] > a) {
        rows[at] = rows[at - 1];
        --at;
      }
      rows[at] = a;
    }
    float o = dinp[i];
    for (int r = 0; r < cnt; ++r) o += dxs[int64_t(rows[r]) * C + c];
    dinp[i] = o;
  }
}

// The shard sum's blocks: [b0, b1) of the output, and `at`, the block's first accumulator.
struct SumBlock {
  int64_t b0, b1, at;
};

// Stage 1, one CUDA block per sum block (kThreads >= its 256 elements): the largest |v| over the
// rank's shards as an unsigned max of the bit patterns with the sign cleared (the CPU's order: inf
// and NaN above the largest finite), then the block's exponent as the CPU takes it (frexp).
__global__ void k_shard_exponents(int* exps, const float* const* shards, int Sl, const SumBlock* blocks) {
  __shared__ unsigned int sh[kThreads];
  const SumBlock bl = blocks[blockIdx.x];
  unsigned int m = 0;
  const int64_t i = bl.b0 + threadIdx.x;
  if (i < bl.b1)
    for (int s = 0; s < Sl; ++s) {
      const unsigned int u = __float_as_uint(shards[s][i]) & 0x7fffffffu;
      m = u > m ? u : m;
    }
  sh[threadIdx.x] = m;
  __syncthreads();
  for (int st = kThreads / 2; st > 0; st >>= 1) {
    if (threadIdx.x < st) sh[threadIdx.x] = sh[threadIdx.x + st] > sh[threadIdx.x] ? sh[threadIdx.x + st] : sh[threadIdx.x];
    __syncthreads();
  }
  if (threadIdx.x == 0) exps[blockIdx.x] = fixed_point::block_exponent(static_cast<double>(__uint_as_float(sh[0])), sh[0] > 0x7f7fffffu);
}

// Stage 2: each value on its block's grid, summed exactly over the shards in shard order.
__global__ void k_shard_fixed_point(long long* acc, const float* const* shards, int Sl, const SumBlock* blocks,
                                    const int* exps, int head) {
  const SumBlock bl = blocks[blockIdx.x];
  const int ex = exps[blockIdx.x];
  const int64_t i = bl.b0 + threadIdx.x;
  if (i >= bl.b1 || ex == fixed_point::kZero || ex == fixed_point::kNonFinite) return;
  const int shift = fixed_point::shift_of(ex, head);
  const bool pow2 = shift > -1000 && shift < 1000;
  const double scale = pow2 ? ldexp(1.0, shift) : 0.0;
  long long a = 0;
  for (int s = 0; s < Sl; ++s) {
    const double x = static_cast<double>(shards[s][i]);
    a += fixed_point::round_half_away(pow2 ? x * scale : ldexp(x, shift));
  }
  acc[bl.at + threadIdx.x] = a;
}

// Stage 3: back to float, once.
__global__ void k_shard_to_float(float* out, const long long* acc, const SumBlock* blocks, const int* exps, int head) {
  const SumBlock bl = blocks[blockIdx.x];
  const int ex = exps[blockIdx.x];
  const int64_t i = bl.b0 + threadIdx.x;
  if (i >= bl.b1) return;
  const int shift = ex == fixed_point::kZero || ex == fixed_point::kNonFinite ? 0 : fixed_point::shift_of(ex, head);
  const bool pow2 = shift > -1000 && shift < 1000;
  const double inv = pow2 ? ldexp(1.0, -shift) : 0.0;
  const double a = static_cast<double>(acc[bl.at + threadIdx.x]);
  if (ex == fixed_point::kZero) out[i] = 0.0f;
  else if (ex == fixed_point::kNonFinite) out[i] = __int_as_float(0x7fc00000);  // quiet NaN
  else out[i] = static_cast<float>(pow2 ? a * inv : ldexp(a, -shift));
}
}  // namespace

void check(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

void synchronize() {
  cudaDeviceSynchronize();
  check("cudaDeviceSynchronize");
}

template <class T>
DeviceBuffer<T>::DeviceBuffer(std::size_t n) : n_(n) {
  if (n && cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)) != cudaSuccess) {
    p_ = nullptr;
    check(("cudaMalloc of " + std::to_string(n * sizeof(T)) + " bytes").c_str());
  }
}

template <class T>
DeviceBuffer<T>::~DeviceBuffer() {
  if (p_) cudaFree(p_);
}

template <class T>
void DeviceBuffer<T>::upload(const std::vector<T>& host) {
  if (host.size() != n_) throw std::runtime_error("DeviceBuffer::upload: size mismatch");
  cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice);
  check("cudaMemcpy to the device");
}

template <class T>
std::vector<T> DeviceBuffer<T>::download() const {
  std::vector<T> host(n_);
  cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
  check("cudaMemcpy to the host");
  return host;
}

template class DeviceBuffer<float>;
template class DeviceBuffer<double>;
template class DeviceBuffer<int32_t>;
template class DeviceBuffer<int64_t>;
template class DeviceBuffer<uint8_t>;
template class DeviceBuffer<SumBlock>;
template class DeviceBuffer<const float*>;

void gelu_forward_grad(float* out, float* grad, const float* inp, int64_t n) {
  k_gelu_forward_grad<<<grid_for(n), kThreads>>>(out, grad, inp, n);
  check("gelu_forward_grad");
}

void gelu_backward_cached(float* dinp, const float* dout, const float* grad, int64_t n) {
  k_mul<<<grid_for(n), kThreads>>>(dinp, grad, dout, n);
  check("gelu_backward_cached");
}

void residual_forward(float* out, const float* a, const float* b, int64_t n) {
  k_add<<<grid_for(n), kThreads>>>(out, a, b, n);
  check("residual_forward");
}

void embedding_forward(float* out, const int32_t* inp, const float* wte, const float* wpe, int B, int Tn, int C) {
  const int64_t n = int64_t(B) * Tn * C;
  k_embedding_forward<<<grid_for(n), kThreads>>>(out, inp, wte, wpe, Tn, C, n);
  check("embedding_forward");
}

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                       int N, int C) {
  if (N == 0) return;
  k_layernorm_forward<<<N, kThreads>>>(out, mean, rstd, inp, weight, bias, C);
  check("layernorm_forward");
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int N, int C) {
  if (N == 0) return;
  k_layernorm_backward_input<<<N, kThreads>>>(dinp, dout, inp, weight, mean, rstd, C);
  check("layernorm_backward (input)");
  if (dweight) {
    k_layernorm_backward_params<<<(C + 127) / 128, 128>>>(dweight, dbias, dout, inp, mean, rstd, N, C);
    check("layernorm_backward (parameters)");
  }
}

void crossentropy_forward(float* losses, float* probs, const float* logits, const int32_t* targets, int N, int V) {
  if (N == 0) return;
  k_crossentropy_forward<<<N, kThreads>>>(losses, probs, logits, targets, V);
  check("crossentropy_forward");
}

void crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, float scale, int N, int V) {
  const int64_t n = int64_t(N) * V;
  k_crossentropy_backward<<<grid_for(n), kThreads>>>(dlogits, probs, targets, scale, V, n);
  check("crossentropy_backward");
}

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, float b1, float b2, float eps,
                  float step_size, float decay, float sqrt_bc2) {
  k_adamw<<<grid_for(n), kThreads>>>(p, g, m, v, n, b1, b2, eps, step_size, decay, sqrt_bc2);
  check("adamw_update");
}

Blas::Blas(bool tf32) {
  cublasHandle_t h = nullptr;
  cublas_check(cublasCreate(&h), "create");
  handle_ = h;
  cublas_check(cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH), "math mode");
}

Blas::~Blas() {
  if (handle_) cublasDestroy(static_cast<cublasHandle_t>(handle_));
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
void Blas::gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                int ldb, float beta, float* C, int ldc) {
  cublas_check(cublasSgemm(static_cast<cublasHandle_t>(handle_), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                           trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc),
               "sgemm");
}

void topk_softmax_forward(int32_t* idx, float* gates, const float* scores, int N, int E, int K) {
  if (N == 0) return;
  k_topk_softmax_forward<<<(N + 127) / 128, 128>>>(idx, gates, scores, N, E, K);
  check("topk_softmax_forward");
}

void topk_softmax_backward(float* dscores, const float* dgates, const float* gates, const int32_t* idx, int N, int E,
                           int K) {
  if (N == 0) return;
  k_topk_softmax_backward<<<(N + 127) / 128, 128>>>(dscores, dgates, gates, idx, N, E, K);
  check("topk_softmax_backward");
}

void Blas::gemm_strided_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                                int64_t stride_a, const float* B, int ldb, int64_t stride_b, float beta, float* C,
                                int ldc, int64_t stride_c, int batch) {
  cublas_check(cublasSgemmStridedBatched(static_cast<cublasHandle_t>(handle_), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                         trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb, stride_b, A, lda,
                                         stride_a, &beta, C, ldc, stride_c, batch),
               "sgemm (strided batched)");
}

void attention_forward(Blas& blas, float* out, float* att, const float* qkv, int B, int Tn, int C, int H, bool causal) {
  const int hs = C / H, ld = 3 * C;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hs)));
  const int64_t TT = int64_t(Tn) * Tn;
  for (int b = 0; b < B; ++b) {  // heads h at column h hs of q, k and v; their score blocks one after another
    const float* q = qkv + int64_t(b) * Tn * ld;
    float* p = att + int64_t(b) * H * TT;
    blas.gemm_strided_batched(false, true, Tn, Tn, hs, scale, q, ld, hs, q + C, ld, hs, 0.0f, p, Tn, TT, H);
  }
  if (int64_t(B) * H * Tn > 0) {
    k_softmax_rows<<<B * H * Tn, kThreads>>>(att, Tn, causal);
    check("attention softmax");
  }
  for (int b = 0; b < B; ++b) {
    const float* v = qkv + int64_t(b) * Tn * ld + 2 * C;
    blas.gemm_strided_batched(false, false, Tn, hs, Tn, 1.0f, att + int64_t(b) * H * TT, Tn, TT, v, ld, hs, 0.0f,
                              out + int64_t(b) * Tn * C, C, hs, H);
  }
}

void attention_backward(Blas& blas, float* dqkv, float* datt, const float* dout, const float* qkv, const float* att,
                        int B, int Tn, int C, int H, bool causal) {
  const int hs = C / H, ld = 3 * C;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hs)));
  const int64_t TT = int64_t(Tn) * Tn;
  for (int b = 0; b < B; ++b) {
    const float* q = qkv + int64_t(b) * Tn * ld;
    const float* d = dout + int64_t(b) * Tn * C;
    float* dq = dqkv + int64_t(b) * Tn * ld;
    blas.gemm_strided_batched(false, true, Tn, Tn, hs, 1.0f, d, C, hs, q + 2 * C, ld, hs, 0.0f, datt + int64_t(b) * H * TT,
                              Tn, TT, H);  // dP = dO V^T
    blas.gemm_strided_batched(true, false, Tn, hs, Tn, 1.0f, att + int64_t(b) * H * TT, Tn, TT, d, C, hs, 0.0f,
                              dq + 2 * C, ld, hs, H);  // dV = P^T dO
  }
  if (int64_t(B) * H * Tn > 0) {
    k_softmax_backward_rows<<<B * H * Tn, kThreads>>>(datt, att, Tn, causal);
    check("attention softmax backward");
  }
  for (int b = 0; b < B; ++b) {
    const float* q = qkv + int64_t(b) * Tn * ld;
    const float* dz = datt + int64_t(b) * H * TT;
    float* dq = dqkv + int64_t(b) * Tn * ld;
    blas.gemm_strided_batched(false, false, Tn, hs, Tn, scale, dz, Tn, TT, q + C, ld, hs, 0.0f, dq, ld, hs, H);  // dQ = s dZ K
    blas.gemm_strided_batched(true, false, Tn, hs, Tn, scale, dz, Tn, TT, q, ld, hs, 0.0f, dq + C, ld, hs, H);  // dK = s dZ^T Q
  }
}

void linear_forward(Blas& blas, float* out, const float* inp, const float* weight, const float* bias, int N, int IC,
                    int OC) {
  blas.gemm(false, true, N, OC, IC, 1.0f, inp, IC, weight, IC, 0.0f, out, OC);
  if (bias) {
    const int64_t n = int64_t(N) * OC;
    k_add_bias<<<grid_for(n), kThreads>>>(out, bias, OC, n);
    check("linear_forward (bias)");
  }
}

void gaussian_scores_forward(Blas& blas, float* scores, float* w, float* m, float* c, float* inp_sq, const float* inp,
                             const float* mu, const float* log_sigma, int N, int C, int E) {
  k_gaussian_wmc<<<(E + 31) / 32, 32>>>(w, m, c, mu, log_sigma, C, E);
  const int64_t nc = int64_t(N) * C, ne = int64_t(N) * E;
  k_mul<<<grid_for(nc), kThreads>>>(inp_sq, inp, inp, nc);
  k_rows_of<<<grid_for(ne), kThreads>>>(scores, c, E, ne);
  check("gaussian_scores_forward");
  blas.gemm(false, true, N, E, C, -0.5f, inp_sq, C, w, C, 1.0f, scores, E);
  blas.gemm(false, true, N, E, C, 1.0f, inp, C, m, C, 1.0f, scores, E);
}

void gaussian_scores_backward(Blas& blas, float* dinp, float* dmu, float* dlog_sigma, float* scratch_ec, const float* dscores,
                              const float* inp, const float* inp_sq, const float* mu, const float* w, const float* m, int N,
                              int C, int E) {
  float* gx = scratch_ec;
  float* gx2 = gx + int64_t(E) * C;
  float* gs = gx2 + 2 * int64_t(E) * C;  // the CPU's layout: gx, gx2, its row-block scratch, gs
  blas.gemm(true, false, E, C, N, 1.0f, dscores, E, inp, C, 0.0f, gx, C);
  blas.gemm(true, false, E, C, N, 1.0f, dscores, E, inp_sq, C, 0.0f, gx2, C);
  k_column_sums<<<(E + 31) / 32, 32>>>(gs, dscores, N, E);
  const int64_t ec = int64_t(E) * C, nc = int64_t(N) * C;
  k_gaussian_param_grads<<<grid_for(ec), kThreads>>>(dmu, dlog_sigma, w, mu, gx, gx2, gs, C, ec);
  check("gaussian_scores_backward (parameters)");
  // dx = G m - x (G w): G w whole (N,C) in a temporary, where the CPU takes it E rows at a time
  blas.gemm(false, false, N, C, E, 1.0f, dscores, E, m, C, 0.0f, dinp, C);
  DeviceBuffer<float> gw(static_cast<std::size_t>(nc));
  blas.gemm(false, false, N, C, E, 1.0f, dscores, E, w, C, 0.0f, gw.data(), C);
  k_sub_mul<<<grid_for(nc), kThreads>>>(dinp, inp, gw.data(), nc);
  check("gaussian_scores_backward (input)");
}

void wkv7_forward(float* y, float* checkpoints, const float* r, const float* u, const float* k, const float* v, const float* a,
                  const float* b, int T, int H, int N, int chunk, const float* state0, float* state_out) {
  if (N > kWkvMaxN) throw std::runtime_error("wkv7_forward: head size above 64");
  k_wkv7_forward<<<H, N>>>(y, checkpoints, r, u, k, v, a, b, T, H, N, chunk, state0, state_out);
  check("wkv7_forward");
}

void dropout_mask(uint8_t* keep, int64_t n, uint64_t seed, uint32_t purpose, uint32_t step, uint32_t index, uint32_t threshold) {
  if (n <= 0) return;
  k_dropout_mask<<<grid_for((n + 3) / 4), kThreads>>>(keep, n, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                                                      purpose, step, index, threshold);
  check("dropout_mask");
}

void dropout_forward(float* out, const float* inp, const uint8_t* keep, float scale, int64_t n) {
  if (n <= 0) return;
  k_dropout_apply<<<grid_for(n), kThreads>>>(out, inp, keep, scale, n);
  check("dropout_forward");
}

void dropout_backward(float* dinp, const float* dout, const uint8_t* keep, float scale, int64_t n) {
  if (n <= 0) return;
  k_dropout_apply<<<grid_for(n), kThreads>>>(dinp, dout, keep, scale, n);
  check("dropout_backward");
}

void moe_dispatch(int32_t* offsets, int32_t* tok, int32_t* pos, float* xs, const int32_t* idx, const float* inp, int N, int K,
                  int E, int C, const int32_t* sample_k, int sample_tokens) {
  if (E > 1024) throw std::runtime_error("moe_dispatch: more than 1024 experts");
  const int64_t pairs = int64_t(N) * K;
  const int chunks = static_cast<int>((pairs + kThreads - 1) / kThreads);
  if (chunks == 0) {
    cudaMemset(offsets, 0, sizeof(int32_t) * (E + 1));
    check("moe_dispatch (empty)");
    return;
  }
  DeviceBuffer<int32_t> base(static_cast<std::size_t>(chunks) * E);
  k_moe_chunk_counts<<<chunks, kThreads>>>(base.data(), idx, pairs, E, K, sample_k, sample_tokens);
  k_moe_bases<<<1, 256>>>(base.data(), offsets, chunks, E);
  k_moe_rows<<<chunks, kThreads>>>(tok, pos, base.data(), idx, pairs, K, E, sample_k, sample_tokens);
  k_moe_gather<<<grid_for(pairs * C), kThreads>>>(xs, inp, tok, offsets, E, pairs, C);
  check("moe_dispatch");
}

void topk_dynamic_gates(float* gates, const float* scores, const int32_t* idx, int N, int E, int K, const int32_t* sample_k,
                        int sample_tokens) {
  k_dynamic_gates<<<(N + 127) / 128, 128>>>(gates, scores, idx, N, E, K, sample_k, sample_tokens);
  check("topk_dynamic_gates");
}

void moe_combine(float* out, const float* ys, const float* gates, const int32_t* pos, int N, int K, int C, const int32_t* sample_k,
                 int sample_tokens) {
  k_moe_combine<<<grid_for(int64_t(N) * C), kThreads>>>(out, ys, gates, pos, N, K, C, sample_k, sample_tokens);
  check("moe_combine");
}

void moe_combine_backward(float* dys, float* dgates, const float* dout, const float* ys, const float* gates, const int32_t* pos,
                          int N, int K, int C, const int32_t* sample_k, int sample_tokens) {
  k_moe_combine_backward<<<grid_for(int64_t(N) * K), kThreads>>>(dys, dgates, dout, ys, gates, pos, int64_t(N) * K, K, C, sample_k,
                                                                 sample_tokens);
  check("moe_combine_backward");
}

void moe_scatter_add(float* dinp, const float* dxs, const int32_t* pos, int N, int K, int C) {
  if (K > 16) throw std::runtime_error("moe_scatter_add: top-k above 16");
  k_moe_scatter_add<<<grid_for(int64_t(N) * C), kThreads>>>(dinp, dxs, pos, N, K, C);
  check("moe_scatter_add");
}

void shard_sum(float* out, const std::vector<const float*>& shards, const std::vector<std::pair<int64_t, int64_t>>& ranges,
               int S, Comm* comm) {
  static_assert(fixed_point::kBlock <= kThreads, "one thread per element of a sum block");
  std::vector<SumBlock> blocks;
  int64_t at = 0;
  for (const auto& [b, e] : ranges)
    for (int64_t b0 = b; b0 < e; b0 += fixed_point::kBlock) {
      const int64_t b1 = std::min(e, b0 + fixed_point::kBlock);
      blocks.push_back({b0, b1, at});
      at += b1 - b0;
    }
  if (blocks.empty()) return;
  const int nb = static_cast<int>(blocks.size());
  DeviceBuffer<SumBlock> dblocks(blocks.size());
  dblocks.upload(blocks);
  DeviceBuffer<const float*> dshards(shards.size() ? shards.size() : 1);
  if (!shards.empty()) dshards.upload(shards);
  DeviceBuffer<int32_t> exps(blocks.size());
  DeviceBuffer<int64_t> acc(static_cast<std::size_t>(at));
  const int Sl = static_cast<int>(shards.size()), head = fixed_point::headroom(S);
  k_shard_exponents<<<nb, kThreads>>>(exps.data(), dshards.data(), Sl, dblocks.data());
  check("shard_sum (exponents)");
  if (comm && comm->size() > 1) comm->allreduce_max(exps.data(), blocks.size());  // device pointers: the NCCL Comm
  cudaMemset(acc.data(), 0, static_cast<std::size_t>(at) * sizeof(int64_t));
  k_shard_fixed_point<<<nb, kThreads>>>(reinterpret_cast<long long*>(acc.data()), dshards.data(), Sl, dblocks.data(), exps.data(),
                                        head);
  check("shard_sum (fixed point)");
  if (comm && comm->size() > 1) comm->allreduce_sum(acc.data(), static_cast<std::size_t>(at));
  k_shard_to_float<<<nb, kThreads>>>(out, reinterpret_cast<const long long*>(acc.data()), dblocks.data(), exps.data(), head);
  check("shard_sum (to float)");
  synchronize();
}

}  // namespace hyperrnn::cuda
