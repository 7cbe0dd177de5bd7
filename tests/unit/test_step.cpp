// The hyper-step's guard: a step with a non-finite loss or gradient changes nothing.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>

#include "fixtures.hpp"
#include "pilf/step.hpp"

using namespace hyperrnn;

TEST_CASE("a step with NaN loss is skipped and changes nothing", "[step]") {
  Transformer<float> model(test::small_model(ModelKind::GaussMoe, 40, 16, 8, 1, 2, 2, 1, 8), 4, 8);
  model.init(1);
  nn::AdamW<float> opt(model.table(), {});
  MqarGenerator gen(test::small_mqar(40, 16, 2));
  Batch batch;
  batch.resize(4, 16);
  gen.fill(batch, 1, RngPurpose::TestData, 0, 0, 4);
  StepConfig sc;
  sc.total_steps = 10;
  const StepStats ok = train_step(model, opt, batch, sc, 0);  // one good step first: moments non-zero
  REQUIRE_FALSE(ok.skipped);
  REQUIRE(opt.steps() == 1);
  model.params[model.table()[model.table().find("lnf.weight")].offset] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> p = model.params, m = opt.m, v = opt.v;
  const StepStats bad = train_step(model, opt, batch, sc, 1);
  CHECK(bad.skipped);
  CHECK(std::isnan(bad.loss));
  CHECK(opt.steps() == 1);  // the optimizer did not step
  CHECK(opt.m == m);
  CHECK(opt.v == v);
  for (size_t i = 0; i < p.size(); ++i)  // bitwise unchanged (NaN compares unequal: compare bits)
    REQUIRE(std::memcmp(&p[i], &model.params[i], sizeof(float)) == 0);
}
