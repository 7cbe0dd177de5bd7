// `hyperrnn bench`: the machine's measured SGEMM rate, then the configured model's training-step
// throughput on P ranks (median of repeats) as tokens/s, model GFLOP/s, the share of the SGEMM
// peak, and where the step time went (compute, dispatch exchange, reductions, optimizer).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "app/commands.hpp"
#include "core/blas.hpp"
#include "app/session.hpp"

namespace hyperrnn {

int run_bench(Comm& comm, const RunConfig& cfg) {
  validate_layout(cfg, comm.size());
  const double peak = std::max(measure_sgemm_gflops(512, 5), measure_sgemm_gflops(1024, 3));
  std::unique_ptr<Session<float>> session;
  collective(comm, [&] { session = std::make_unique<Session<float>>(cfg, &comm); });
  Session<float>& ses = *session;
  Parallel& par = ses.par;
  const int B = static_cast<int>(cfg.batch), L = static_cast<int>(cfg.positions());
  const int Lmoe = ses.model.config().is_moe() ? ses.model.config().layers : 0;
  struct Repeat {
    double step, dispatch, reduce, optimizer;
  };
  std::vector<Repeat> reps;
  double flops_sum = 0.0;  // model FLOPs of every timed step (meta-training steps cost more)
  int64_t step = 0, timed = 0, bytes = 0;
  for (int64_t r = 0; r <= cfg.bench_repeats; ++r) {  // repeat 0 warms up and is discarded
    Repeat t{0, 0, 0, 0};
    comm.barrier();
    for (int64_t i = 0; i < cfg.bench_steps; ++i, ++step) {
      ses.fill_train_batch(step);  // not timed
      par.reset_accounting(Lmoe);
      const auto t0 = std::chrono::steady_clock::now();
      const StepStats st = train_step(ses.model, ses.opt, ses.batch, ses.step_cfg, step, &ses.pilf);
      t.step += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      t.dispatch += par.dispatch_s;
      t.reduce += par.reduce_s;
      t.optimizer += st.optimizer_s;
      if (r > 0) {
        flops_sum += ses.model.step_flops() + ses.pilf.step_flops(B, st.meta);
        for (int64_t b : par.layer_bytes) bytes += b;
        ++timed;
      }
    }
    const double n = static_cast<double>(cfg.bench_steps);
    if (r > 0) reps.push_back({t.step / n, t.dispatch / n, t.reduce / n, t.optimizer / n});
  }
  std::sort(reps.begin(), reps.end(), [](const Repeat& a, const Repeat& b) { return a.step < b.step; });
  const Repeat med = reps[reps.size() / 2];
  const double tok = static_cast<double>(B) * L / med.step;
  const double flops = flops_sum / static_cast<double>(timed);  // per step, on average
  if (comm.rank() == 0) {
    std::printf("sgemm_peak_gflops: %.2f\n", peak);
    std::printf("model: %s, %lld parameters, batch %d x %d tokens in %lld shards on %d ranks (%s reduction)\n",
                cfg.model.c_str(), static_cast<long long>(ses.model.table().elements()), B, L,
                static_cast<long long>(cfg.shards), par.P, cfg.reduction.c_str());
    std::printf("step_time_s: median %.5f, min %.5f, max %.5f over %zu repeats of %lld steps\n", med.step,
                reps.front().step, reps.back().step, reps.size(), static_cast<long long>(cfg.bench_steps));
    std::printf("tokens_per_s: %.0f\nmodel_gflops: %.2f (%.1f%% of one core's SGEMM peak)\n", tok, flops / med.step * 1e-9,
                100.0 * flops / med.step * 1e-9 / peak);
    const double compute = std::max(0.0, med.step - med.dispatch - med.reduce - med.optimizer);
    std::printf("split_s: compute %.5f, dispatch %.5f, reduce %.5f, optimizer %.5f (rank 0, median repeat)\n", compute,
                med.dispatch, med.reduce, med.optimizer);
    std::printf("xfer_bytes_per_step: %.0f\n", static_cast<double>(bytes) / static_cast<double>(timed));
  }
  return 0;
}

}  // namespace hyperrnn
