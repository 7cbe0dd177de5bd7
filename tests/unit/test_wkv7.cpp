// RWKV-7's recurrence (src/nn/wkv7.*): the forward against the matrix form written out here,
// finite-difference gradients of every input and of the initial state (double; tolerance derived
// in gradcheck.hpp), gradients bitwise independent of the checkpoint interval, and the recurrent
// step equal to the training forward bitwise.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "gradcheck.hpp"
#include "nn/wkv7.hpp"

using namespace hyperrnn;
using namespace hyperrnn::nn;
using test::check_gradient;
using test::dot;
using test::require_ok;
using test::uniform;
using V = std::vector<double>;

namespace {
// The recurrence's inputs for T tokens of H heads of size N (T,H,N each); a = -kk and b = kk * a in
// the model: small vectors; u spans the decay's whole range.
template <class F>
struct Inputs {
  std::vector<F> r, u, k, v, a, b;
};
template <class F>
Inputs<F> make(int T, int H, int N, uint64_t seed) {
  const int64_t n = static_cast<int64_t>(T) * H * N;
  auto u = [&](uint64_t s, double scale) {
    const V x = uniform(n, seed + s, scale);
    return std::vector<F>(x.begin(), x.end());
  };
  return {u(0, 1.0), u(1, 4.0), u(2, 1.0), u(3, 1.0), u(4, 0.5), u(5, 0.5)};
}
}  // namespace

TEST_CASE("wkv7 forward is S_t = S_{t-1} (diag(w) + a b^T) + v k^T and y = S_t r", "[wkv7]") {
  const int T = 5, H = 2, N = 3;
  const Inputs<double> in = make<double>(T, H, N, 11);
  const Wkv7Dims d{T, H, N, 2};
  V y(T * H * N), ck(d.checkpoints() * d.state_size());
  const V S0 = uniform(d.state_size(), 99, 0.5);
  V Sout(d.state_size());
  wkv7_forward(y.data(), ck.data(), in.r.data(), in.u.data(), in.k.data(), in.v.data(), in.a.data(), in.b.data(), d,
               S0.data(), Sout.data());
  for (int h = 0; h < H; ++h) {
    V S(S0.begin() + h * N * N, S0.begin() + (h + 1) * N * N);
    for (int t = 0; t < T; ++t) {
      const int q = (t * H + h) * N;
      V M(N * N);  // diag(w) + a b^T
      for (int i = 0; i < N; ++i)
        for (int j = 0; j < N; ++j)
          M[i * N + j] = (i == j ? std::exp(-std::exp(-0.5) / (1 + std::exp(-in.u[q + j]))) : 0.0) + in.a[q + i] * in.b[q + j];
      V Sn(N * N, 0.0);
      for (int i = 0; i < N; ++i)
        for (int j = 0; j < N; ++j) {
          for (int m = 0; m < N; ++m) Sn[i * N + j] += S[i * N + m] * M[m * N + j];
          Sn[i * N + j] += in.v[q + i] * in.k[q + j];
        }
      S.swap(Sn);
      for (int i = 0; i < N; ++i) {
        double yi = 0;
        for (int j = 0; j < N; ++j) yi += S[i * N + j] * in.r[q + j];
        REQUIRE(y[q + i] == Approx(yi).margin(1e-12));  // two summation orders of O(1) terms
      }
    }
    for (int i = 0; i < N * N; ++i) REQUIRE(Sout[h * N * N + i] == Approx(S[i]).margin(1e-12));
  }
}

TEST_CASE("wkv7 backward matches finite differences (inputs and initial state)", "[wkv7][grad]") {
  const int T = 7, H = 2, N = 3;
  for (int chunk : {3, 16}) {
    Inputs<double> in = make<double>(T, H, N, 21);
    const Wkv7Dims d{T, H, N, chunk};
    V S0 = uniform(d.state_size(), 7, 0.5), R = uniform(T * H * N, 8, 1.0);
    V y(T * H * N), ck(d.checkpoints() * d.state_size());
    auto f = [&] {
      wkv7_forward(y.data(), ck.data(), in.r.data(), in.u.data(), in.k.data(), in.v.data(), in.a.data(), in.b.data(), d,
                   S0.data());
      return dot(y, R);
    };
    f();
    const int64_t n = static_cast<int64_t>(T) * H * N;
    V dr(n), du(n), dk(n), dv(n), da(n), db(n), dS0(d.state_size()), scratch(wkv7_scratch_size(d));
    wkv7_backward(dr.data(), du.data(), dk.data(), dv.data(), da.data(), db.data(), dS0.data(), R.data(), ck.data(),
                  in.r.data(), in.u.data(), in.k.data(), in.v.data(), in.a.data(), in.b.data(), d, scratch.data());
    require_ok(check_gradient(f, in.r.data(), dr.data(), n), "r");
    require_ok(check_gradient(f, in.u.data(), du.data(), n), "u");
    require_ok(check_gradient(f, in.k.data(), dk.data(), n), "k");
    require_ok(check_gradient(f, in.v.data(), dv.data(), n), "v");
    require_ok(check_gradient(f, in.a.data(), da.data(), n), "a");
    require_ok(check_gradient(f, in.b.data(), db.data(), n), "b");
    require_ok(check_gradient(f, S0.data(), dS0.data(), d.state_size()), "initial state");
  }
}

TEST_CASE("wkv7 gradients are bitwise the same for every checkpoint interval", "[wkv7]") {
  const int T = 13, H = 2, N = 4;
  const int64_t n = static_cast<int64_t>(T) * H * N;
  const auto [r, u, k, v, a, b] = make<float>(T, H, N, 1);
  const std::vector<float> dy = make<float>(T, H, N, 7).r;
  std::vector<std::vector<float>> first;
  for (int chunk : {1, 3, 5, 13, 16}) {
    const Wkv7Dims d{T, H, N, chunk};
    std::vector<float> y(n), ck(d.checkpoints() * d.state_size()), scratch(wkv7_scratch_size(d));
    wkv7_forward(y.data(), ck.data(), r.data(), u.data(), k.data(), v.data(), a.data(), b.data(), d);
    std::vector<std::vector<float>> g(6, std::vector<float>(n));
    wkv7_backward(g[0].data(), g[1].data(), g[2].data(), g[3].data(), g[4].data(), g[5].data(), static_cast<float*>(nullptr),
                  dy.data(), ck.data(), r.data(), u.data(), k.data(), v.data(), a.data(), b.data(), d, scratch.data());
    g.push_back(y);
    if (first.empty()) first = g;
    for (size_t i = 0; i < g.size(); ++i) REQUIRE(g[i] == first[i]);
  }
}

TEST_CASE("wkv7 recurrent steps equal the training forward bitwise", "[wkv7]") {
  const int T = 9, H = 3, N = 4;
  const int64_t n = static_cast<int64_t>(T) * H * N;
  const auto [r, u, k, v, a, b] = make<float>(T, H, N, 1);
  const Wkv7Dims d{T, H, N, 4};
  std::vector<float> y(n), ck(d.checkpoints() * d.state_size()), Sout(d.state_size());
  wkv7_forward(y.data(), ck.data(), r.data(), u.data(), k.data(), v.data(), a.data(), b.data(), d,
               static_cast<const float*>(nullptr), Sout.data());
  std::vector<float> S(d.state_size(), 0.0f), yt(H * N);
  for (int t = 0; t < T; ++t) {
    const int64_t o = static_cast<int64_t>(t) * H * N;
    wkv7_step(S.data(), yt.data(), r.data() + o, u.data() + o, k.data() + o, v.data() + o, a.data() + o, b.data() + o, H, N);
    for (int i = 0; i < H * N; ++i) REQUIRE(yt[i] == y[o + i]);
  }
  REQUIRE(S == Sout);
}
