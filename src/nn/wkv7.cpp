// RWKV-7's recurrence: forward, recurrent step and backward through time (see wkv7.hpp).
#include "nn/wkv7.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace hyperrnn::nn {

template <class T>
T wkv7_decay(T u) {
  const T s = T(1) / (T(1) + std::exp(-u));
  return std::exp(static_cast<T>(kWkvDecayScale) * s);
}

namespace {
// One head, one token: S (N x N) in place; sa_out (N) gets S_{t-1} a for the backward.
template <class T>
void head_step(T* S, T* y, T* sa_out, const T* r, const T* u, const T* k, const T* v, const T* a, const T* b, int N) {
  constexpr int kStack = 256;  // head sizes up to this use a stack buffer for the decays
  T wst[kStack];
  std::vector<T> wheap(N > kStack ? static_cast<size_t>(N) : 0);
  T* w = N > kStack ? wheap.data() : wst;
  for (int j = 0; j < N; ++j) w[j] = wkv7_decay(u[j]);  // once per token, not per state entry
  for (int i = 0; i < N; ++i) {
    T* row = S + static_cast<int64_t>(i) * N;
    T sa = 0;
    for (int j = 0; j < N; ++j) sa += row[j] * a[j];
    if (sa_out) sa_out[i] = sa;
    const T vi = v[i];
    T yi = 0;
    for (int j = 0; j < N; ++j) {
      const T s = row[j] * w[j] + (sa * b[j] + k[j] * vi);
      row[j] = s;
      yi += s * r[j];
    }
    y[i] = yi;
  }
}
}  // namespace

template <class T>
void wkv7_step(T* state, T* y, const T* r, const T* u, const T* k, const T* v, const T* a, const T* b, int H, int N) {
  for (int h = 0; h < H; ++h) {
    const int64_t o = static_cast<int64_t>(h) * N;
    head_step(state + o * N, y + o, static_cast<T*>(nullptr), r + o, u + o, k + o, v + o, a + o, b + o, N);
  }
}

template <class T>
void wkv7_forward(T* y, T* checkpoints, const T* r, const T* u, const T* k, const T* v, const T* a, const T* b,
                  const Wkv7Dims& d, const T* state0, T* state_out) {
  const int64_t HN = static_cast<int64_t>(d.H) * d.N, SS = d.state_size();
  std::vector<T> S(static_cast<size_t>(SS), T(0));
  if (state0) std::copy(state0, state0 + SS, S.begin());
  for (int t = 0; t < d.T; ++t) {
    if (t % d.chunk == 0) std::copy(S.begin(), S.end(), checkpoints + (t / d.chunk) * SS);
    const int64_t o = t * HN;
    wkv7_step(S.data(), y + o, r + o, u + o, k + o, v + o, a + o, b + o, d.H, d.N);
  }
  if (state_out) std::copy(S.begin(), S.end(), state_out);
}

int64_t wkv7_scratch_size(const Wkv7Dims& d) {
  return (static_cast<int64_t>(d.chunk) + 2) * d.state_size() + static_cast<int64_t>(d.chunk) * d.H * d.N;
}

template <class T>
void wkv7_backward(T* dr, T* du, T* dk, T* dv, T* da, T* db, T* dstate0, const T* dy, const T* checkpoints,
                   const T* r, const T* u, const T* k, const T* v, const T* a, const T* b, const Wkv7Dims& d,
                   T* scratch) {
  const int H = d.H, N = d.N;
  const int64_t HN = static_cast<int64_t>(H) * N, SS = d.state_size(), NN = static_cast<int64_t>(N) * N;
  T* states = scratch;                           // (chunk + 1) x SS: before the chunk, then after each token
  T* dS = scratch + (d.chunk + 1) * SS;          // SS: the gradient of the state after the current token
  T* sa = dS + SS;                               // chunk x HN
  std::fill(dS, dS + SS, T(0));
  std::vector<T> dsa(static_cast<size_t>(N)), w(static_cast<size_t>(N)), ytmp(static_cast<size_t>(N)), acc(5 * static_cast<size_t>(N));
  for (int64_t c = d.checkpoints() - 1; c >= 0; --c) {
    const int t0 = static_cast<int>(c * d.chunk), t1 = std::min(d.T, t0 + d.chunk);
    // the chunk's states, rebuilt by the forward's own arithmetic
    std::copy(checkpoints + c * SS, checkpoints + (c + 1) * SS, states);
    for (int t = t0; t < t1; ++t) {
      const int s = t - t0;
      T* next = states + (s + 1) * SS;
      std::copy(states + s * SS, states + (s + 1) * SS, next);
      const int64_t o = t * HN;
      for (int h = 0; h < H; ++h)
        head_step(next + h * NN, ytmp.data(), sa + s * HN + h * N, r + o + h * N, u + o + h * N, k + o + h * N,
                  v + o + h * N, a + o + h * N, b + o + h * N, N);
    }
    for (int t = t1 - 1; t >= t0; --t) {
      const int s = t - t0;
      const int64_t o = t * HN;
      for (int h = 0; h < H; ++h) {
        const int64_t q = o + h * N;
        const T* Sn = states + (s + 1) * SS + h * NN;  // after token t
        const T* Sp = states + s * SS + h * NN;        // before it
        const T* sah = sa + s * HN + h * N;
        T* G = dS + h * NN;
        for (int i = 0; i < N; ++i)
          for (int j = 0; j < N; ++j) G[i * N + j] += dy[q + i] * r[q + j];
        // Column sums over i, taken row by row (unit stride; per column the same order i = 0, 1, ...
        // as a column loop, so the same values)
        std::fill(acc.begin(), acc.end(), T(0));
        T* drj = acc.data();
        T* dwj = drj + N;
        T* dkj = dwj + N;
        T* dbj = dkj + N;
        T* daj = dbj + N;
        for (int i = 0; i < N; ++i) {
          const T* Gi = G + i * N;
          const T* Sni = Sn + i * N;
          const T* Spi = Sp + i * N;
          const T dyi = dy[q + i], vi = v[q + i], sai = sah[i];
          for (int j = 0; j < N; ++j) {
            const T g = Gi[j];
            drj[j] += Sni[j] * dyi;
            dwj[j] += g * Spi[j];
            dkj[j] += g * vi;
            dbj[j] += g * sai;
          }
        }
        for (int j = 0; j < N; ++j) {
          const T sg = T(1) / (T(1) + std::exp(-u[q + j]));
          w[static_cast<size_t>(j)] = wkv7_decay(u[q + j]);
          dr[q + j] = drj[j];
          du[q + j] = dwj[j] * w[static_cast<size_t>(j)] * static_cast<T>(kWkvDecayScale) * sg * (T(1) - sg);
          dk[q + j] = dkj[j];
          db[q + j] = dbj[j];
        }
        for (int i = 0; i < N; ++i) {
          T dvi = 0, dsai = 0;
          for (int j = 0; j < N; ++j) {
            dvi += G[i * N + j] * k[q + j];
            dsai += G[i * N + j] * b[q + j];
          }
          dv[q + i] = dvi;
          dsa[static_cast<size_t>(i)] = dsai;
        }
        for (int i = 0; i < N; ++i) {
          const T* Spi = Sp + i * N;
          const T dsai = dsa[static_cast<size_t>(i)];
          for (int j = 0; j < N; ++j) daj[j] += Spi[j] * dsai;
        }
        for (int j = 0; j < N; ++j) da[q + j] = daj[j];
        for (int i = 0; i < N; ++i)
          for (int j = 0; j < N; ++j)
            G[i * N + j] = G[i * N + j] * w[static_cast<size_t>(j)] + dsa[static_cast<size_t>(i)] * a[q + j];
      }
    }
  }
  if (dstate0) std::copy(dS, dS + SS, dstate0);
}

#define HYPERRNN_WKV7(T)                                                                                            \
  template T wkv7_decay<T>(T);                                                                                      \
  template void wkv7_step<T>(T*, T*, const T*, const T*, const T*, const T*, const T*, const T*, int, int);        \
  template void wkv7_forward<T>(T*, T*, const T*, const T*, const T*, const T*, const T*, const T*, const Wkv7Dims&, \
                                const T*, T*);                                                                      \
  template void wkv7_backward<T>(T*, T*, T*, T*, T*, T*, T*, const T*, const T*, const T*, const T*, const T*,      \
                                 const T*, const T*, const T*, const Wkv7Dims&, T*);
HYPERRNN_WKV7(float)
HYPERRNN_WKV7(double)
#undef HYPERRNN_WKV7

}  // namespace hyperrnn::nn
