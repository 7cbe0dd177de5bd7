// Whole-model gradient check for every model kind, in double precision: the loss of one MQAR batch
// against finite differences at up to 24 coordinates of every tensor of the parameter table.
#include <catch2/catch.hpp>

#include "fixtures.hpp"
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
    ModelConfig mc = test::small_model(kind, 20, 12, 8, 2, 2, 4, 2, 12);
    mc.tie_embeddings = tied;
    const int B = 3, D = 3;
    Transformer<double> model(mc, B, B * D);
    model.init(7);
    MqarGenerator gen(test::small_mqar(mc.vocab, mc.seq_len, D));
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
