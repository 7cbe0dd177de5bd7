// `hyperrnn bench`: the machine's measured SGEMM rate, then the configured model's training-step
// throughput (median of repeats) as tokens/s, model GFLOP/s and the share of the SGEMM peak.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "app/commands.hpp"
#include "core/blas.hpp"
#include "pilf/step.hpp"

namespace hyperrnn {

int run_bench(Comm& comm, const RunConfig& cfg) {
  const double peak = std::max(measure_sgemm_gflops(512, 5), measure_sgemm_gflops(1024, 3));
  const ModelConfig mc = cfg.model_config();
  const int B = static_cast<int>(cfg.batch), L = static_cast<int>(cfg.seq_len);
  Transformer<float> model(mc, B, B * static_cast<int>(cfg.kv_pairs));
  model.init(cfg.seed);
  nn::AdamW<float> opt(model.table(), cfg.adamw_config());
  MqarGenerator gen(cfg.mqar_config());
  Batch batch;
  batch.resize(B, L);
  const StepConfig sc = cfg.step_config();
  std::vector<double> per_step;
  double flops = 0.0;
  int64_t step = 0;
  for (int64_t r = 0; r <= cfg.bench_repeats; ++r) {  // repeat 0 warms up and is discarded
    double t = 0.0;
    for (int64_t i = 0; i < cfg.bench_steps; ++i, ++step) {
      gen.fill(batch, cfg.seed, RngPurpose::TrainData, static_cast<uint32_t>(step), 0, B);  // not timed
      const auto t0 = std::chrono::steady_clock::now();
      train_step(model, opt, batch, sc, step);
      t += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      flops = model.step_flops();
    }
    if (r > 0) per_step.push_back(t / static_cast<double>(cfg.bench_steps));
  }
  std::sort(per_step.begin(), per_step.end());
  const double med = per_step[per_step.size() / 2];
  const double tok = static_cast<double>(B) * L / med;
  if (comm.rank() == 0) {
    std::printf("sgemm_peak_gflops: %.2f\n", peak);
    std::printf("model: %s, %lld parameters, batch %d x %d tokens\n", cfg.model.c_str(),
                static_cast<long long>(model.table().total()), B, L);
    std::printf("step_time_s: median %.5f, min %.5f, max %.5f over %zu repeats of %lld steps\n", med,
                per_step.front(), per_step.back(), per_step.size(), static_cast<long long>(cfg.bench_steps));
    std::printf("tokens_per_s: %.0f\nmodel_gflops: %.2f (%.1f%% of the SGEMM peak)\n", tok, flops / med * 1e-9,
                100.0 * flops / med * 1e-9 / peak);
  }
  return 0;
}

}  // namespace hyperrnn
