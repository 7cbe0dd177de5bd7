// Whole-model gradient check for every model kind, in double precision: the loss of one MQAR batch
// against finite differences at up to 24 coordinates of every tensor of the parameter table.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
#include "gradcheck.hpp"
#include "models/transformer.hpp"
#include "pilf/step.hpp"
#include "mpi/comm.hpp"

#include <cmath>
#include <stdexcept>
#include "tasks/mqar.hpp"

using namespace hyperrnn;
using test::mqar_batch;

namespace {
// Finite-difference check of every tensor of the table at up to 24 coordinates each (skipping
// points whose perturbation changes a routing decision); REQUIREs no failure. Returns
// {checked, skipped} for the caller's skip-share check.
std::pair<int, int> check_all_tensors(Transformer<double>& model, const Batch& batch, const std::vector<double>& analytic) {
  auto f = [&] { return model.forward(batch); };
  auto sig = [&] { return model.routing_hash(); };
  int checked = 0, skipped = 0;
  for (const TensorInfo& t : model.table().entries()) {
    const auto r = test::check_gradient(f, model.params.data() + t.offset, analytic.data() + t.offset, t.size, 24, sig);
    INFO("tensor " << t.name << ": " << r.first_failure << " worst " << r.worst);
    REQUIRE(r.failed == 0);
    checked += r.checked;
    skipped += r.skipped;
  }
  return {checked, skipped};
}
}  // namespace

TEST_CASE("model gradients match finite differences", "[model][grad]") {
  const std::pair<ModelKind, bool> cases[] = {{ModelKind::Dense, true}, {ModelKind::Dense, false},
                                              {ModelKind::Moe, true}, {ModelKind::GaussMoe, true},
                                              {ModelKind::GaussMoe, false}};
  for (const auto& [kind, tied] : cases) {
    INFO("model " << to_string(kind) << (tied ? ", tied embeddings" : ", separate head"));
    ModelConfig mc = test::small_model(kind, 20, 12, 8, 2, 2, 4, 2, 12);
    mc.tie_embeddings = tied;
    const int B = 3, D = 3;
    Transformer<double> model(mc, B, B * D);
    model.init(7);
    const Batch batch = mqar_batch(mc, B, D);
    model.forward(batch);
    model.zero_grad();
    model.backward();
    const auto [checked, skipped] = check_all_tensors(model, batch, model.grads);
    // Perturbations of 2e-4 flip a routing decision only next to a top-k tie: at most a fifth of
    // the probed coordinates may be skipped, or the check would prove little.
    INFO("checked " << checked << ", skipped " << skipped);
    CHECK(checked > 0);
    CHECK(skipped * 5 <= checked + skipped);
  }
}

TEST_CASE("expert token counts add up to tokens x top-k", "[model]") {
  Transformer<float> model(test::small_model(ModelKind::GaussMoe, 40, 16, 8, 2, 2, 3, 2, 8), 4, 16);
  model.init(1);
  MqarGenerator gen(test::small_mqar(40, 16, 4));
  Batch batch;
  batch.resize(4, 16);
  gen.fill(batch, 1, RngPurpose::TestData, 0, 0, 4);
  model.forward(batch);
  for (int l = 0; l < 2; ++l) {
    int sum = 0;
    for (int e = 0; e < 3; ++e) sum += model.expert_tokens()[l * 3 + e];
    CHECK(sum == 4 * 16 * 2);
  }
  CHECK(model.scored() == 16);
}

TEST_CASE("pilf model: parameter and routing-distribution gradients match finite differences", "[model][grad][pilf]") {
  // The memory router is replaced by a fixed table of (mu, log_sigma) per layer and sample, so
  // the loss is a function of the parameters and of that table only; routing_grad must be its
  // derivative w.r.t. the table (the stop-gradient makes the table data to the task loss).
  ModelConfig mc = test::small_model(ModelKind::Pilf, 20, 12, 8, 2, 2, 4, 2, 12);
  const int B = 3, D = 3, EC = mc.experts * mc.d_model;
  Transformer<double> model(mc, B, B * D);
  model.init(7);
  std::vector<std::vector<double>> table(2, test::uniform(B * 2 * EC, 21, 0.5));
  table[1] = test::uniform(B * 2 * EC, 22, 0.5);
  for (auto& t : table)
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < EC; ++i) t[static_cast<size_t>(b * 2 * EC + EC + i)] *= 0.4;  // log_sigma in [-0.2, 0.2]
  std::vector<double> seen_q(static_cast<size_t>(2 * B * mc.d_model));
  model.set_memory_router(Transformer<double>::in_order([&](int l, int, const double* q, int nb, double* mu_ls, int32_t*, const Transformer<double>::RouteKey&) {
    REQUIRE(nb == B);
    std::copy(q, q + nb * mc.d_model, seen_q.begin() + l * B * mc.d_model);
    std::copy(table[static_cast<size_t>(l)].begin(), table[static_cast<size_t>(l)].end(), mu_ls);
  }));
  const Batch batch = mqar_batch(mc, B, D);
  model.forward(batch);
  model.zero_grad();
  model.backward();
  // no router tensors in the table: routing lives outside theta's main model
  for (const TensorInfo& t : model.table().entries()) CHECK(t.kind != TensorKind::Gating);
  std::vector<std::vector<double>> rgrad(2);
  for (int l = 0; l < 2; ++l) rgrad[static_cast<size_t>(l)].assign(model.routing_grad(l), model.routing_grad(l) + model.routing_grad_size());
  auto [checked, skipped] = check_all_tensors(model, batch, model.grads);
  auto f = [&] { return model.forward(batch); };
  auto sig = [&] { return model.routing_hash(); };
  for (int l = 0; l < 2; ++l) {
    const auto r = test::check_gradient(f, table[static_cast<size_t>(l)].data(), rgrad[static_cast<size_t>(l)].data(),
                                        B * 2 * EC, 64, sig);
    INFO("routing set of layer " << l << ": " << r.first_failure);
    REQUIRE(r.failed == 0);
    checked += r.checked;
    skipped += r.skipped;
    double norm = 0;
    for (double v : rgrad[static_cast<size_t>(l)]) norm += v * v;
    CHECK(norm > 0.0);
  }
  CHECK(skipped * 5 <= checked + skipped);
  // q is each sample's mean MoE input: LayerNorm output rows average to ~0 mean per row, so the
  // mean of q over channels is ~0 (a cheap check that q is the pooled ln2 output, not the raw stream)
  for (int l = 0; l < 2; ++l)
    for (int b = 0; b < B; ++b) {
      double m = 0;
      for (int i = 0; i < mc.d_model; ++i) m += seen_q[static_cast<size_t>((l * B + b) * mc.d_model + i)];
      CHECK(std::abs(m / mc.d_model) < 1e-12);
    }
}

TEST_CASE("ViT path: image model gradients match finite differences", "[model][grad][vit]") {
  for (ModelKind kind : {ModelKind::Dense, ModelKind::GaussMoe, ModelKind::Pilf}) {
    INFO("model " << to_string(kind));
    // 8x8 images, 4x4 patches -> 4 tokens; 5 classes
    ModelConfig mc = test::small_model(kind, 5, 4, 8, 2, 2, 4, 2, 12);
    mc.image_h = mc.image_w = 8;
    mc.patch = 4;
    mc.causal = false;
    mc.tie_embeddings = false;
    const int B = 3;
    Transformer<double> model(mc, B, B);
    model.init(5);
    const std::vector<double> fixed = test::uniform(B * 2 * 4 * 8, 31, 0.3);
    model.set_memory_router(Transformer<double>::in_order([&](int, int, const double*, int, double* mu_ls, int32_t*, const Transformer<double>::RouteKey&) { std::copy(fixed.begin(), fixed.end(), mu_ls); }));
    Batch batch;
    batch.resize(B, 4);
    const std::vector<double> px = test::uniform(B * 64, 32, 1.0);
    batch.images.assign(px.begin(), px.end());
    for (int b = 0; b < B; ++b) batch.targets[static_cast<size_t>(b * 4)] = (2 * b + 1) % 5;
    const double loss = model.forward(batch);
    CHECK(model.scored() == B);
    CHECK(std::isfinite(loss));
    model.zero_grad();
    model.backward();
    const auto [checked, skipped] = check_all_tensors(model, batch, model.grads);
    CHECK(skipped * 5 <= checked + skipped);
    // the image input really matters (attention is non-causal: the last patch changes the pool)
    batch.images[63] += 1.0f;
    CHECK(model.forward(batch) != loss);
  }
}

TEST_CASE("pilf model with every sample routed by the same Gaussians equals gauss-moe", "[model][pilf]") {
  const ModelConfig g = test::small_model(ModelKind::GaussMoe, 20, 12, 8, 2, 2, 4, 2, 12);
  ModelConfig pm = g;
  pm.kind = ModelKind::Pilf;
  const int B = 3, D = 3;
  Transformer<double> gm(g, B, B * D), pl(pm, B, B * D);
  gm.init(7);
  pl.init(7);
  // perturb every parameter (the router away from its initial value), then copy the shared
  // tensors by name
  const std::vector<double> noise = test::uniform(gm.table().total(), 41, 0.3);
  for (size_t i = 0; i < gm.params.size(); ++i) gm.params[i] += noise[i];
  for (const TensorInfo& t : pl.table().entries()) {
    const TensorInfo& s = gm.table()[gm.table().find(t.name)];
    std::copy_n(gm.params.begin() + s.offset, t.size, pl.params.begin() + t.offset);
  }
  const int EC = 4 * 8;
  pl.set_memory_router(Transformer<double>::in_order([&](int l, int, const double*, int nb, double* mu_ls, int32_t*, const Transformer<double>::RouteKey&) {
    const double* mu = gm.params.data() + gm.table()[gm.table().find("layers." + std::to_string(l) + ".moe.router.mu")].offset;
    const double* ls = gm.params.data() + gm.table()[gm.table().find("layers." + std::to_string(l) + ".moe.router.log_sigma")].offset;
    for (int b = 0; b < nb; ++b) {
      std::copy_n(mu, EC, mu_ls + b * 2 * EC);
      std::copy_n(ls, EC, mu_ls + b * 2 * EC + EC);
    }
  }));
  const Batch batch = mqar_batch(g, B, D);
  CHECK(pl.forward(batch) == Approx(gm.forward(batch)).epsilon(1e-14));
  CHECK(pl.expert_tokens() == gm.expert_tokens());  // (routing_hash also covers pilf's per-sample k)
  // and the gradients: every shared tensor's, and the routing gradient summed over samples is the
  // router parameters' gradient
  gm.zero_grad();
  gm.backward();
  pl.zero_grad();
  pl.backward();
  for (const TensorInfo& t : pl.table().entries()) {
    const TensorInfo& s = gm.table()[gm.table().find(t.name)];
    for (int64_t k = 0; k < t.size; ++k)
      REQUIRE(pl.grads[static_cast<size_t>(t.offset + k)] == Approx(gm.grads[static_cast<size_t>(s.offset + k)]).epsilon(1e-12).margin(1e-15));
  }
  for (int l = 0; l < 2; ++l) {
    const double* gmu = gm.grads.data() + gm.table()[gm.table().find("layers." + std::to_string(l) + ".moe.router.mu")].offset;
    for (int i = 0; i < 2 * EC; ++i) {  // mu then log_sigma, contiguous in both layouts
      double sum = 0;
      for (int b = 0; b < B; ++b) sum += pl.routing_grad(l)[b * 2 * EC + i];
      REQUIRE(sum == Approx(gmu[i]).epsilon(1e-12).margin(1e-15));
    }
  }
}

namespace {
// A one-rank Comm that counts every call: a 1-rank run must make none.
struct CountingComm final : Comm {
  int calls = 0;
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void barrier() override { ++calls; }
  int allreduce_max(int v) override { ++calls; return v; }
  void allreduce_max(int*, std::size_t) override { ++calls; }
  void bcast_bytes(void*, std::size_t, int) override { ++calls; }
  void allreduce_sum(int64_t*, std::size_t) override { ++calls; }
  void allreduce_sum(float*, std::size_t) override { ++calls; }
  void allreduce_sum(double*, std::size_t) override { ++calls; }
  void allgather_bytes(const void*, std::size_t, void*) override { ++calls; }
  void alltoallv(const float*, const int64_t*, const int64_t*, float*, const int64_t*, const int64_t*) override { ++calls; }
  void alltoallv(const double*, const int64_t*, const int64_t*, double*, const int64_t*, const int64_t*) override { ++calls; }
  [[noreturn]] void abort(int) override { throw std::runtime_error("abort"); }
};
}  // namespace

TEST_CASE("one process running S shards computes the S = 1 loss and gradients, with no Comm call", "[model][parallel]") {
  // Shard-by-shard GEMMs and the integer shard sum change only the rounding: in double the
  // per-shard sums differ from the one-pass sums by a few ulps of the largest term (relative
  // 1e-16 x rows <= 1e-14), and the shard sum rounds each term to 2^-60 of its block's largest
  // value; 1e-12 of each tensor's largest gradient is far above both and far below any real error
  // (a shard left out or counted twice changes gradients by O(1/S)).
  for (ModelKind kind : {ModelKind::Dense, ModelKind::Moe, ModelKind::GaussMoe, ModelKind::Pilf}) {
    INFO("model " << to_string(kind));
    const ModelConfig mc = test::small_model(kind, 20, 12, 8, 2, 2, 4, 2, 12);
    const int B = 8, D = 3;
    const Batch one_shard = mqar_batch(mc, B, D);
    // pilf: a fixed routing distribution per layer stands in for the GatingTransformer
    auto router = [&](int l, int, const double*, int nb, double* mu_ls, int32_t*, const Transformer<double>::RouteKey&) {
      const int64_t n = 2LL * mc.experts * mc.d_model;
      for (int b = 0; b < nb; ++b)
        for (int64_t i = 0; i < n; ++i) mu_ls[b * n + i] = i < n / 2 ? 0.3 * std::sin(1.0 + i + 7 * l) : 0.1 * std::cos(i + l);
    };
    Transformer<double> ref(mc, B, B * D);
    ref.init(5);
    ref.set_memory_router(Transformer<double>::in_order(router));
    const double loss_ref = ref.forward(one_shard);
    ref.zero_grad();
    ref.backward();

    CountingComm comm;
    Parallel par(&comm, 4, kind == ModelKind::Dense ? 0 : mc.experts);
    Transformer<double> sharded(mc, B, B * D, &par);
    sharded.init(5);
    sharded.set_memory_router(Transformer<double>::in_order(router));
    Batch four = one_shard;
    four.shard_samples = {2, 2, 2, 2};
    const double loss = sharded.forward(four);
    sharded.zero_grad();
    sharded.backward();
    CHECK(comm.calls == 0);
    CHECK(loss == Approx(loss_ref).epsilon(1e-14));
    CHECK(sharded.scored() == ref.scored());
    for (const TensorInfo& t : ref.table().entries()) {
      double mx = 0.0, err = 0.0;
      for (int64_t i = t.offset; i < t.offset + t.size; ++i) {
        mx = std::max(mx, std::abs(ref.grads[static_cast<size_t>(i)]));
        err = std::max(err, std::abs(ref.grads[static_cast<size_t>(i)] - sharded.grads[static_cast<size_t>(i)]));
      }
      INFO("tensor " << t.name << ": max |grad| " << mx << ", max difference " << err);
      CHECK(err <= 1e-12 * mx);
    }
    // a shard missing from the sum is not within that tolerance: drop shard 3's samples' targets
    Batch partial = four;
    for (size_t i = 6 * static_cast<size_t>(mc.seq_len); i < partial.targets.size(); ++i) partial.targets[i] = -1;
    sharded.forward(partial);
    sharded.zero_grad();
    sharded.backward();
    double worst = 0.0;
    for (size_t i = 0; i < ref.grads.size(); ++i) worst = std::max(worst, std::abs(ref.grads[i] - sharded.grads[i]));
    CHECK(worst > 1e-6);
  }
}

TEST_CASE("class token and dropout: image and token model gradients match finite differences", "[model][grad][dropout]") {
  // Dropout masks are keyed by (seed, step, global sample, site), so a training batch's forward is
  // a fixed function of the parameters; evaluation batches (step -1) have no dropout.
  for (ModelKind kind : {ModelKind::Dense, ModelKind::GaussMoe, ModelKind::Pilf}) {
    INFO("model " << to_string(kind));
    ModelConfig mc = test::small_model(kind, 5, 5, 8, 2, 2, 4, 2, 12);  // 4 patches + the class token
    mc.image_h = mc.image_w = 8;
    mc.patch = 4;
    mc.causal = false;
    mc.tie_embeddings = false;
    mc.cls_token = true;
    mc.dropout = 0.2;
    const int B = 3;
    Transformer<double> model(mc, B, B);
    model.init(5);
    for (double& p : model.params) p += 0.05;  // the class token and the head bias start at 0
    const std::vector<double> fixed = test::uniform(B * 2 * 4 * 8, 31, 0.3);
    model.set_memory_router(Transformer<double>::in_order([&](int, int, const double*, int, double* mu_ls, int32_t*, const Transformer<double>::RouteKey&) {
      std::copy(fixed.begin(), fixed.end(), mu_ls);
    }));
    Batch batch;
    batch.resize(B, 5);
    const std::vector<double> px = test::uniform(B * 64, 32, 1.0);
    batch.images.assign(px.begin(), px.end());
    for (int b = 0; b < B; ++b) batch.targets[static_cast<size_t>(b * 5)] = (2 * b + 1) % 5;
    batch.step = 4;
    batch.first = 10;
    const double loss = model.forward(batch);
    model.zero_grad();
    model.backward();
    CHECK(model.table().find("cls") >= 0);
    CHECK(model.table().find("head.bias") >= 0);
    const auto [checked, skipped] = check_all_tensors(model, batch, model.grads);
    CHECK(skipped * 5 <= checked + skipped);
    // evaluation: no dropout, i.e. the same model with dropout 0
    batch.step = -1;
    const double eval = model.forward(batch);
    ModelConfig m0 = mc;
    m0.dropout = 0.0;
    Transformer<double> nodrop(m0, B, B);
    nodrop.params = model.params;
    nodrop.set_memory_router(Transformer<double>::in_order([&](int, int, const double*, int, double* mu_ls, int32_t*, const Transformer<double>::RouteKey&) {
      std::copy(fixed.begin(), fixed.end(), mu_ls);
    }));
    CHECK(nodrop.forward(batch) == eval);
    CHECK(eval != loss);
    // the masks follow the global sample index: another block of the batch gets other masks
    batch.step = 4;
    batch.first = 11;
    CHECK(model.forward(batch) != loss);
  }
}

TEST_CASE("pilf: with gating backprop the routing gradient reaches the backbone through the GatingTransformer",
          "[model][grad][pilf]") {
  // The reference does not detach q: the loss depends on every backbone parameter below an MoE
  // layer also through q -> GatingTransformer -> (mu, log_sigma). With gating_backprop the model's
  // gradients are the derivative of that whole function (finite differences through the real
  // router, GatingTransformer dropout included: the backward recomputes it with the same masks);
  // without it they miss that path, and the check fails.
  ModelConfig mc = test::small_model(ModelKind::Pilf, 20, 12, 8, 2, 2, 4, 2, 12);
  const int B = 3, D = 3;
  const Batch base = mqar_batch(mc, B, D);
  int failures_without = 0;
  for (bool backprop : {true, false}) {
    INFO("gating backprop " << backprop);
    Transformer<double> model(mc, B, B * D);
    model.init(7);
    PilfConfig pc;
    pc.gating_backprop = backprop;
    pc.gating_dropout = 0.2;
    pc.history = 3;
    PilfState<double> ps(pc, mc, B, 7, {});
    ps.attach(model);
    Batch batch = base;
    batch.step = 2;
    model.forward(batch);
    model.zero_grad();
    model.backward();
    auto f = [&] { return model.forward(batch); };
    auto sig = [&] { return model.routing_hash(); };
    int failed = 0, checked = 0;
    for (const TensorInfo& t : model.table().entries()) {
      if (t.layer != 0 || t.kind != TensorKind::Dense) continue;  // below layer 0's router (or its input)
      const auto r = test::check_gradient(f, model.params.data() + t.offset, model.grads.data() + t.offset, t.size, 24, sig);
      failed += r.failed;
      checked += r.checked;
    }
    if (backprop) {
      CHECK(failed == 0);
      CHECK(checked > 50);
    } else {
      failures_without = failed;
    }
  }
  CHECK(failures_without > 10);  // the path matters: detached gradients are visibly not the derivative
}
