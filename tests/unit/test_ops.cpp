// Finite-difference gradient checks of every op in double precision (tolerance derived in
// gradcheck.hpp). Each scalar is L = sum(out * R) with a fixed random R, so dout = R.
#include <catch2/catch.hpp>

#include <cmath>

#include "gradcheck.hpp"
#include "nn/dropout.hpp"
#include "nn/elementwise_math.hpp"
#include "nn/ops.hpp"

using namespace hyperrnn;
using namespace hyperrnn::nn;
using test::check_gradient;
using test::dot;
using test::require_ok;
using test::uniform;
using V = std::vector<double>;


TEST_CASE("embedding backward matches finite differences", "[ops][grad]") {
  const int B = 2, T = 3, C = 4, Vv = 5;
  std::vector<int32_t> tok = {0, 3, 3, 4, 1, 0};
  V wte = uniform(Vv * C, 1, 1.0), wpe = uniform(T * C, 2, 1.0), R = uniform(B * T * C, 3, 1.0);
  V out(B * T * C), dwte(Vv * C, 0.0), dwpe(T * C, 0.0);
  auto f = [&] { embedding_forward(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C); return dot(out, R); };
  embedding_backward(dwte.data(), dwpe.data(), R.data(), tok.data(), B, T, C);
  require_ok(check_gradient(f, wte.data(), dwte.data(), Vv * C), "wte");
  require_ok(check_gradient(f, wpe.data(), dwpe.data(), T * C), "wpe");
}

TEST_CASE("layernorm backward matches finite differences", "[ops][grad]") {
  const int N = 5, C = 7;
  V x = uniform(N * C, 4, 2.0), w = uniform(C, 5, 1.5), b = uniform(C, 6, 0.5), R = uniform(N * C, 7, 1.0);
  V out(N * C), mean(N), rstd(N), dx(N * C, 0.0), dw(C, 0.0), db(C, 0.0);
  auto f = [&] { layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C); return dot(out, R); };
  f();
  layernorm_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
  require_ok(check_gradient(f, x.data(), dx.data(), N * C), "inp");
  require_ok(check_gradient(f, w.data(), dw.data(), C), "weight");
  require_ok(check_gradient(f, b.data(), db.data(), C), "bias");
}

TEST_CASE("layernorm matches its definition", "[ops]") {
  V x = {1, 2, 3, 4}, w = {1, 1, 1, 1}, b = {0, 0, 0, 0}, out(4), mean(1), rstd(1);
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), 1, 4);
  // mean 2.5, variance 1.25: normalised (x - 2.5) / sqrt(1.25 + 1e-5)
  const double r = 1.0 / std::sqrt(1.25 + 1e-5);
  CHECK(mean[0] == Approx(2.5).epsilon(1e-15));
  CHECK(out[0] == Approx(-1.5 * r).epsilon(1e-14));
  CHECK(out[3] == Approx(1.5 * r).epsilon(1e-14));
}

TEST_CASE("linear backward matches finite differences, with and without bias", "[ops][grad]") {
  const int N = 6, IC = 5, OC = 4;
  for (bool with_bias : {true, false}) {
    V x = uniform(N * IC, 8, 1.0), w = uniform(OC * IC, 9, 1.0), b = uniform(OC, 10, 1.0), R = uniform(N * OC, 11, 1.0);
    V out(N * OC), dx(N * IC, 0.0), dw(OC * IC, 0.0), db(OC, 0.0);
    auto f = [&] { linear_forward(out.data(), x.data(), w.data(), with_bias ? b.data() : nullptr, N, IC, OC); return dot(out, R); };
    linear_backward(dx.data(), dw.data(), with_bias ? db.data() : nullptr, R.data(), x.data(), w.data(), N, IC, OC);
    require_ok(check_gradient(f, x.data(), dx.data(), N * IC), "inp");
    require_ok(check_gradient(f, w.data(), dw.data(), OC * IC), "weight");
    if (with_bias) require_ok(check_gradient(f, b.data(), db.data(), OC), "bias");
  }
}

TEST_CASE("gelu is exact-erf GELU and its backward matches finite differences", "[ops][grad]") {
  V x = uniform(50, 12, 4.0), R = uniform(50, 13, 1.0), out(50), dx(50);
  auto f = [&] { gelu_forward(out.data(), x.data(), 50); return dot(out, R); };
  gelu_backward(dx.data(), R.data(), x.data(), 50);
  require_ok(check_gradient(f, x.data(), dx.data(), 50), "inp");
  V one = {1.0}, o1(1);
  gelu_forward(o1.data(), one.data(), 1);
  CHECK(o1[0] == Approx(0.8413447460685429).epsilon(1e-14));  // Phi(1)
}

TEST_CASE("attention backward matches finite differences (causal and not)", "[ops][grad]") {
  const int B = 2, T = 5, C = 6, H = 2;
  for (bool causal : {true, false}) {
    V qkv = uniform(B * T * 3 * C, 14, 1.0), R = uniform(B * T * C, 15, 1.0);
    V out(B * T * C), att(B * H * T * T), datt(B * H * T * T), dqkv(B * T * 3 * C);
    auto f = [&] { attention_forward(out.data(), att.data(), qkv.data(), B, T, C, H, causal); return dot(out, R); };
    f();
    attention_backward(dqkv.data(), datt.data(), R.data(), qkv.data(), att.data(), B, T, C, H, causal);
    require_ok(check_gradient(f, qkv.data(), dqkv.data(), B * T * 3 * C, 400), causal ? "causal" : "full");
  }
}

TEST_CASE("causal attention does not look ahead", "[ops]") {
  const int B = 1, T = 4, C = 4, H = 1;
  V qkv = uniform(T * 3 * C, 16, 1.0), out1(T * C), out2(T * C), att(T * T);
  attention_forward(out1.data(), att.data(), qkv.data(), B, T, C, H, true);
  for (int i = 0; i < 3 * C; ++i) qkv[3 * 3 * C + i] += 1.0;  // change only the last position
  attention_forward(out2.data(), att.data(), qkv.data(), B, T, C, H, true);
  for (int i = 0; i < 3 * C; ++i) CHECK(out1[i] == out2[i]);  // first three positions unchanged
}

TEST_CASE("cross-entropy backward matches finite differences", "[ops][grad]") {
  const int N = 4, Vv = 7;
  std::vector<int32_t> tgt = {0, 6, 3, 3};
  V logits = uniform(N * Vv, 17, 3.0), losses(N), probs(N * Vv), dl(N * Vv);
  auto f = [&] { return crossentropy_forward(losses.data(), probs.data(), logits.data(), tgt.data(), N, Vv) / N; };
  f();
  crossentropy_backward(dl.data(), probs.data(), tgt.data(), 1.0 / N, N, Vv);
  require_ok(check_gradient(f, logits.data(), dl.data(), N * Vv), "logits");
  // uniform logits give log V per row
  V zero(Vv, 0.0), l1(1), p1(Vv);
  int32_t t0 = 2;
  CHECK(crossentropy_forward(l1.data(), p1.data(), zero.data(), &t0, 1, Vv) == Approx(std::log(7.0)).epsilon(1e-15));
}

TEST_CASE("top-k softmax: selection, tie-break, backward", "[ops][grad]") {
  const int N = 6, E = 5, K = 2;
  V s = uniform(N * E, 18, 2.0), R = uniform(N * K, 19, 1.0), gates(N * K), ds(N * E);
  std::vector<int32_t> idx(N * K);
  auto sig = [&] {
    uint64_t h = 0;
    for (int32_t i : idx) h = h * 31 + static_cast<uint64_t>(i);
    return h;
  };
  auto f = [&] { topk_softmax_forward(idx.data(), gates.data(), s.data(), N, E, K); return dot(gates, R); };
  f();
  topk_softmax_backward(ds.data(), R.data(), gates.data(), idx.data(), N, E, K);
  require_ok(check_gradient(f, s.data(), ds.data(), N * E, 64, sig), "scores");
  V tie = {1.0, 3.0, 3.0, 0.0}, g2(2);
  std::vector<int32_t> i2(2);
  topk_softmax_forward(i2.data(), g2.data(), tie.data(), 1, 4, 2);
  CHECK(i2 == std::vector<int32_t>{1, 2});  // equal scores: lower index first
  CHECK(g2[0] == Approx(0.5).epsilon(1e-15));
}

TEST_CASE("gaussian router scores equal the diagonal-Gaussian log-likelihood; backward matches FD", "[ops][grad]") {
  const int N = 7, C = 5, E = 3;
  V x = uniform(N * C, 20, 1.5), mu = uniform(E * C, 21, 1.0), ls = uniform(E * C, 22, 0.5), R = uniform(N * E, 23, 1.0);
  V scores(N * E), w(E * C), m(E * C), c(E), x2(N * C), dx(N * C), dmu(E * C, 0.0), dls(E * C, 0.0), ec(3 * E * C + E);
  auto f = [&] { gaussian_scores_forward(scores.data(), w.data(), m.data(), c.data(), x2.data(), x.data(), mu.data(), ls.data(), N, C, E); return dot(scores, R); };
  f();
  for (int n = 0; n < N; ++n)
    for (int e = 0; e < E; ++e) {
      double ref = 0;
      for (int i = 0; i < C; ++i) {
        const double sg = std::exp(ls[e * C + i]), z = (x[n * C + i] - mu[e * C + i]) / sg;
        ref += -0.5 * z * z - std::log(sg) - 0.5 * std::log(2 * M_PI);
      }
      CHECK(scores[n * E + e] == Approx(ref).epsilon(1e-12));
    }
  gaussian_scores_backward(dx.data(), dmu.data(), dls.data(), ec.data(), R.data(), x.data(), x2.data(), mu.data(), w.data(), m.data(), N, C, E);
  require_ok(check_gradient(f, x.data(), dx.data(), N * C), "inp");
  require_ok(check_gradient(f, mu.data(), dmu.data(), E * C), "mu");
  require_ok(check_gradient(f, ls.data(), dls.data(), E * C), "log_sigma");
}

TEST_CASE("float elementwise erf and exp agree with libm", "[ops]") {
  // Bounds from rounding-error analysis, u = 2^-24 = 6.0e-8 per float operation:
  // erf: fit error 6.5e-8, plus 6 + 4 Horner steps, the clamp-free products x*x, x*p and the
  // division, i.e. <= 14 roundings on a result of magnitude <= 1: 6.5e-8 + 14u = 9e-7 absolute.
  // A wrong coefficient or a sign slip gives errors above 1e-4.
  double worst_erf = 0.0;
  for (int i = -600000; i <= 600000; ++i) {
    const float x = static_cast<float>(i) * 1e-5f;
    worst_erf = std::max(worst_erf, std::abs(static_cast<double>(erf_elementwise(x)) - std::erf(static_cast<double>(x))));
  }
  CHECK(worst_erf <= 9e-7);
  // exp: Taylor truncation 1.2e-7 relative, plus 6 Horner steps, the two-step reduction and the
  // final scaling, <= 10 roundings: 1.2e-7 + 10u = 7.2e-7 relative; we accept 7.5e-7.
  double worst_exp = 0.0;
  for (int i = -8700000; i <= 8800000; i += 7) {
    const float x = static_cast<float>(i) * 1e-5f;
    const double ref = std::exp(static_cast<double>(x));
    worst_exp = std::max(worst_exp, std::abs(static_cast<double>(exp_elementwise(x)) - ref) / ref);
  }
  CHECK(worst_exp <= 7.5e-7);
  CHECK(erf_elementwise(10.0f) == Approx(1.0f));
  CHECK(exp_elementwise(-200.0f) >= 0.0f);
}

TEST_CASE("image_to_patches cuts row-major p x p patches", "[ops]") {
  // one 4x4 image with pixel value = 10*row + col, patch 2: 4 patches of 4 values
  V img(16);
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 4; ++x) img[y * 4 + x] = 10 * y + x;
  V out(16);
  image_to_patches(out.data(), img.data(), 1, 4, 4, 2);
  CHECK(out == V{0, 1, 10, 11, 2, 3, 12, 13, 20, 21, 30, 31, 22, 23, 32, 33});
}

TEST_CASE("mean-pool backward matches finite differences", "[ops][grad]") {
  const int B = 2, T = 3, C = 4;
  V x = uniform(B * T * C, 24, 1.0), R = uniform(B * C, 25, 1.0), out(B * C), dx(B * T * C, 0.0);
  auto f = [&] { meanpool_forward(out.data(), x.data(), B, T, C); return dot(out, R); };
  meanpool_backward(dx.data(), R.data(), B, T, C);
  require_ok(check_gradient(f, x.data(), dx.data(), B * T * C), "inp");
}

TEST_CASE("dropout masks: keep fraction, determinism, streams and scale", "[ops][dropout]") {
  // n Bernoulli(1 - p) draws: the kept fraction has standard deviation sqrt(p (1-p) / n); with
  // n = 2^20 and p = 0.1 that is 2.9e-4, so |fraction - 0.9| < 2e-3 (7 sigma) fails only for a
  // wrong threshold or a broken stream.
  const int64_t n = 1 << 20;
  std::vector<uint8_t> k1(static_cast<size_t>(n)), k2(static_cast<size_t>(n)), k3(static_cast<size_t>(n));
  const DropoutKey key{5, RngPurpose::Dropout, 7};
  const uint32_t thr = dropout_threshold(0.1);
  CHECK(thr == 429496729u);  // floor(0.1 * 2^32)
  CHECK(dropout_threshold(0.0) == 0u);
  dropout_mask(k1.data(), n, key, 3, thr);
  dropout_mask(k2.data(), n, key, 3, thr);
  dropout_mask(k3.data(), n, key, 4, thr);
  CHECK(k1 == k2);  // a pure function of (seed, purpose, step, index)
  CHECK(k1 != k3);
  double kept = 0;
  for (uint8_t v : k1) kept += v;
  CHECK(std::abs(kept / n - 0.9) < 2e-3);
  std::vector<uint8_t> k0(64);
  dropout_mask(k0.data(), 64, key, 3, dropout_threshold(0.0));
  for (uint8_t v : k0) CHECK(v == 1);  // p = 0 keeps everything
  // forward scales the kept elements by 1/(1-p), backward is the same map
  const V x = uniform(64, 3, 1.0);
  V y(64), dx(64);
  dropout_forward(y.data(), x.data(), k1.data(), 1.0 / 0.9, 64);
  dropout_backward(dx.data(), x.data(), k1.data(), 1.0 / 0.9, 64);
  for (int i = 0; i < 64; ++i) {
    CHECK(y[static_cast<size_t>(i)] == (k1[static_cast<size_t>(i)] ? x[static_cast<size_t>(i)] * (1.0 / 0.9) : 0.0));
    CHECK(dx[static_cast<size_t>(i)] == y[static_cast<size_t>(i)]);
  }
}

TEST_CASE("attention with dropout on its probabilities: gradients match finite differences", "[ops][grad][dropout]") {
  const int B = 2, Tn = 5, C = 8, H = 2;
  V qkv = uniform(B * Tn * 3 * C, 41, 1.0);
  const V R = uniform(B * Tn * C, 42, 1.0);
  std::vector<uint8_t> keep(static_cast<size_t>(B * H * Tn * Tn));
  dropout_mask(keep.data(), static_cast<int64_t>(keep.size()), DropoutKey{1, RngPurpose::Dropout, 0}, 0, dropout_threshold(0.3));
  V att(keep.size()), attd(keep.size()), out(static_cast<size_t>(B * Tn * C)), dqkv(qkv.size()), datt(keep.size());
  for (bool causal : {true, false}) {
    AttnDropout<double> ad{keep.data(), 1.0 / 0.7, attd.data()};
    auto f = [&] {
      attention_forward(out.data(), att.data(), qkv.data(), B, Tn, C, H, causal, &ad);
      return dot(out, R);
    };
    const double with = f();
    attention_backward(dqkv.data(), datt.data(), R.data(), qkv.data(), att.data(), B, Tn, C, H, causal, &ad);
    const auto r = check_gradient(f, qkv.data(), dqkv.data(), static_cast<int64_t>(qkv.size()), 200);
    INFO((causal ? "causal: " : "full: ") << r.first_failure);
    CHECK(r.failed == 0);
    attention_forward(out.data(), att.data(), qkv.data(), B, Tn, C, H, causal);
    CHECK(dot(out, R) != with);  // the mask matters
  }
}
