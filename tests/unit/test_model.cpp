// Whole-model gradient check for every model kind, in double precision: the loss of one MQAR batch
// against finite differences at up to 24 coordinates of every tensor of the parameter table.
#include <catch2/catch.hpp>

#include "gradcheck.hpp"
#include "models/transformer.hpp"
#include "tasks/mqar.hpp"

using namespace hyperrnn;

TEST_CASE("model gradients match finite differences", "[model][grad]") {
  const std::pair<ModelKind, bool> cases[] = {{ModelKind::Dense, true}, {ModelKind::Dense, false},
                                              {ModelKind::Moe, true}, {ModelKind::GaussMoe, true},
                                              {ModelKind::GaussMoe, false}};
  for (const auto& [kind, tied] : cases) {
    INFO("model " << to_string(kind) << (tied ? ", tied embeddings" : ", separate head"));
    ModelConfig mc;
    mc.kind = kind;
    mc.tie_embeddings = tied;
    mc.vocab = 20;
    mc.seq_len = 12;
    mc.d_model = 8;
    mc.layers = 2;
    mc.heads = 2;
    mc.experts = mc.is_moe() ? 4 : 0;
    mc.top_k = mc.is_moe() ? 2 : 0;
    mc.d_ff = 12;
    const int B = 3, D = 3;
    Transformer<double> model(mc, B, B * D);
    model.init(7);
    MqarConfig qc;
    qc.vocab = mc.vocab;
    qc.seq_len = mc.seq_len;
    qc.kv_pairs = D;
    MqarGenerator gen(qc);
    Batch batch;
    batch.resize(B, mc.seq_len);
    gen.fill(batch, 3, RngPurpose::TestData, 0, 0, B);
    model.forward(batch);
    model.zero_grad();
    model.backward();
    const std::vector<double> analytic = model.grads;
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
    // Perturbations of 2e-4 flip a routing decision only next to a top-k tie: at most a fifth of
    // the probed coordinates may be skipped, or the check would prove little.
    INFO("checked " << checked << ", skipped " << skipped);
    CHECK(checked > 0);
    CHECK(skipped * 5 <= checked + skipped);
  }
}

TEST_CASE("expert token counts add up to tokens x top-k", "[model]") {
  ModelConfig mc;
  mc.kind = ModelKind::GaussMoe;
  mc.vocab = 40;
  mc.seq_len = 16;
  mc.d_model = 8;
  mc.layers = 2;
  mc.heads = 2;
  mc.experts = 3;
  mc.top_k = 2;
  mc.d_ff = 8;
  Transformer<float> model(mc, 4, 16);
  model.init(1);
  MqarConfig qc;
  qc.vocab = 40;
  qc.seq_len = 16;
  qc.kv_pairs = 4;
  MqarGenerator gen(qc);
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
