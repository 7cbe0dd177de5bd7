// GatingTransformer and its cross-attention op: finite-difference gradients in double (tolerance
// derived in gradcheck.hpp), skipping points where a perturbation flips a ReLU (the kink).
#include <catch2/catch.hpp>

#include <cmath>

#include "gradcheck.hpp"
#include "models/gating_transformer.hpp"
#include "nn/ops.hpp"

using namespace hyperrnn;
using V = std::vector<double>;

TEST_CASE("cross-attention gradients match finite differences", "[gating][ops]") {
  const int B = 2, Tq = 2, Tk = 5, C = 8, H = 2;
  V q = test::uniform(B * Tq * C, 11, 1.0), kv = test::uniform(B * Tk * 2 * C, 12, 1.0);
  V R = test::uniform(B * Tq * C, 13, 1.0), out(B * Tq * C), att(B * H * Tq * Tk), datt(att.size());
  V dq(q.size()), dkv(kv.size());
  auto f = [&] {
    nn::cross_attention_forward<double>(out.data(), att.data(), q.data(), kv.data(), B, Tq, Tk, C, H);
    double s = 0;
    for (size_t i = 0; i < out.size(); ++i) s += out[i] * R[i];
    return s;
  };
  f();
  // rows of att are distributions
  for (int r = 0; r < B * H * Tq; ++r) {
    double s = 0;
    for (int j = 0; j < Tk; ++j) s += att[r * Tk + j];
    REQUIRE(std::abs(s - 1.0) < 1e-14);
  }
  nn::cross_attention_backward<double>(dq.data(), dkv.data(), datt.data(), R.data(), q.data(), kv.data(), att.data(), B, Tq, Tk, C, H);
  const auto rq = test::check_gradient(f, q.data(), dq.data(), static_cast<int64_t>(q.size()), 64);
  const auto rkv = test::check_gradient(f, kv.data(), dkv.data(), static_cast<int64_t>(kv.size()), 96);
  INFO(rq.first_failure << rkv.first_failure);
  CHECK(rq.failed == 0);
  CHECK(rkv.failed == 0);
  CHECK(rq.worst <= 1.0);
}

namespace {
// A small GatingTransformer (C 8, 2 heads, 2 layers, 3 experts, history 4, 2 banks) for n queries,
// every parameter perturbed (LayerNorm weights 1 and zero biases would hide a wrong bias path).
GatingConfig small_gating(double dropout) {
  GatingConfig gc;
  gc.d_model = 8;
  gc.heads = 2;
  gc.layers = 2;
  gc.experts = 3;
  gc.history = 4;
  gc.banks = 2;
  gc.dropout = dropout;
  return gc;
}
void perturb(GatingTransformer<double>& gt) {
  gt.init(7);
  const V noise = test::uniform(static_cast<int64_t>(gt.params.size()), 8, 0.1);
  for (size_t i = 0; i < gt.params.size(); ++i) gt.params[i] += noise[i];
}
}  // namespace

TEST_CASE("GatingTransformer parameter gradients match finite differences", "[gating]") {
  const GatingConfig gc = small_gating(0.0);
  const int n = 3;
  GatingTransformer<double> gt(gc, n);
  perturb(gt);
  const V q = test::uniform(n * gc.d_model, 9, 1.0);
  V hist = test::uniform(n * gc.history * gc.d_model, 10, 1.0);
  for (int i = 0; i < gc.d_model; ++i) hist[(n * gc.history - 1) * gc.d_model + i] = 0.0;  // a zero-padded row
  const int outn = n * 2 * gc.experts * gc.d_model;
  const V R = test::uniform(outn, 14, 1.0);
  V out(outn);
  for (int bank : {0, 1}) {
    auto f = [&] {
      gt.forward(out.data(), q.data(), hist.data(), n, bank);
      double s = 0;
      for (int i = 0; i < outn; ++i) s += out[i] * R[i];
      return s;
    };
    f();
    gt.zero_grad();
    gt.backward(R.data());
    // the other bank's gradients stay zero
    for (const TensorInfo& t : gt.table().entries())
      if (t.layer != bank)
        for (int64_t k = 0; k < t.size; ++k) REQUIRE(gt.grads[static_cast<size_t>(t.offset + k)] == 0.0);
    const V an = gt.grads;
    const auto r = test::check_gradient(f, gt.params.data(), an.data(), static_cast<int64_t>(gt.params.size()), 400,
                                        [&] { return gt.relu_pattern(); });
    INFO("bank " << bank << ": " << r.first_failure);
    CHECK(r.failed == 0);
    CHECK(r.checked >= 150);  // half the points may sit in the idle bank; few ReLU kinks
  }
}

TEST_CASE("GatingTransformer with dropout: parameter and q gradients match finite differences", "[gating][dropout]") {
  // Dropout masks are a function of the key and the query index, so the forward is a fixed
  // function of the parameters and q and finite differences apply.
  const GatingConfig gc = small_gating(0.3);
  const int n = 3;
  GatingTransformer<double> gt(gc, n);
  perturb(gt);
  V q = test::uniform(n * gc.d_model, 9, 1.0);
  const V hist = test::uniform(n * gc.history * gc.d_model, 10, 1.0);
  const int outn = n * 2 * gc.experts * gc.d_model;
  const V R = test::uniform(outn, 14, 1.0);
  V out(outn), dq(q.size());
  const nn::DropoutKey key{3, RngPurpose::GatingDropout, 2};
  auto f = [&] {
    gt.forward(out.data(), q.data(), hist.data(), n, 1, &key, 5);
    double s = 0;
    for (int i = 0; i < outn; ++i) s += out[i] * R[i];
    return s;
  };
  const double with = f();
  gt.zero_grad();
  gt.backward(R.data(), dq.data());
  const V an = gt.grads;
  auto r = test::check_gradient(f, gt.params.data(), an.data(), static_cast<int64_t>(gt.params.size()), 400,
                                [&] { return gt.relu_pattern(); });
  INFO("parameters: " << r.first_failure);
  CHECK(r.failed == 0);
  CHECK(r.checked >= 150);
  r = test::check_gradient(f, q.data(), dq.data(), static_cast<int64_t>(q.size()), 64, [&] { return gt.relu_pattern(); });
  INFO("q: " << r.first_failure);
  CHECK(r.failed == 0);
  CHECK(r.checked >= 16);
  // backward without parameter gradients gives the same dq and leaves grads alone
  f();
  V dq2(q.size());
  const V before = gt.grads;
  gt.backward(R.data(), dq2.data(), false);
  CHECK(gt.grads == before);
  CHECK(dq2 == dq);
  // the masks matter, and depend on the queries' global index: evaluation (no key) and another
  // first index give other outputs
  gt.forward(out.data(), q.data(), hist.data(), n, 1);
  double s = 0;
  for (int i = 0; i < outn; ++i) s += out[i] * R[i];
  CHECK(s != with);
  gt.forward(out.data(), q.data(), hist.data(), n, 1, &key, 6);
  s = 0;
  for (int i = 0; i < outn; ++i) s += out[i] * R[i];
  CHECK(s != with);
}
