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
#include "parallel/threads.hpp"

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
  const std::vector<int32_t> per_rank = threads_per_rank(par);
  double timed_wall = 0.0;
  for (int64_t r = 0; r <= cfg.bench_repeats; ++r) {  // repeat 0 warms up and is discarded
    Repeat t{0, 0, 0, 0};
    comm.barrier();
    if (r == 1) threads().reset_accounting();
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
    if (r > 0) timed_wall += t.step;
  }
  std::sort(reps.begin(), reps.end(), [](const Repeat& a, const Repeat& b) { return a.step < b.step; });
  const Repeat med = reps[reps.size() / 2];
  const double tok = static_cast<double>(B) * L / med.step;
  const double flops = flops_sum / static_cast<double>(timed);  // per step, on average
  if (comm.rank() == 0) {
    std::printf("sgemm_peak_gflops: %.2f\n", peak);
    std::printf("model: %s, %lld parameters, batch %d x %d tokens in %lld shards on %s (%s reduction)\n",
                cfg.model.c_str(), static_cast<long long>(ses.model.table().elements()), B, L,
                static_cast<long long>(cfg.shards), ranks_x_threads(per_rank).c_str(), cfg.reduction.c_str());
    std::printf("step_time_s: median %.5f, min %.5f, max %.5f over %zu repeats of %lld steps\n", med.step,
                reps.front().step, reps.back().step, reps.size(), static_cast<long long>(cfg.bench_steps));
    std::printf("tokens_per_s: %.0f\nmodel_gflops: %.2f (%.1f%% of one core's SGEMM peak)\n", tok, flops / med.step * 1e-9,
                100.0 * flops / med.step * 1e-9 / peak);
    const double compute = std::max(0.0, med.step - med.dispatch - med.reduce - med.optimizer);
    std::printf("split_s: compute %.5f, dispatch %.5f, reduce %.5f, optimizer %.5f (rank 0, median repeat)\n", compute,
                med.dispatch, med.reduce, med.optimizer);
    std::printf("xfer_bytes_per_step: %.0f\n", static_cast<double>(bytes) / static_cast<double>(timed));
    // Per thread (rank 0, all timed steps): time inside parallel regions, each thread's busy time
    // there and its idle time (load imbalance: items of unequal size, fewer items than threads),
    // and the serial rest of the step, which thread 0 runs alone.
    const ThreadPool& tp = threads();
    const double per = 1.0 / static_cast<double>(timed), wall = timed_wall * per, reg = tp.region_s() * per;
    std::printf("thread_split_s_per_step: step %.5f = parallel regions %.5f (%.0f%%) + serial %.5f (thread 0 alone)\n", wall, reg,
                wall > 0 ? 100.0 * reg / wall : 0.0, std::max(0.0, wall - reg));
    for (int w = 0; w < tp.size(); ++w) {
      const double busy = tp.busy_s()[static_cast<size_t>(w)] * per;
      std::printf("thread %d: busy %.5f, idle in regions %.5f (%.0f%% of the regions)\n", w, busy, std::max(0.0, reg - busy),
                  reg > 0 ? 100.0 * std::max(0.0, reg - busy) / reg : 0.0);
    }
  }
  return 0;
}

}  // namespace hyperrnn
