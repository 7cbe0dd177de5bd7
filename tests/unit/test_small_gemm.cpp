// core/small_gemm (the attention's register-tiled products) on every path this CPU has:
// - bitwise against the chain its header defines, written here independently one element at a
//   time (std::fma over increasing k from +0, then * alpha), so the paths agree with each other
//   bit for bit whatever their tiles;
// - within the forward error bound of a K-term dot product against a double evaluation,
//   |c - ref| <= (gamma_K + u) |alpha| sum_k |a_ik b_kj|, gamma_K = K u / (1 - K u), u = 2^-24
//   (this guards the definition the first check shares with the kernel);
// - the triangular ranges: every needed entry right, nothing written outside C's rows and columns
//   nor (cols_to_row_end) past the documented 16-column groups;
// - its FLOP account: 2 M N K without a triangle; with one, between the triangle's own work and
//   the full product.
// Shapes: the models' heads (50 x 50 x 8, 64 x 64 x 16, 50 x 8 x 50, 64 x 16 x 64, head size 32
// and 64) and odd ones (row and column tails of every width, K = 1, M = 1, N = 1).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/blas.hpp"
#include "core/rng.hpp"
#include "core/small_gemm.hpp"
#include "nn/ops.hpp"

using namespace hyperrnn;

namespace {
constexpr float kSentinel = 12345.f;

struct Shape {
  int M, N, K;
  bool a_transposed;  // A stored K x M (the P^T and dZ^T products)
  Tri tri;
};

// needed entries of C: the ones the triangle's consumer reads
bool needed(Tri tri, int i, int j) { return tri != Tri::cols_to_row_end || j <= i; }

struct Result {
  int64_t chain_mismatch = 0, out_of_bound = 0, written_outside = 0;
  double flops = 0;
};

Result run(const Shape& s, SmallGemmPath path, uint32_t seed) {
  const int pad = 3;
  const int64_t ais = s.a_transposed ? 1 : s.K + pad, aks = s.a_transposed ? s.M + pad : 1;
  const int64_t ldb = s.N + pad, ldc = s.N + pad;
  CounterRng r(seed, RngPurpose::Init, 0, 0);
  std::vector<float> A(static_cast<size_t>(s.a_transposed ? s.K * (s.M + pad) : s.M * (s.K + pad)));
  std::vector<float> B(static_cast<size_t>(s.K) * ldb);
  for (auto& x : A) x = 2.0f * r.uniform() - 1.0f;
  for (auto& x : B) x = 2.0f * r.uniform() - 1.0f;
  auto a = [&](int i, int k) -> float& { return A[static_cast<size_t>(i * ais + k * aks)]; };
  // the zeros the triangle promises
  for (int i = 0; i < s.M; ++i)
    for (int k = 0; k < s.K; ++k)
      if ((s.tri == Tri::k_to_row_end && k > i) || (s.tri == Tri::k_from_row_begin && k < i)) a(i, k) = 0.f;
  const float alpha = 0.353553385f;
  std::vector<float> C(static_cast<size_t>(s.M + 1) * ldc, kSentinel);  // one spare row after C
  SmallGemm g{s.M, s.N, s.K, alpha, A.data(), ais, aks, B.data(), ldb, C.data(), ldc, s.tri};
  set_accounting(true);
  reset_gemm_account();
  small_gemm(g, path);
  set_accounting(false);
  Result res;
  res.flops = gemm_account().flops;
  const double u = std::ldexp(1.0, -24), gamma = s.K * u / (1 - s.K * u);
  for (int i = 0; i <= s.M; ++i)
    for (int j = 0; j < ldc; ++j) {
      const float got = C[static_cast<size_t>(i) * ldc + j];
      if (i == s.M || j >= s.N) {  // the spare row and the padding
        res.written_outside += got != kSentinel;
        continue;
      }
      if (!needed(s.tri, i, j)) {  // computed (finite) up to the next 16-column group, else untouched
        const bool may_write = j < ((i + 16) & ~15) + 16;
        res.written_outside += !may_write && got != kSentinel;
        continue;
      }
      float chain = 0.f;
      double ref = 0, mag = 0;
      for (int k = 0; k < s.K; ++k) {
        chain = std::fma(a(i, k), B[static_cast<size_t>(k) * ldb + j], chain);
        const double p = static_cast<double>(a(i, k)) * B[static_cast<size_t>(k) * ldb + j];
        ref += p;
        mag += std::abs(p);
      }
      chain *= alpha;
      res.chain_mismatch += std::memcmp(&chain, &got, sizeof got) != 0;
      ref *= alpha;
      res.out_of_bound += !(std::abs(got - ref) <= (gamma + u) * alpha * mag + 1e-30);
    }
  return res;
}
}  // namespace

TEST_CASE("small_gemm: every path is the header's fma chain, within the dot-product bound", "[small_gemm]") {
  std::vector<Shape> shapes;
  for (Tri t : {Tri::none, Tri::cols_to_row_end}) {
    shapes.push_back({50, 50, 8, false, t});    // ViT scores
    shapes.push_back({64, 64, 16, false, t});   // MQAR scores
    shapes.push_back({64, 64, 32, false, t});
    shapes.push_back({37, 45, 5, false, t});    // tails
    shapes.push_back({29, 63, 9, false, t});    // zmm tails: 4 vectors, the last of 15 lanes
    shapes.push_back({1, 1, 1, false, t});
    shapes.push_back({130, 130, 64, false, t});
  }
  for (Tri t : {Tri::none, Tri::k_to_row_end, Tri::k_from_row_begin})
    for (bool tr : {false, true}) {
      shapes.push_back({50, 8, 50, tr, t});    // ViT P v, dV, dQ, dK
      shapes.push_back({64, 16, 64, tr, t});   // MQAR
      shapes.push_back({64, 32, 64, tr, t});
      shapes.push_back({64, 64, 64, tr, t});
      shapes.push_back({33, 13, 33, tr, t});   // tails
      shapes.push_back({29, 9, 29, tr, t});    // the narrowest zmm block (9 columns), 8-row tiles and a tail
      shapes.push_back({21, 47, 21, tr, t});
      shapes.push_back({17, 1, 17, tr, t});
      shapes.push_back({1, 7, 1, tr, t});
      shapes.push_back({100, 24, 100, tr, t});
    }
  for (SmallGemmPath path : {SmallGemmPath::automatic, SmallGemmPath::avx512, SmallGemmPath::avx2, SmallGemmPath::scalar}) {
    if (!small_gemm_available(path)) {
      WARN("small_gemm path " << small_gemm_path_name(path) << " not on this CPU: not checked");
      continue;
    }
    uint32_t seed = 11;
    for (const Shape& s : shapes) {
      INFO("path " << small_gemm_path_name(path) << " M " << s.M << " N " << s.N << " K " << s.K << " A^T " << s.a_transposed
                   << " tri " << static_cast<int>(s.tri));
      const Result r = run(s, path, seed++);
      CHECK(r.chain_mismatch == 0);
      CHECK(r.out_of_bound == 0);
      CHECK(r.written_outside == 0);
      const double full = 2.0 * s.M * s.N * s.K;
      if (s.tri == Tri::none) {
        CHECK(r.flops == full);
      } else {
        // the triangle's own multiply-adds: (i + 1) per row (k or columns up to the diagonal)
        // or K - i (from it)
        double tri = 0;
        for (int i = 0; i < s.M; ++i)
          tri += s.tri == Tri::cols_to_row_end ? std::min(i + 1, s.N) * double(s.K)
                 : s.tri == Tri::k_to_row_end  ? std::min(i + 1, s.K) * double(s.N)
                                               : std::max(s.K - i, 0) * double(s.N);
        CHECK(r.flops >= 2 * tri);
        CHECK(r.flops <= full);
      }
    }
  }
}

TEST_CASE("small_gemm: the vector paths skip work under a triangle", "[small_gemm]") {
  // at the MQAR shape a triangle must save at least a third of the product on the vector paths
  // (the exact triangle saves half; tiles of 6-16 rows and 16-column groups give some back)
  for (SmallGemmPath path : {SmallGemmPath::avx512, SmallGemmPath::avx2}) {
    if (!small_gemm_available(path)) continue;
    INFO(small_gemm_path_name(path));
    for (Tri t : {Tri::cols_to_row_end, Tri::k_to_row_end, Tri::k_from_row_begin}) {
      const Shape s = t == Tri::cols_to_row_end ? Shape{64, 64, 16, false, t} : Shape{64, 16, 64, true, t};
      const Result r = run(s, path, 5);
      CHECK(r.flops <= 2.0 / 3.0 * 2.0 * 64 * 64 * 16);
    }
  }
}

// The float attention (its products through small_gemm where the CPU has AVX2 and FMA) against the
// double attention (the BLAS) on the same inputs, causal and not, with and without dropout on the
// probabilities, at shapes with row and column tails (T 37), the ViT's (T 50, head size 8) and
// MQAR's (T 64, head size 16). Tolerance: every stage is a K-term float dot product (K <= T or the
// head size) or an O(1)-operation elementwise step, three stages deep in the backward, so each
// element's error stays below a few (T + hs) u times the tensor's largest magnitude; the check
// takes 8 (T + hs + 16) u of max |double| per tensor (4.6e-5 at T 64: a skipped term or a wrong
// stride errs by 1e-2 or more).

TEST_CASE("small_gemm: the float attention against the double attention", "[small_gemm][ops]") {
  struct S {
    int B, T, C, H;
  };
  const double u = std::ldexp(1.0, -24);
  for (const S s : {S{2, 37, 32, 2}, S{3, 50, 32, 4}, S{2, 64, 64, 4}})
    for (bool causal : {true, false})
      for (bool dropout : {false, true}) {
        INFO("B " << s.B << " T " << s.T << " C " << s.C << " H " << s.H << " causal " << causal << " dropout " << dropout);
        const int64_t nqkv = int64_t(s.B) * s.T * 3 * s.C, nout = int64_t(s.B) * s.T * s.C, natt = int64_t(s.B) * s.H * s.T * s.T;
        CounterRng r(7, RngPurpose::Init, s.T, causal);
        std::vector<double> qkv(nqkv), dout(nout);
        for (auto& x : qkv) x = static_cast<float>(2.0 * r.uniform() - 1.0);
        for (auto& x : dout) x = static_cast<float>(2.0 * r.uniform() - 1.0);
        std::vector<uint8_t> keep(natt);
        for (auto& k : keep) k = r.uniform() < 0.9;
        std::vector<float> qkv_f(qkv.begin(), qkv.end()), dout_f(dout.begin(), dout.end());
        std::vector<double> out(nout), att(natt), datt(natt), dqkv(nqkv), datt_drop(natt);
        std::vector<float> out_f(nout), att_f(natt), datt_f(natt), dqkv_f(nqkv), datt_drop_f(natt);
        nn::AttnDropout<double> ad{keep.data(), 1.0 / 0.9, datt_drop.data()};
        nn::AttnDropout<float> af{keep.data(), static_cast<float>(1.0 / 0.9), datt_drop_f.data()};
        nn::attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.H, causal, dropout ? &ad : nullptr);
        nn::attention_backward(dqkv.data(), datt.data(), dout.data(), qkv.data(), att.data(), s.B, s.T, s.C, s.H, causal,
                               dropout ? &ad : nullptr);
        nn::attention_forward(out_f.data(), att_f.data(), qkv_f.data(), s.B, s.T, s.C, s.H, causal, dropout ? &af : nullptr);
        nn::attention_backward(dqkv_f.data(), datt_f.data(), dout_f.data(), qkv_f.data(), att_f.data(), s.B, s.T, s.C, s.H,
                               causal, dropout ? &af : nullptr);
        const double tol = 8.0 * (s.T + s.C / s.H + 16) * u;
        auto worst = [](const auto& f, const std::vector<double>& d) {
          double mx = 0, err = 0;
          for (size_t i = 0; i < d.size(); ++i) {
            mx = std::max(mx, std::abs(d[i]));
            err = std::max(err, std::abs(static_cast<double>(f[i]) - d[i]));
          }
          return err / mx;
        };
        const double e_out = worst(out_f, out), e_att = worst(att_f, att), e_dqkv = worst(dqkv_f, dqkv);
        INFO("errors / max: out " << e_out << " att " << e_att << " dqkv " << e_dqkv << " (tolerance " << tol << ")");
        CHECK(e_out <= tol);
        CHECK(e_att <= tol);
        CHECK(e_dqkv <= tol);
      }
}
