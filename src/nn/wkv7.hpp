// RWKV-7's generalised delta-rule recurrence (the "wkv7" core of its time mix), forward and
// backward through time, for one sequence, as the reference's kernel computes it
// (docs/rwkv7.md: RWKV-LM train_temp/cuda/rwkv7_clampw.cu). Per head (state S: N x N, row =
// value index i, column = key index j; S_0 = the given initial state or 0), per token t:
//   w_j  = exp(-exp(-0.5) sigmoid(u_j))                   (decay, in (0.545, 1))
//   sa_i = sum_j S_ij a_j
//   S_ij <- S_ij w_j + sa_i b_j + v_i k_j                 (S (diag(w) + a b^T) + v k^T)
//   y_i  = sum_j S_ij r_j                                 (with the updated state)
// RWKV-7 calls it with a = -kk and b = kk * a (its removal and replacement keys).
// Layout: every per-token input and y is (T, H, N), token-major. The forward keeps the state
// before every `chunk`-th token (checkpoints: ceil(T / chunk) x H x N x N); the backward rebuilds
// each chunk's states from its checkpoint by running the same forward again, so its gradients
// are bitwise the same for every chunk length and need no division by w (the reference kernel
// inverts the update instead). Memory per sequence: checkpoints plus one chunk of states.
// wkv7_step is one token of the same arithmetic: recurrent inference, O(1) per token, equals the
// training forward bitwise.
// Leaves out: the projections, norms and gates around it (the rwkv7 model, issue 16).
#pragma once
#include <cstddef>
#include <cstdint>

namespace hyperrnn::nn {

constexpr double kWkvDecayScale = -0.6065306597126334;  // -exp(-0.5)

struct Wkv7Dims {
  int T = 1, H = 1, N = 1;
  int chunk = 16;  // tokens between state checkpoints (any value >= 1)
  int64_t checkpoints() const { return (T + chunk - 1) / chunk; }
  int64_t state_size() const { return static_cast<int64_t>(H) * N * N; }
};

// w from its pre-activation u.
template <class T>
T wkv7_decay(T u);

// One token for every head: updates state (H x N x N) in place and writes y (H x N).
template <class T>
void wkv7_step(T* state, T* y, const T* r, const T* u, const T* k, const T* v, const T* a, const T* b, int H, int N);

// y (T,H,N); checkpoints (d.checkpoints() x H x N x N); state0 (H x N x N) or nullptr for zeros;
// state_out (H x N x N, the state after the last token) or nullptr.
template <class T>
void wkv7_forward(T* y, T* checkpoints, const T* r, const T* u, const T* k, const T* v, const T* a, const T* b,
                  const Wkv7Dims& d, const T* state0 = nullptr, T* state_out = nullptr);

// Scratch the backward needs: (chunk + 2) x H x N x N + chunk x H x N values.
int64_t wkv7_scratch_size(const Wkv7Dims& d);

// Gradients of sum(y * dy) with respect to every input (each (T,H,N), overwritten) and, when
// dstate0 is given, to the initial state. checkpoints: the forward's.
template <class T>
void wkv7_backward(T* dr, T* du, T* dk, T* dv, T* da, T* db, T* dstate0, const T* dy, const T* checkpoints,
                   const T* r, const T* u, const T* k, const T* v, const T* a, const T* b, const Wkv7Dims& d,
                   T* scratch);

}  // namespace hyperrnn::nn
