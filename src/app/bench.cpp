// `hyperrnn bench`: the machine's measured SGEMM rate, then the configured model's training-step
// throughput (median of repeats) as tokens/s, model GFLOP/s and the share of the SGEMM peak.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "app/commands.hpp"
#include "core/blas.hpp"
#include "app/session.hpp"

namespace hyperrnn {

int run_bench(Comm& comm, const RunConfig& cfg) {
  const double peak = std::max(measure_sgemm_gflops(512, 5), measure_sgemm_gflops(1024, 3));
  Session<float> ses(cfg);
  const int B = static_cast<int>(cfg.batch), L = static_cast<int>(cfg.positions());
  std::vector<double> per_step;
  double flops_sum = 0.0;  // model FLOPs of every timed step (meta-training steps cost more)
  int64_t step = 0, timed = 0;
  for (int64_t r = 0; r <= cfg.bench_repeats; ++r) {  // repeat 0 warms up and is discarded
    double t = 0.0;
    for (int64_t i = 0; i < cfg.bench_steps; ++i, ++step) {
      ses.fill_train_batch(step);  // not timed
      const auto t0 = std::chrono::steady_clock::now();
      const StepStats st = train_step(ses.model, ses.opt, ses.batch, ses.step_cfg, step, &ses.pilf);
      t += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) {
        flops_sum += ses.model.step_flops() + ses.pilf.step_flops(B, st.meta);
        ++timed;
      }
    }
    if (r > 0) per_step.push_back(t / static_cast<double>(cfg.bench_steps));
  }
  std::sort(per_step.begin(), per_step.end());
  const double med = per_step[per_step.size() / 2];
  const double tok = static_cast<double>(B) * L / med;
  const double flops = flops_sum / static_cast<double>(timed);  // per step, on average
  if (comm.rank() == 0) {
    std::printf("sgemm_peak_gflops: %.2f\n", peak);
    std::printf("model: %s, %lld parameters, batch %d x %d tokens\n", cfg.model.c_str(),
                static_cast<long long>(ses.model.table().total()), B, L);
    std::printf("step_time_s: median %.5f, min %.5f, max %.5f over %zu repeats of %lld steps\n", med,
                per_step.front(), per_step.back(), per_step.size(), static_cast<long long>(cfg.bench_steps));
    std::printf("tokens_per_s: %.0f\nmodel_gflops: %.2f (%.1f%% of the SGEMM peak)\n", tok, flops / med * 1e-9,
                100.0 * flops / med * 1e-9 / peak);
  }
  return 0;
}

}  // namespace hyperrnn
