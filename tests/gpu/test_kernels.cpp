// Every CUDA kernel against its CPU op (src/nn) on random inputs. Bounds, with u = 2^-24 (float's
// unit roundoff):
// - ops whose GPU code performs the CPU's float operations in the CPU's order (residual, the
//   cached GELU backward, embedding, cross-entropy backward, AdamW; no FMA contraction on either
//   side, IEEE sqrt and division): bitwise equal;
// - GELU: the CPU's erf and exp approximations (|error| <= 9e-7 absolute and 7.5e-7 relative,
//   src/nn/elementwise_math.hpp) against CUDA's erff and expf (2 ulp each): |diff| <= 1.2e-6 (1 + |x|)
//   + 8u |value|;
// - layernorm: the same double sums in another order (a relative 1e-15, below float's rounding), so
//   the float results differ by the roundings downstream of one flipped last bit: forward
//   |diff| <= 2u |xhat w| + u |out|, statistics u |value|; input gradient 2u (|term| + |value|);
//   parameter gradients: the CPU accumulates N rows in float, the GPU in double, so the CPU's own
//   error bound (N + 2) u sum |terms| bounds the difference;
// - cross-entropy: probabilities through two exps (7.5e-7 + 2.4e-7 relative) and a double sum:
//   relative 1.2e-6; the loss log(s) + max - logit: 1.2e-6 + 2u |loss|;
// - top-k router: the same selection on the same scores (indices bitwise), the gates through
//   CUDA's double exp (1 ulp in double, far below float's rounding): |diff| <= u |gate|; the
//   backward's float and double operations in the CPU's order: bitwise;
// - cuBLAS linear: both sides' dot-product error bounds, 2 K u sum |x w| + u |out| (K = IC);
// - Gaussian router scores: against the CPU op in double on the same float inputs, within
//   (K + c) u times the expression evaluated on absolute values (the standard bound for a sum of
//   K products in float, K = C forward; N for the parameter gradients, E for the input gradient;
//   c counts the roundings outside the sums: the float inputs w, m, x^2 and the elementwise tail);
// - the RWKV-7 recurrence: against the CPU op in double on the same float inputs. Every value is
//   a chain of float operations whose first-order error is at most u times its evaluation on
//   absolute values per operation on its longest dependency path: per token N adds for sa, 3 for
//   the update, and about 8 for the decay (two expf of 2 ulp each, the sigmoid's add and divide);
//   so at token t (from 1) |y - truth| <= (t (N + 12) + N + 2) u Ay and the state checkpoints
//   within t (N + 12) u AS, Ay and AS the recurrence evaluated on absolute values;
// - dropout: the same Philox words against the same threshold (masks bitwise), one product per
//   element (bitwise);
// - MoE dispatch (integers: bitwise), combine and its backward, scatter-add (the CPU's float and
//   double operations in the CPU's order: bitwise);
// - the reproducible shard sum: integer sums and exact scalings by powers of two, one rounding
//   to double and one to float, as on the CPU: bitwise.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/param_table.hpp"
#include "cuda/kernels.hpp"
#include "nn/adamw.hpp"
#include "nn/dropout.hpp"
#include "nn/moe.hpp"
#include "nn/ops.hpp"
#include "nn/wkv7.hpp"
#include "parallel/layout.hpp"

using namespace hyperrnn;
using cuda::DeviceBuffer;

namespace {
constexpr double u = 1.0 / (1 << 24);

std::vector<float> randn(std::size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

template <class T>
DeviceBuffer<T> dev(const std::vector<T>& h) {
  DeviceBuffer<T> b(h.size());
  b.upload(h);
  return b;
}

// max over i of |a - b| / bound_i (<= 1 passes)
template <class F>
double worst(const std::vector<float>& gpu, const std::vector<float>& cpu, F bound) {
  REQUIRE(gpu.size() == cpu.size());
  double w = 0.0;
  for (std::size_t i = 0; i < gpu.size(); ++i) w = std::max(w, std::abs(double(gpu[i]) - cpu[i]) / (bound(i) + 1e-38));
  return w;
}
}  // namespace

TEST_CASE("GPU elementwise kernels equal the CPU ops", "[gpu]") {
  const int64_t n = 100003;  // not a multiple of any block size
  const auto x = randn(n, 1, 3.0f), y = randn(n, 2);
  auto dx = dev(x), dy = dev(y);
  DeviceBuffer<float> out(n), grad(n);
  std::vector<float> co(n), cg(n);
  cuda::gelu_forward_grad(out.data(), grad.data(), dx.data(), n);
  nn::gelu_forward_grad<float>(co.data(), cg.data(), x.data(), n);
  const auto go = out.download(), gg = grad.download();
  CHECK(worst(go, co, [&](std::size_t i) { return 1.2e-6 * (1 + std::abs(x[i])) + 8 * u * std::abs(co[i]); }) <= 1.0);
  CHECK(worst(gg, cg, [&](std::size_t i) { return 1.2e-6 * (1 + std::abs(x[i])) + 8 * u * std::abs(cg[i]); }) <= 1.0);

  // given the same cached derivative, the backward is one product: bitwise
  auto dcg = dev(cg);
  cuda::gelu_backward_cached(out.data(), dy.data(), dcg.data(), n);
  nn::gelu_backward_cached<float>(co.data(), y.data(), cg.data(), n);
  CHECK(out.download() == co);
  cuda::residual_forward(out.data(), dx.data(), dy.data(), n);
  nn::residual_forward<float>(co.data(), x.data(), y.data(), n);
  CHECK(out.download() == co);
}

TEST_CASE("GPU embedding equals the CPU op", "[gpu]") {
  const int B = 3, Tn = 17, C = 24, V = 50;
  const auto wte = randn(V * C, 3), wpe = randn(Tn * C, 4);
  std::vector<int32_t> tok(B * Tn);
  for (int i = 0; i < B * Tn; ++i) tok[i] = (i * 7 + 3) % V;
  auto dwte = dev(wte), dwpe = dev(wpe);
  auto dtok = dev(tok);
  DeviceBuffer<float> out(B * Tn * C);
  std::vector<float> co(B * Tn * C);
  cuda::embedding_forward(out.data(), dtok.data(), dwte.data(), dwpe.data(), B, Tn, C);
  nn::embedding_forward<float>(co.data(), tok.data(), wte.data(), wpe.data(), B, Tn, C);
  CHECK(out.download() == co);
}

TEST_CASE("GPU layernorm forward and backward against the CPU op", "[gpu]") {
  for (int C : {24, 64, 300}) {  // below, at and above one row per block's thread count
    const int N = 37;
    const auto x = randn(N * C, 5 + C, 2.0f), w = randn(C, 6), b = randn(C, 7), d = randn(N * C, 8);
    auto dx = dev(x), dw = dev(w), db = dev(b), dd = dev(d);
    DeviceBuffer<float> out(N * C), mean(N), rstd(N);
    std::vector<float> co(N * C), cm(N), cr(N);
    cuda::layernorm_forward(out.data(), mean.data(), rstd.data(), dx.data(), dw.data(), db.data(), N, C);
    nn::layernorm_forward<float>(co.data(), cm.data(), cr.data(), x.data(), w.data(), b.data(), N, C);
    const auto go = out.download(), gm = mean.download(), gr = rstd.download();
    CHECK(worst(gm, cm, [&](std::size_t i) { return u * std::abs(cm[i]); }) <= 1.0);
    CHECK(worst(gr, cr, [&](std::size_t i) { return u * std::abs(cr[i]); }) <= 1.0);
    CHECK(worst(go, co, [&](std::size_t i) {
            const double xhat = (x[i] - cm[i / C]) * double(cr[i / C]);
            return 2 * u * std::abs(xhat * w[i % C]) + u * std::abs(co[i]);
          }) <= 1.0);

    // backward from the CPU's statistics on both sides; dinp accumulates onto a nonzero start
    auto dm = dev(cm), dr = dev(cr);
    const auto start = randn(N * C, 9);
    auto gdin = dev(start);
    DeviceBuffer<float> gdw(C), gdb(C);
    const std::vector<float> z(C, 0.0f);
    gdw.upload(z), gdb.upload(z);
    std::vector<float> cdin = start, cdw(C, 0.0f), cdb(C, 0.0f);
    cuda::layernorm_backward(gdin.data(), gdw.data(), gdb.data(), dd.data(), dx.data(), dw.data(), dm.data(), dr.data(), N, C);
    nn::layernorm_backward<float>(cdin.data(), cdw.data(), cdb.data(), d.data(), x.data(), w.data(), cm.data(), cr.data(), N, C);
    const auto gi = gdin.download();
    CHECK(worst(gi, cdin, [&](std::size_t i) { return 2 * u * (std::abs(double(cdin[i]) - start[i]) + std::abs(cdin[i])); }) <= 1.0);
    std::vector<double> sw(C, 0.0), sb(C, 0.0);
    for (int r = 0; r < N; ++r)
      for (int c = 0; c < C; ++c) {
        const double xhat = (x[r * C + c] - cm[r]) * double(cr[r]);
        sw[c] += std::abs(xhat * d[r * C + c]);
        sb[c] += std::abs(d[r * C + c]);
      }
    CHECK(worst(gdw.download(), cdw, [&](std::size_t c) { return (N + 2) * u * sw[c]; }) <= 1.0);
    CHECK(worst(gdb.download(), cdb, [&](std::size_t c) { return (N + 2) * u * sb[c]; }) <= 1.0);
  }
}

TEST_CASE("GPU cross-entropy against the CPU op", "[gpu]") {
  const int N = 29, V = 517;
  const auto logits = randn(N * V, 10, 4.0f);
  std::vector<int32_t> t(N);
  for (int i = 0; i < N; ++i) t[i] = (i * 131) % V;
  auto dl = dev(logits);
  auto dt = dev(t);
  DeviceBuffer<float> loss(N), probs(N * V);
  std::vector<float> cl(N), cp(N * V);
  cuda::crossentropy_forward(loss.data(), probs.data(), dl.data(), dt.data(), N, V);
  nn::crossentropy_forward<float>(cl.data(), cp.data(), logits.data(), t.data(), N, V);
  CHECK(worst(probs.download(), cp, [&](std::size_t i) { return 1.2e-6 * std::abs(cp[i]) + 1e-37; }) <= 1.0);
  CHECK(worst(loss.download(), cl, [&](std::size_t i) { return 1.2e-6 + 2 * u * std::abs(cl[i]); }) <= 1.0);
  // the backward from the same probabilities: the CPU's two float operations, bitwise
  auto dp = dev(cp);
  DeviceBuffer<float> dlog(N * V);
  std::vector<float> cd(N * V);
  cuda::crossentropy_backward(dlog.data(), dp.data(), dt.data(), 1.0f / N, N, V);
  nn::crossentropy_backward<float>(cd.data(), cp.data(), t.data(), 1.0f / N, N, V);
  CHECK(dlog.download() == cd);
}

TEST_CASE("GPU AdamW equals nn::AdamW bitwise over three steps", "[gpu]") {
  const int64_t n = 5000;
  ParamTable table;
  table.add("w", {n}, TensorKind::Dense, true);
  const nn::AdamWConfig cfg{0.9, 0.999, 1e-8, 0.1};
  nn::AdamW<float> cpu(table, cfg);
  auto p = randn(n, 11);
  auto gp = dev(p);
  DeviceBuffer<float> gm(n), gv(n);
  const std::vector<float> z(n, 0.0f);
  gm.upload(z), gv.upload(z);
  for (int t = 1; t <= 3; ++t) {
    const auto g = randn(n, 20 + t);
    auto dg = dev(g);
    const double lr = 1e-3 * t;
    cpu.step(p.data(), g.data(), lr);
    // the host constants exactly as nn::AdamW::step computes them for a tensor's t-th update
    const float step_size = static_cast<float>(lr / (1.0 - std::pow(cfg.beta1, double(t))));
    const float decay = static_cast<float>(1.0 - lr * cfg.weight_decay);
    const float sqrt_bc2 = static_cast<float>(std::sqrt(1.0 - std::pow(cfg.beta2, double(t))));
    cuda::adamw_update(gp.data(), dg.data(), gm.data(), gv.data(), n, 0.9f, 0.999f, 1e-8f, step_size, decay, sqrt_bc2);
  }
  CHECK(gp.download() == p);
  CHECK(gm.download() == cpu.m);
  CHECK(gv.download() == cpu.v);
}

TEST_CASE("GPU top-k router softmax against the CPU op", "[gpu]") {
  const int N = 300, E = 16, K = 4;
  auto scores = randn(N * E, 60);
  for (int n = 0; n < N; n += 7) scores[n * E + 3] = scores[n * E + 9];  // ties: the lower expert first
  const auto dg = randn(N * K, 61);
  auto ds = dev(scores), ddg = dev(dg);
  DeviceBuffer<int32_t> idx(N * K);
  DeviceBuffer<float> gates(N * K), dsc(N * E);
  std::vector<int32_t> cidx(N * K);
  std::vector<float> cg(N * K), cds(N * E);
  cuda::topk_softmax_forward(idx.data(), gates.data(), ds.data(), N, E, K);
  nn::topk_softmax_forward<float>(cidx.data(), cg.data(), scores.data(), N, E, K);
  CHECK(idx.download() == cidx);
  CHECK(worst(gates.download(), cg, [&](std::size_t i) { return u * std::abs(cg[i]); }) <= 1.0);
  auto dcg = dev(cg);
  auto dci = dev(cidx);
  cuda::topk_softmax_backward(dsc.data(), ddg.data(), dcg.data(), dci.data(), N, E, K);
  nn::topk_softmax_backward<float>(cds.data(), dg.data(), cg.data(), cidx.data(), N, E, K);
  CHECK(dsc.download() == cds);
}

TEST_CASE("cuBLAS linear forward against the CPU op", "[gpu]") {
  cuda::Blas blas;
  for (auto [N, IC, OC] : {std::tuple{64, 64, 192}, std::tuple{130, 32, 256}, std::tuple{7, 256, 33}}) {
    const auto x = randn(N * IC, 30 + N), w = randn(OC * IC, 31), b = randn(OC, 32);
    auto dx = dev(x), dw = dev(w), db = dev(b);
    DeviceBuffer<float> out(N * OC);
    std::vector<float> co(N * OC);
    cuda::linear_forward(blas, out.data(), dx.data(), dw.data(), db.data(), N, IC, OC);
    cuda::synchronize();
    nn::linear_forward<float>(co.data(), x.data(), w.data(), b.data(), N, IC, OC);
    CHECK(worst(out.download(), co, [&](std::size_t i) {
            const int r = static_cast<int>(i / OC), c = static_cast<int>(i % OC);
            double s = 0.0;
            for (int k = 0; k < IC; ++k) s += std::abs(double(x[r * IC + k]) * w[c * IC + k]);
            return 2.0 * IC * u * s + u * std::abs(co[i]);
          }) <= 1.0);
  }
}

TEST_CASE("GPU kernels give the same bits on every run", "[gpu]") {
  const int N = 64, C = 300, V = 517;
  const auto x = randn(N * C, 40), w = randn(C, 41), b = randn(C, 42), l = randn(N * V, 43, 4.0f);
  std::vector<int32_t> t(N, 5);
  auto dx = dev(x), dw = dev(w), db = dev(b), dl = dev(l);
  auto dt = dev(t);
  std::vector<std::vector<float>> seen;
  for (int rep = 0; rep < 3; ++rep) {
    DeviceBuffer<float> out(N * C), mean(N), rstd(N), loss(N), probs(N * V);
    cuda::layernorm_forward(out.data(), mean.data(), rstd.data(), dx.data(), dw.data(), db.data(), N, C);
    cuda::crossentropy_forward(loss.data(), probs.data(), dl.data(), dt.data(), N, V);
    auto o = out.download(), p = probs.download();
    o.insert(o.end(), p.begin(), p.end());
    seen.push_back(o);
  }
  CHECK(seen[1] == seen[0]);
  CHECK(seen[2] == seen[0]);
}

// Attention: the truth is the CPU op in double on the same inputs. Bounds by first-order error
// propagation with gamma_n = n u for an n-term float dot product (cuBLAS) or sum: scores
// |ds| <= E_i = max_j gamma_hs scale sum |q k| per row; probabilities p (2 E_i + 1.2e-6 + 4u)
// (the exps' 1.2e-6 as for cross-entropy); outputs sum_j |dp_j| |v_j| + gamma_(Tn+2) sum_j p_j |v_j|.
// The backward, from the same float probabilities on both sides: dP = dO V^T within gamma_hs sum
// |dO||V|, dV = P^T dO within gamma_Tn, s = sum p dP and dZ = p (dP - s) within p (|d dP| + |d s|)
// + 2u |dZ|, dQ = scale dZ K and dK = scale dZ^T Q within the propagated |d dZ| plus gamma_Tn. The
// test takes twice each bound (second-order terms and the bounds' own rounding).
TEST_CASE("GPU attention forward and backward against the CPU op in double", "[gpu]") {
  cuda::Blas blas;
  const int B = 2, Tn = 24, C = 32, H = 4, hs = C / H, ld = 3 * C;
  const double scale = 1.0 / std::sqrt(double(hs));
  for (bool causal : {true, false}) {
    const auto qkv = randn(B * Tn * ld, 50, 1.5f), dout = randn(B * Tn * C, 51);
    const std::vector<double> qkv_d(qkv.begin(), qkv.end()), dout_d(dout.begin(), dout.end());
    std::vector<double> out_d(B * Tn * C), att_d(B * H * Tn * Tn);
    nn::attention_forward<double>(out_d.data(), att_d.data(), qkv_d.data(), B, Tn, C, H, causal);
    auto dq = dev(qkv), dd = dev(dout);
    DeviceBuffer<float> out(B * Tn * C), att(B * H * Tn * Tn), dqkv(B * Tn * ld), datt(B * H * Tn * Tn);
    cuda::attention_forward(blas, out.data(), att.data(), dq.data(), B, Tn, C, H, causal);
    const auto g_out = out.download(), g_att = att.download();
    auto Q = [&](int b, int t, int c) { return double(qkv[(int64_t(b) * Tn + t) * ld + c]); };
    auto P = [&](int b, int h, int i, int j) { return att_d[((int64_t(b) * H + h) * Tn + i) * Tn + j]; };
    std::vector<double> bound_att(att_d.size()), bound_out(out_d.size(), 0.0);
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < Tn; ++i) {
          double E = 0.0;
          for (int j = 0; j < Tn; ++j) {
            double s = 0.0;
            for (int c = 0; c < hs; ++c) s += std::abs(Q(b, i, h * hs + c) * Q(b, j, C + h * hs + c));
            E = std::max(E, hs * u * scale * s);
          }
          const double rel = 2 * E + 1.2e-6 + 4 * u;
          for (int j = 0; j < Tn; ++j) bound_att[((int64_t(b) * H + h) * Tn + i) * Tn + j] = rel * P(b, h, i, j) + 1e-30;
          for (int c = 0; c < hs; ++c) {
            double s = 0.0;
            for (int j = 0; j < Tn; ++j) s += P(b, h, i, j) * std::abs(Q(b, j, 2 * C + h * hs + c));
            bound_out[(int64_t(b) * Tn + i) * C + h * hs + c] = s * (rel + (Tn + 2) * u);
          }
        }
    auto vs_truth = [](const std::vector<float>& g, const std::vector<double>& t, const std::vector<double>& bound) {
      double w = 0.0;
      for (std::size_t i = 0; i < g.size(); ++i) w = std::max(w, std::abs(g[i] - t[i]) / (2 * bound[i] + 1e-30));
      return w;
    };
    CHECK(vs_truth(g_att, att_d, bound_att) <= 1.0);
    CHECK(vs_truth(g_out, out_d, bound_out) <= 1.0);

    // backward from the CPU's float probabilities on both sides
    std::vector<float> cout_f(B * Tn * C), catt_f(B * H * Tn * Tn);
    nn::attention_forward<float>(cout_f.data(), catt_f.data(), qkv.data(), B, Tn, C, H, causal);
    const std::vector<double> pa(catt_f.begin(), catt_f.end());
    std::vector<double> dqkv_d(B * Tn * ld), datt_d(B * H * Tn * Tn);
    nn::attention_backward<double>(dqkv_d.data(), datt_d.data(), dout_d.data(), qkv_d.data(), pa.data(), B, Tn, C, H, causal);
    auto datt_in = dev(catt_f);
    cuda::attention_backward(blas, dqkv.data(), datt.data(), dd.data(), dq.data(), datt_in.data(), B, Tn, C, H, causal);
    const auto g_dqkv = dqkv.download();
    std::vector<double> bound(dqkv_d.size(), 0.0);
    auto D = [&](int b, int t, int c) { return double(dout[(int64_t(b) * Tn + t) * C + c]); };
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        auto p = [&](int i, int j) { return pa[((int64_t(b) * H + h) * Tn + i) * Tn + j]; };
        std::vector<double> dP(Tn * Tn), edP(Tn * Tn), edZ(Tn * Tn), aZ(Tn * Tn);
        for (int i = 0; i < Tn; ++i)
          for (int j = 0; j < Tn; ++j) {
            double s = 0.0, a = 0.0;
            for (int c = 0; c < hs; ++c) {
              s += D(b, i, h * hs + c) * Q(b, j, 2 * C + h * hs + c);
              a += std::abs(D(b, i, h * hs + c) * Q(b, j, 2 * C + h * hs + c));
            }
            dP[i * Tn + j] = s, edP[i * Tn + j] = hs * u * a;
          }
        for (int i = 0; i < Tn; ++i) {
          double s = 0.0, es = 0.0, as = 0.0;
          for (int j = 0; j < Tn; ++j) {
            s += p(i, j) * dP[i * Tn + j];
            es += p(i, j) * edP[i * Tn + j];
            as += std::abs(p(i, j) * dP[i * Tn + j]);
          }
          es += Tn * u * as;
          for (int j = 0; j < Tn; ++j) {
            const double z = p(i, j) * (dP[i * Tn + j] - s);
            aZ[i * Tn + j] = std::abs(z);
            edZ[i * Tn + j] = p(i, j) * (edP[i * Tn + j] + es) + 2 * u * std::abs(z);
          }
        }
        for (int t = 0; t < Tn; ++t)
          for (int c = 0; c < hs; ++c) {
            double bq = 0.0, bk = 0.0, bv = 0.0;
            for (int j = 0; j < Tn; ++j) {
              bq += scale * (edZ[t * Tn + j] + Tn * u * aZ[t * Tn + j]) * std::abs(Q(b, j, C + h * hs + c));
              bk += scale * (edZ[j * Tn + t] + Tn * u * aZ[j * Tn + t]) * std::abs(Q(b, j, h * hs + c));
              bv += Tn * u * p(j, t) * std::abs(D(b, j, h * hs + c));
            }
            const int64_t row = (int64_t(b) * Tn + t) * ld + h * hs + c;
            bound[row] = bq, bound[row + C] = bk, bound[row + 2 * C] = bv;
          }
      }
    CHECK(vs_truth(g_dqkv, dqkv_d, bound) <= 1.0);
  }
}

TEST_CASE("GPU shard sum against the CPU's ShardSum, bitwise", "[gpu]") {
  // 8 shards over two ranges (blocks of 256 from each range's start): magnitudes spread over 2^-60
  // .. 2^60 within blocks, a block of zeros, a NaN block, an infinity block, the largest finite
  // magnitude, values near float's smallest normal
  const int S = 8;
  const int64_t n = 2600;
  const std::vector<std::pair<int64_t, int64_t>> ranges = {{0, 700}, {700, n}};
  std::vector<std::vector<float>> host;
  std::mt19937_64 g(77);
  std::uniform_int_distribution<int> ex(-60, 60);
  std::uniform_real_distribution<double> un(-1.0, 1.0);
  for (int s = 0; s < S; ++s) {
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = static_cast<float>(std::ldexp(un(g), ex(g)));
    for (int64_t i = 956; i < 1212; ++i) v[static_cast<std::size_t>(i)] = 0.0f;  // the block [956, 1212) of the second range
    v[1500] = s == 3 ? std::numeric_limits<float>::quiet_NaN() : v[1500];
    v[1800] = s == 6 ? -std::numeric_limits<float>::infinity() : v[1800];
    v[2000] = s == 1 ? std::numeric_limits<float>::max() : v[2000];
    v[2300] = s == 2 ? 1.5e-38f : v[2300];
    host.push_back(std::move(v));
  }
  // CPU: one process holding every shard
  Parallel one(nullptr, S, 0);
  std::vector<const float*> hp;
  for (const auto& v : host) hp.push_back(v.data());
  std::vector<float> ref(static_cast<std::size_t>(n), -1.0f);
  ShardSum<float>().sum(ref.data(), hp, ranges, one);
  // GPU
  std::vector<DeviceBuffer<float>> dev;
  std::vector<const float*> dp;
  for (const auto& v : host) {
    dev.emplace_back(v.size());
    dev.back().upload(v);
  }
  for (const auto& d : dev) dp.push_back(d.data());
  DeviceBuffer<float> out(static_cast<std::size_t>(n));
  cuda::shard_sum(out.data(), dp, ranges, S, nullptr);
  const std::vector<float> got = out.download();
  int64_t nan_ref = 0, differ = 0;
  for (int64_t i = 0; i < n; ++i) {
    nan_ref += std::isnan(ref[static_cast<std::size_t>(i)]);
    differ += std::memcmp(&got[static_cast<std::size_t>(i)], &ref[static_cast<std::size_t>(i)], sizeof(float)) != 0;
  }
  CHECK(nan_ref == 2 * 256);  // the NaN and the infinity poison their blocks only
  CHECK(differ == 0);
}

TEST_CASE("GPU dropout masks and their application equal the CPU's, bitwise", "[gpu]") {
  const uint64_t seed = 0x123456789abcdefULL;
  const uint32_t step = 4000000000u, thr = nn::dropout_threshold(0.37);
  for (int64_t n : {1, 3, 4, 5, 63, 64, 65, 127, 1000, 4099}) {
    for (uint32_t index : {0u, 7u, 0xfffffff0u}) {
      std::vector<uint8_t> cpu(static_cast<std::size_t>(n));
      nn::dropout_mask(cpu.data(), n, nn::DropoutKey{seed, RngPurpose::Dropout, step}, index, thr);
      DeviceBuffer<uint8_t> keep(static_cast<std::size_t>(n));
      cuda::dropout_mask(keep.data(), n, seed, static_cast<uint32_t>(RngPurpose::Dropout), step, index, thr);
      INFO("n " << n << ", index " << index);
      CHECK(keep.download() == cpu);
      const std::vector<float> x = randn(static_cast<std::size_t>(n), 40 + static_cast<uint64_t>(n));
      std::vector<float> ref(x.size()), refb(x.size());
      const float scale = 1.0f / (1.0f - 0.37f);
      nn::dropout_forward<float>(ref.data(), x.data(), cpu.data(), scale, n);
      nn::dropout_backward<float>(refb.data(), x.data(), cpu.data(), scale, n);
      DeviceBuffer<float> dx(x.size()), dout(x.size()), dback(x.size());
      dx.upload(x);
      cuda::dropout_forward(dout.data(), dx.data(), keep.data(), scale, n);
      cuda::dropout_backward(dback.data(), dx.data(), keep.data(), scale, n);
      CHECK(dout.download() == ref);
      CHECK(dback.download() == refb);
    }
  }
  // and the share kept is 1 - p within 4 standard deviations on a long mask
  const int64_t n = 1 << 20;
  DeviceBuffer<uint8_t> keep(static_cast<std::size_t>(n));
  cuda::dropout_mask(keep.data(), n, seed, static_cast<uint32_t>(RngPurpose::Dropout), 1, 2, thr);
  const std::vector<uint8_t> k = keep.download();
  double kept = 0;
  for (uint8_t b : k) kept += b;
  CHECK(std::abs(kept / n - 0.63) <= 4.0 * std::sqrt(0.37 * 0.63 / n));
}

TEST_CASE("GPU MoE dispatch, combine and scatter-add equal the CPU's, bitwise", "[gpu]") {
  for (const bool dyn : {false, true})
  for (const auto& [N, K, E, C] : std::vector<std::array<int, 4>>{{1, 1, 1, 8}, {300, 2, 4, 64}, {1000, 4, 8, 32}, {257, 3, 16, 17}}) {
    INFO("N " << N << ", K " << K << ", E " << E << ", C " << C << (dyn ? ", dynamic top-k" : ""));
    // dynamic top-k: samples of 5 tokens (the last one shorter), each with its own k in [1, K]
    const int st = 5;
    std::vector<int32_t> sk(static_cast<std::size_t>((N + st - 1) / st));
    for (std::size_t q = 0; q < sk.size(); ++q) sk[q] = 1 + static_cast<int32_t>((q * 7 + 3) % static_cast<std::size_t>(K));
    auto active = [&](int64_t p) { return !dyn || p % K < sk[static_cast<std::size_t>((p / K) / st)]; };
    DeviceBuffer<int32_t> dsk(sk.size());
    dsk.upload(sk);
    const int32_t* skp = dyn ? dsk.data() : nullptr;
    // top-k indices: K distinct experts per token, in a random order
    std::mt19937_64 g(1000 + N);
    std::vector<int32_t> idx(static_cast<std::size_t>(N) * K);
    std::vector<int32_t> perm(static_cast<std::size_t>(E));
    for (int n = 0; n < N; ++n) {
      for (int e = 0; e < E; ++e) perm[static_cast<std::size_t>(e)] = e;
      std::shuffle(perm.begin(), perm.end(), g);
      for (int j = 0; j < K; ++j) idx[static_cast<std::size_t>(n) * K + j] = perm[static_cast<std::size_t>(j)];
    }
    const int64_t A = int64_t(N) * K;
    // oracle: expert by expert, the pairs of that expert in (token, slot) order
    std::vector<int32_t> offsets(static_cast<std::size_t>(E) + 1, 0), tok(static_cast<std::size_t>(A)), pos(static_cast<std::size_t>(A), -1);
    int32_t row = 0;
    for (int e = 0; e < E; ++e) {
      offsets[static_cast<std::size_t>(e)] = row;
      for (int64_t p = 0; p < A; ++p)
        if (active(p) && idx[static_cast<std::size_t>(p)] == e) tok[static_cast<std::size_t>(row)] = static_cast<int32_t>(p / K), pos[static_cast<std::size_t>(p)] = row++;
    }
    offsets[static_cast<std::size_t>(E)] = row;
    const std::vector<float> inp = randn(static_cast<std::size_t>(N) * C, 7);
    std::vector<float> xs_ref(static_cast<std::size_t>(A) * C);
    for (int64_t a = 0; a < row; ++a)
      for (int c = 0; c < C; ++c) xs_ref[static_cast<std::size_t>(a * C + c)] = inp[static_cast<std::size_t>(int64_t(tok[static_cast<std::size_t>(a)]) * C + c)];
    DeviceBuffer<int32_t> didx(idx.size()), doff(offsets.size()), dtok(tok.size()), dpos(pos.size());
    DeviceBuffer<float> dinp(inp.size()), dxs(xs_ref.size());
    didx.upload(idx);
    dinp.upload(inp);
    dxs.upload(std::vector<float>(xs_ref.size(), 0.0f));
    cuda::moe_dispatch(doff.data(), dtok.data(), dpos.data(), dxs.data(), didx.data(), dinp.data(), N, K, E, C, skp, st);
    CHECK(doff.download() == offsets);
    const std::vector<int32_t> tok_g = dtok.download();
    CHECK(std::equal(tok.begin(), tok.begin() + row, tok_g.begin()));  // the rows in use
    CHECK(dpos.download() == pos);
    CHECK(dxs.download() == xs_ref);
    // combine, its backward and the scatter-add against the CPU ops on the same dispatch
    const std::vector<float> ys = randn(static_cast<std::size_t>(A) * C, 8), gates = randn(static_cast<std::size_t>(A), 9),
                             dout = randn(static_cast<std::size_t>(N) * C, 10), dxsv = randn(static_cast<std::size_t>(A) * C, 11),
                             dinp0 = randn(static_cast<std::size_t>(N) * C, 12);
    nn::MoeCache<float> mc{};
    mc.ys = const_cast<float*>(ys.data());
    mc.gates = const_cast<float*>(gates.data());
    mc.pos = pos.data();
    nn::MoeDims md;
    md.N = N, md.K = K, md.C = C, md.E = E, md.F = 1;
    if (dyn) md.sample_k = sk.data(), md.sample_tokens = st;
    std::vector<float> out_ref(static_cast<std::size_t>(N) * C), dys_ref(ys.size()), dg_ref(gates.size()), sc_ref = dinp0;
    nn::moe_combine<float>(out_ref.data(), mc, md);
    nn::moe_scatter_add<float>(sc_ref.data(), dxsv.data(), mc, md);
    DeviceBuffer<float> dys(ys.size()), dg(gates.size()), ddout(dout.size()), dout_c(out_ref.size()), ddys(ys.size()), ddg(gates.size()),
        ddx(dxsv.size()), dsc(dinp0.size());
    dys.upload(ys), dg.upload(gates), ddout.upload(dout), ddx.upload(dxsv), dsc.upload(dinp0);
    ddys.upload(std::vector<float>(ys.size(), 0.0f));
    // dys_ref is zero (inactive rows stay as they were on both sides)
    nn::moe_combine_backward<float>(dys_ref.data(), dg_ref.data(), dout.data(), mc, md);
    cuda::moe_combine(dout_c.data(), dys.data(), dg.data(), dpos.data(), N, K, C, skp, st);
    cuda::moe_combine_backward(ddys.data(), ddg.data(), ddout.data(), dys.data(), dg.data(), dpos.data(), N, K, C, skp, st);
    cuda::moe_scatter_add(dsc.data(), ddx.data(), dpos.data(), N, K, C);
    CHECK(dout_c.download() == out_ref);
    CHECK(ddys.download() == dys_ref);
    CHECK(ddg.download() == dg_ref);
    CHECK(dsc.download() == sc_ref);
    if (dyn) {  // the dynamic gates after a top-k on random scores
      const std::vector<float> scores = randn(static_cast<std::size_t>(N) * E, 13);
      std::vector<int32_t> tidx(static_cast<std::size_t>(N) * K);
      std::vector<float> tg(static_cast<std::size_t>(N) * K);
      nn::topk_softmax_forward<float>(tidx.data(), tg.data(), scores.data(), N, E, K);
      std::vector<float> gref = tg;
      nn::dynamic_topk_gates<float>(gref.data(), scores.data(), tidx.data(), 0, N, md);
      DeviceBuffer<float> dscore(scores.size()), dgt(tg.size());
      DeviceBuffer<int32_t> dti(tidx.size());
      dscore.upload(scores), dgt.upload(tg), dti.upload(tidx);
      cuda::topk_dynamic_gates(dgt.data(), dscore.data(), dti.data(), N, E, K, dsk.data(), st);
      const std::vector<float> gg = dgt.download();
      double worst = 0.0;  // the CPU's expressions with CUDA's double exp (1 ulp in double): u |gate|
      for (std::size_t q = 0; q < gg.size(); ++q) worst = std::max(worst, std::abs(gg[q] - gref[q]) / (u * std::abs(gref[q]) + 1e-300));
      CHECK(worst <= 1.0);
    }
  }
}

TEST_CASE("GPU Gaussian router scores forward and backward against the CPU op in double", "[gpu]") {
  const int N = 300, C = 32, E = 8;
  const std::vector<float> x = randn(static_cast<std::size_t>(N) * C, 21), mu = randn(static_cast<std::size_t>(E) * C, 22, 0.5f),
                           ls = randn(static_cast<std::size_t>(E) * C, 23, 0.3f), G = randn(static_cast<std::size_t>(N) * E, 24, 0.1f);
  auto dbl = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  // forward
  DeviceBuffer<float> dx(x.size()), dmu_in(mu.size()), dls_in(ls.size()), sc(static_cast<std::size_t>(N) * E), w(mu.size()), m(mu.size()),
      c(static_cast<std::size_t>(E)), sq(x.size());
  dx.upload(x), dmu_in.upload(mu), dls_in.upload(ls);
  cuda::Blas blas;
  cuda::gaussian_scores_forward(blas, sc.data(), w.data(), m.data(), c.data(), sq.data(), dx.data(), dmu_in.data(), dls_in.data(), N, C, E);
  std::vector<double> sc_d(static_cast<std::size_t>(N) * E), w_d(mu.size()), m_d(mu.size()), c_d(static_cast<std::size_t>(E)), sq_d(x.size());
  const std::vector<double> x_d = dbl(x), mu_d = dbl(mu), ls_d = dbl(ls), G_d = dbl(G);
  nn::gaussian_scores_forward<double>(sc_d.data(), w_d.data(), m_d.data(), c_d.data(), sq_d.data(), x_d.data(), mu_d.data(), ls_d.data(), N, C, E);
  const std::vector<float> sc_g = sc.download(), w_g = w.download(), m_g = m.download(), c_g = c.download(), sq_g = sq.download();
  double worst = 0.0;
  for (std::size_t k = 0; k < w_g.size(); ++k) {
    worst = std::max(worst, std::abs(w_g[k] - w_d[k]) / (2 * u * std::abs(w_d[k])));
    worst = std::max(worst, std::abs(m_g[k] - m_d[k]) / (3 * u * std::abs(m_d[k]) + 1e-300));
  }
  for (int e = 0; e < E; ++e) {
    double terms = 0.0;
    for (int i = 0; i < C; ++i) {
      const std::size_t k = static_cast<std::size_t>(e) * C + i;
      terms += 0.5 * mu_d[k] * mu_d[k] * w_d[k] + std::abs(ls_d[k]) + 0.92;
    }
    worst = std::max(worst, std::abs(c_g[static_cast<std::size_t>(e)] - c_d[static_cast<std::size_t>(e)]) / (2 * u * (std::abs(c_d[static_cast<std::size_t>(e)]) + terms)));
  }
  for (std::size_t k = 0; k < sq_g.size(); ++k) CHECK(sq_g[k] == x[k] * x[k]);
  for (int n = 0; n < N; ++n)
    for (int e = 0; e < E; ++e) {
      double a = std::abs(c_d[static_cast<std::size_t>(e)]);
      for (int i = 0; i < C; ++i) {
        const std::size_t xi = static_cast<std::size_t>(n) * C + i, k = static_cast<std::size_t>(e) * C + i;
        a += 0.5 * x_d[xi] * x_d[xi] * w_d[k] + std::abs(x_d[xi] * m_d[k]);
      }
      const std::size_t o = static_cast<std::size_t>(n) * E + e;
      worst = std::max(worst, std::abs(sc_g[o] - sc_d[o]) / ((2 * C + 8) * u * a));
    }
  CHECK(worst <= 1.0);
  // backward on the same float w, m, x^2 (the GPU forward's)
  DeviceBuffer<float> dG(G.size()), dinp(x.size()), dmu(mu.size()), dls(ls.size()), scratch(static_cast<std::size_t>(3 * E * C + E));
  dG.upload(G);
  dmu.upload(std::vector<float>(mu.size(), 0.0f)), dls.upload(std::vector<float>(ls.size(), 0.0f));
  cuda::gaussian_scores_backward(blas, dinp.data(), dmu.data(), dls.data(), scratch.data(), dG.data(), dx.data(), sq.data(), dmu_in.data(),
                                 w.data(), m.data(), N, C, E);
  const std::vector<double> wf = dbl(w_g), mf = dbl(m_g), sqf = dbl(sq_g);
  std::vector<double> dinp_d(x.size()), dmu_d(mu.size(), 0.0), dls_d(ls.size(), 0.0), ec_d(static_cast<std::size_t>(3 * E * C + E));
  nn::gaussian_scores_backward<double>(dinp_d.data(), dmu_d.data(), dls_d.data(), ec_d.data(), G_d.data(), x_d.data(), sqf.data(), mu_d.data(),
                                       wf.data(), mf.data(), N, C, E);
  const std::vector<float> dinp_g = dinp.download(), dmu_g = dmu.download(), dls_g = dls.download();
  double worst_b = 0.0;
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < C; ++i) {
      double a = 0.0;
      for (int e = 0; e < E; ++e) {
        const double g = std::abs(G_d[static_cast<std::size_t>(n) * E + e]);
        a += g * (std::abs(mf[static_cast<std::size_t>(e) * C + i]) + std::abs(x_d[static_cast<std::size_t>(n) * C + i]) * wf[static_cast<std::size_t>(e) * C + i]);
      }
      const std::size_t o = static_cast<std::size_t>(n) * C + i;
      worst_b = std::max(worst_b, std::abs(dinp_g[o] - dinp_d[o]) / ((E + 4) * u * a));
    }
  for (int e = 0; e < E; ++e)
    for (int i = 0; i < C; ++i) {
      double gxa = 0.0, gx2a = 0.0, gsa = 0.0;
      for (int n = 0; n < N; ++n) {
        const double g = std::abs(G_d[static_cast<std::size_t>(n) * E + e]);
        gxa += g * std::abs(x_d[static_cast<std::size_t>(n) * C + i]);
        gx2a += g * sqf[static_cast<std::size_t>(n) * C + i];
        gsa += g;
      }
      const std::size_t k = static_cast<std::size_t>(e) * C + i;
      const double am = std::abs(mu_d[k]);
      worst_b = std::max(worst_b, std::abs(dmu_g[k] - dmu_d[k]) / ((N + 5) * u * wf[k] * (gxa + am * gsa)));
      worst_b = std::max(worst_b, std::abs(dls_g[k] - dls_d[k]) / ((N + 6) * u * (wf[k] * (gx2a + 2 * am * gxa + am * am * gsa) + gsa)));
    }
  CHECK(worst_b <= 1.0);
}

TEST_CASE("GPU RWKV-7 recurrence forward against the CPU op in double", "[gpu]") {
  for (const auto& [T, H, N, chunk] : std::vector<std::array<int, 4>>{{40, 2, 16, 16}, {33, 3, 8, 5}, {20, 1, 64, 7}}) {
    INFO("T " << T << ", H " << H << ", N " << N << ", chunk " << chunk);
    const std::size_t n = static_cast<std::size_t>(T) * H * N, SS = static_cast<std::size_t>(H) * N * N;
    const std::vector<float> r = randn(n, 31, 0.5f), uu = randn(n, 32), k = randn(n, 33, 0.5f), v = randn(n, 34, 0.5f),
                             a = randn(n, 35, 0.3f), b = randn(n, 36, 0.3f), s0 = randn(SS, 37, 0.2f);
    const int64_t nck = (T + chunk - 1) / chunk;
    DeviceBuffer<float> dr(n), du(n), dk(n), dv(n), da(n), db(n), ds0(SS), dy(n), dck(static_cast<std::size_t>(nck) * SS), dso(SS);
    dr.upload(r), du.upload(uu), dk.upload(k), dv.upload(v), da.upload(a), db.upload(b), ds0.upload(s0);
    cuda::wkv7_forward(dy.data(), dck.data(), dr.data(), du.data(), dk.data(), dv.data(), da.data(), db.data(), T, H, N, chunk,
                       ds0.data(), dso.data());
    const std::vector<float> y = dy.download(), ck = dck.download(), so = dso.download();
    auto dbl = [](const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); };
    const std::vector<double> rd = dbl(r), ud = dbl(uu), kd = dbl(k), vd = dbl(v), ad = dbl(a), bd = dbl(b), s0d = dbl(s0);
    nn::Wkv7Dims d;
    d.T = T, d.H = H, d.N = N, d.chunk = chunk;
    std::vector<double> yt(n), ckt(static_cast<std::size_t>(nck) * SS), sot(SS);
    nn::wkv7_forward<double>(yt.data(), ckt.data(), rd.data(), ud.data(), kd.data(), vd.data(), ad.data(), bd.data(), d, s0d.data(), sot.data());
    // the recurrence on absolute values (decays are in (0, 1): their own value)
    std::vector<double> AS(SS);
    for (std::size_t q = 0; q < SS; ++q) AS[q] = std::abs(s0d[q]);
    double worst = 0.0;
    for (int t = 0; t < T; ++t) {
      const double ct = static_cast<double>(t) * (N + 12) * u;  // the path before this token
      if (t % chunk == 0)
        for (std::size_t q = 0; q < SS; ++q) {
          const std::size_t o = static_cast<std::size_t>(t / chunk) * SS + q;
          worst = std::max(worst, std::abs(ck[o] - ckt[o]) / (ct * AS[q] + 1e-300));
        }
      for (int h = 0; h < H; ++h) {
        const std::size_t o = (static_cast<std::size_t>(t) * H + h) * N;
        for (int i = 0; i < N; ++i) {
          double* row = AS.data() + (static_cast<std::size_t>(h) * N + i) * N;
          double sa = 0.0, ay = 0.0;
          for (int j = 0; j < N; ++j) sa += row[j] * std::abs(ad[o + j]);
          for (int j = 0; j < N; ++j) {
            row[j] = row[j] * nn::wkv7_decay(ud[o + j]) + sa * std::abs(bd[o + j]) + std::abs(kd[o + j] * vd[o + i]);
            ay += row[j] * std::abs(rd[o + j]);
          }
          const double bound = (static_cast<double>(t + 1) * (N + 12) + N + 2) * u * ay;
          worst = std::max(worst, std::abs(y[o + i] - yt[o + i]) / bound);
        }
      }
    }
    for (std::size_t q = 0; q < SS; ++q) worst = std::max(worst, std::abs(so[q] - sot[q]) / (T * (N + 12) * u * AS[q]));
    CHECK(worst <= 1.0);
  }
}
