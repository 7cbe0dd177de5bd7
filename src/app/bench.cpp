// `hyperrnn bench`: the machine's measured SGEMM rate, then the configured model's training-step
// throughput on P ranks (median of repeats) as tokens/s, model GFLOP/s, the share of the SGEMM
// peak, and where the step time went (compute, dispatch exchange, reductions, optimizer).
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "app/commands.hpp"
#include "core/blas.hpp"
#include "app/session.hpp"
#include "parallel/threads.hpp"

namespace hyperrnn {

namespace {
// The process's own resident high-water mark: /proc/self/status VmHWM (of this address space; not
// getrusage's ru_maxrss, which Linux carries over exec from the forked parent, so that a bench
// started by a large Python process reported the parent's memory), else ru_maxrss.
int peak_rss_mib() {
  if (std::FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    long kib = -1;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "VmHWM: %ld kB", &kib) == 1) break;
    std::fclose(f);
    if (kib >= 0) return static_cast<int>(kib / 1024);
  }
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int>(ru.ru_maxrss / 1024);  // Linux: KiB
}
}  // namespace

// bench --comm: per collective and message size, the median over repeats of the mean time per
// call (calls per repeat: enough for ~4 MiB moved, 5 to 1000), all ranks timing the same calls
// between barriers; rank 0 prints CSV. The performance model (analysis/hyperrnn_analysis/perfmodel.py)
// fits latency and bandwidth to these.
int bench_comm(Comm& comm, const RunConfig& cfg) {
  const int P = comm.size();
  std::vector<std::string> rows;
  for (int64_t bytes = 8; bytes <= (int64_t{4} << 20); bytes *= 8) {
    const int64_t calls = std::clamp<int64_t>((int64_t{4} << 20) / bytes, 5, 1000);
    enum Op { Alltoallv, AllreduceInt64, Allgather };
    static const char* const kOpName[] = {"alltoallv", "allreduce_int64", "allgather"};
    for (const Op op : {Alltoallv, AllreduceInt64, Allgather}) {
      const int64_t n4 = std::max<int64_t>(1, bytes / 4), n8 = std::max<int64_t>(1, bytes / 8);
      std::vector<float> send(static_cast<size_t>(n4 * P), 1.0f), recv(static_cast<size_t>(n4 * P));
      std::vector<int64_t> counts(static_cast<size_t>(P), n4), displs(static_cast<size_t>(P));
      for (int r = 0; r < P; ++r) displs[static_cast<size_t>(r)] = n4 * r;
      std::vector<int64_t> ints(static_cast<size_t>(n8), 1);
      std::vector<char> gin(static_cast<size_t>(bytes), 1), gout(static_cast<size_t>(bytes * P));
      auto once = [&] {
        switch (op) {
          case Alltoallv: comm.alltoallv(send.data(), counts.data(), displs.data(), recv.data(), counts.data(), displs.data()); break;
          case AllreduceInt64: comm.allreduce_sum(ints.data(), ints.size()); break;
          case Allgather: comm.allgather_bytes(gin.data(), static_cast<size_t>(bytes), gout.data()); break;
        }
      };
      once();  // warm-up
      std::vector<double> per_call;
      for (int64_t r = 0; r < cfg.bench_repeats; ++r) {
        comm.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < calls; ++i) once();
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / static_cast<double>(calls);
        int ns = static_cast<int>(std::min(dt * 1e9, 2.0e9));  // the slowest rank's time (ns)
        ns = comm.allreduce_max(ns);
        per_call.push_back(static_cast<double>(ns) * 1e-9);
      }
      std::sort(per_call.begin(), per_call.end());
      char b[160];
      std::snprintf(b, sizeof b, "%s,%d,%lld,%.9g", kOpName[op], P, static_cast<long long>(bytes), per_call[per_call.size() / 2]);
      rows.emplace_back(b);
    }
  }
  if (comm.rank() == 0) {
    std::printf("op,ranks,bytes,seconds\n");
    for (const std::string& r : rows) std::printf("%s\n", r.c_str());
  }
  return 0;
}

int run_bench(Comm& comm, const RunConfig& cfg) {
  if (cfg.bench_comm) return bench_comm(comm, cfg);
  validate_layout(cfg, comm.size());
  const double peak = std::max(measure_sgemm_gflops(512, 5), measure_sgemm_gflops(1024, 3));
  std::unique_ptr<Session<float>> session;
  collective(comm, [&] { session = std::make_unique<Session<float>>(cfg, &comm); });
  Session<float>& ses = *session;
  Parallel& par = ses.par;
  const int B = static_cast<int>(cfg.batch), L = static_cast<int>(cfg.positions());
  const int Lmoe = ses.model.config().is_moe() ? ses.model.config().layers : 0;
  struct Repeat {
    double step, dispatch, reduce, optimizer, pilf;
  };
  Repeat sums{0, 0, 0, 0, 0};  // the accounted repeat's totals (the phase and thread splits)
  std::vector<Repeat> reps;
  double flops_sum = 0.0;  // model FLOPs of every timed step (meta-training steps cost more)
  int64_t step = 0, timed = 0, bytes = 0;
  const std::vector<int32_t> per_rank = threads_per_rank(par);
  // Repeat 0 warms up and is discarded; repeats 1..R are timed with the GEMM and phase accounting
  // off, as in a training run (its clock reads cost ~1% of a moe step); one more repeat, R + 1,
  // runs with it on, for the phase split only.
  const int64_t accounted = cfg.bench_repeats + 1;
  for (int64_t r = 0; r <= accounted; ++r) {
    Repeat t{0, 0, 0, 0, 0};
    comm.barrier();
    if (r == accounted) {
      threads().reset_accounting();
      set_accounting(true);
      reset_gemm_account();
    }
    for (int64_t i = 0; i < cfg.bench_steps; ++i, ++step) {
      ses.fill_train_batch(step);  // not timed
      par.reset_accounting(Lmoe);
      const auto t0 = std::chrono::steady_clock::now();
      const StepStats st = train_step(ses.model, ses.opt, ses.batch, ses.step_cfg, step, &ses.pilf);
      t.step += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      t.dispatch += par.dispatch_s;
      t.reduce += par.reduce_s;
      t.optimizer += st.optimizer_s;
      t.pilf += st.pilf_s;
      if (r > 0 && r < accounted) {
        flops_sum += ses.model.step_flops() + ses.pilf.step_flops(B, st.meta);
        for (int64_t b : par.layer_bytes) bytes += b;
        ++timed;
      }
    }
    const double n = static_cast<double>(cfg.bench_steps);
    if (r > 0 && r < accounted) reps.push_back({t.step / n, t.dispatch / n, t.reduce / n, t.optimizer / n, t.pilf / n});
    if (r == accounted) sums = t;
  }
  const double timed_wall = sums.step;
  const PhaseAccount phases = phase_account();  // the timed steps only
  const GemmAccount gemms = gemm_account();
  set_accounting(false);
  const int peak_mib = comm.allreduce_max(peak_rss_mib());
  // rwkv7: inference, parallel (the training forward alone) and recurrent (one token at a time,
  // the state carried), on the same batch
  double fwd_s = 0.0, rec_s = 0.0;
  if (ses.model.config().is_rwkv()) {
    ses.fill_train_batch(0);
    ses.batch.step = -1;
    std::vector<double> f, rc;
    for (int64_t r = 0; r <= cfg.bench_repeats; ++r) {
      comm.barrier();
      auto t0 = std::chrono::steady_clock::now();
      ses.model.forward(ses.batch);
      const double a = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      comm.barrier();
      t0 = std::chrono::steady_clock::now();
      ses.model.forward_recurrent(ses.batch);
      const double b = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) {  // repeat 0 warms up
        f.push_back(a);
        rc.push_back(b);
      }
    }
    std::sort(f.begin(), f.end());
    std::sort(rc.begin(), rc.end());
    fwd_s = f[f.size() / 2];
    rec_s = rc[rc.size() / 2];
  }
  std::sort(reps.begin(), reps.end(), [](const Repeat& a, const Repeat& b) { return a.step < b.step; });
  const Repeat med = reps[reps.size() / 2];
  const double tok = static_cast<double>(B) * L / med.step;
  const double flops = flops_sum / static_cast<double>(timed);  // per step, on average
  if (comm.rank() == 0) {
    std::printf("sgemm_peak_gflops: %.2f (%s; denormals %s)\n", peak, blas_short().c_str(), cfg.denormals.c_str());
    std::printf("model: %s, %lld parameters, batch %d x %d tokens in %lld shards on %s (%s reduction)\n",
                cfg.model.c_str(), static_cast<long long>(ses.model.table().elements()), B, L,
                static_cast<long long>(cfg.shards), ranks_x_threads(per_rank).c_str(), cfg.reduction.c_str());
    std::printf("step_time_s: median %.5f, min %.5f, max %.5f over %zu repeats of %lld steps\n", med.step,
                reps.front().step, reps.back().step, reps.size(), static_cast<long long>(cfg.bench_steps));
    std::printf("tokens_per_s: %.0f\nmodel_gflops: %.2f (%.1f%% of one core's SGEMM peak)\n", tok, flops / med.step * 1e-9,
                100.0 * flops / med.step * 1e-9 / peak);
    const double compute = std::max(0.0, med.step - med.dispatch - med.reduce - med.optimizer - med.pilf);
    std::printf("split_s: compute %.5f, dispatch %.5f, reduce %.5f, optimizer %.5f, pilf %.5f (rank 0, median repeat)\n",
                compute, med.dispatch, med.reduce, med.optimizer, med.pilf);
    std::printf("xfer_bytes_per_step: %.0f\n", static_cast<double>(bytes) / static_cast<double>(timed));
    std::printf("model_flops_per_token: %.0f (forward + backward, analytic)\n", flops / (static_cast<double>(B) * L));
    {  // where a step's time goes (rank 0, mean over the timed steps; exact at one thread, see core/blas.hpp)
      const double per = 1.0 / static_cast<double>(cfg.bench_steps), wall = timed_wall * per;  // the accounted repeat
      const int Pi = static_cast<int>(Phase::Pilf);
      const double gemm = (gemms.seconds - phases.gemm_s[Pi]) * per, gflop = (gemms.flops - phases.gemm_flops[Pi]) * per;
      auto own = [&](Phase p) { return (phases.total_s[static_cast<int>(p)] - phases.gemm_s[static_cast<int>(p)]) * per; };
      const double att = own(Phase::Attention), route = own(Phase::Routing), rec = own(Phase::Recurrence);
      const double pilf = phases.total_s[Pi] * per, opt = sums.optimizer * per, xch = (sums.dispatch + sums.reduce) * per;
      const double rest = std::max(0.0, wall - gemm - att - route - rec - pilf - opt - xch);
      auto pc = [wall](double x) { return wall > 0 ? 100.0 * x / wall : 0.0; };
      std::printf("phase_s_per_step: step %.5f = gemm %.5f (%.0f%%, %.2f GFLOP/s, %.1f%% of peak) + attention %.5f (%.0f%%) + "
                  "routing_dispatch %.5f (%.0f%%) + recurrence %.5f (%.0f%%) + pilf %.5f (%.0f%%) + optimizer %.5f (%.0f%%) + "
                  "exchanges %.5f (%.0f%%) + elementwise_other %.5f (%.0f%%)\n",
                  wall, gemm, pc(gemm), gemm > 0 ? gflop / gemm * 1e-9 : 0.0, gemm > 0 ? 100.0 * gflop / gemm * 1e-9 / peak : 0.0,
                  att, pc(att), route, pc(route), rec, pc(rec), pilf, pc(pilf), opt, pc(opt), xch, pc(xch), rest, pc(rest));
      // the GEMM column by the phase its calls ran in (the model's own linears and experts: "model")
      std::printf("gemm_by_phase_s_per_step:");
      const char* names[kPhases] = {"model", "attention", "routing", "recurrence", "pilf"};
      for (int p = 0; p < kPhases; ++p) {
        const double t = (p == 0 ? gemms.seconds - [&] { double o = 0; for (int q = 1; q < kPhases; ++q) o += phases.gemm_s[q]; return o; }()
                                 : phases.gemm_s[p]) * per;
        const double f = (p == 0 ? gemms.flops - [&] { double o = 0; for (int q = 1; q < kPhases; ++q) o += phases.gemm_flops[q]; return o; }()
                                 : phases.gemm_flops[p]) * per;
        std::printf(" %s %.5f (%.2f GFLOP/s)", names[p], t, t > 0 ? f / t * 1e-9 : 0.0);
      }
      std::printf("\n");
      std::printf("peak_rss_mib: %d (largest rank)\n", peak_mib);
    }
    const int64_t sf = ses.model.state_floats_per_sequence(L);
    if (ses.model.config().is_rwkv()) {
      std::printf("inference_tokens_per_s: parallel %.0f, recurrent %.0f (one token at a time; median of %lld)\n",
                  static_cast<double>(B) * L / fwd_s, static_cast<double>(B) * L / rec_s, static_cast<long long>(cfg.bench_repeats));
      std::printf("state_floats_per_sequence: %lld (%lld bytes fp32, fixed)\n", static_cast<long long>(sf), static_cast<long long>(4 * sf));
    } else {
      std::printf("kv_cache_floats_per_sequence: %lld at %d positions (%lld bytes fp32)\n", static_cast<long long>(sf), L,
                  static_cast<long long>(4 * sf));
    }
    // Per thread (rank 0, all timed steps): time inside parallel regions, each thread's busy time
    // there and its idle time (load imbalance: items of unequal size, fewer items than threads),
    // and the serial rest of the step, which thread 0 runs alone.
    const ThreadPool& tp = threads();
    const double per = 1.0 / static_cast<double>(cfg.bench_steps), wall = timed_wall * per, reg = tp.region_s() * per;
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
