// Dumps what the independent PyTorch implementation (test_torch_reference.py) must reproduce:
// initial parameters, 5 MQAR batches, the first batch's loss and every gradient, and the parameters
// and losses after 5 training steps (clipping, schedule, AdamW) through the production train_step.
// For model pilf also the GatingTransformer, every step's PI/PILR/SMK figures, the buffers after
// each step and the GatingTransformer after the last (the hyper-step reference).
// usage: hyperrnn_refdump MODEL float|double TIE_EMBEDDINGS(true|false) OUT.h5 [EXTRA_INI_LINES [INIT.h5]]
//        hyperrnn_refdump wkv7 float|double OUT.h5 T H N CHUNK   (the RWKV-7 recurrence alone)
// (EXTRA_INI_LINES override the small default shapes, e.g. "d-model = 64\nseq-len = 32\n"; INIT.h5
// replaces the initial parameters: params0/<tensor> and, for pilf, gating0/<tensor>, e.g. weights
// converted from another implementation; image tasks also dump each step's images.)
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>

#include "app/options.hpp"
#include "core/error.hpp"
#include "io/h5.hpp"
#include "app/session.hpp"
#include "nn/wkv7.hpp"

#include <random>

using namespace hyperrnn;

namespace {

bool model_is_pilf(const RunConfig& cfg) { return cfg.model == "pilf"; }

template <class T>
void dump_tensors(H5File& f, const std::string& group, const ParamTable& table, const std::vector<T>& buf) {
  for (const TensorInfo& t : table.entries()) f.write(group + "/" + t.name, buf.data() + t.offset, t.shape);
}

template <class T>
void load_tensors(const H5File& f, const std::string& group, const ParamTable& table, std::vector<T>& buf) {
  for (const TensorInfo& t : table.entries()) {
    if (!f.exists(group + "/" + t.name) || f.shape(group + "/" + t.name) != t.shape)
      throw std::runtime_error("init file: " + group + "/" + t.name + " is missing or has another shape");
    f.read(group + "/" + t.name, buf.data() + t.offset);
  }
}

template <class T>
void run(const RunConfig& cfg, const std::string& out, const std::string& init) {
  Session<T> ses(cfg);
  const int B = static_cast<int>(cfg.batch), L = static_cast<int>(cfg.positions());
  const bool pilf = model_is_pilf(cfg);
  Transformer<T>& model = ses.model;
  const Batch& batch = ses.batch;
  if (!init.empty()) {
    const H5File in(init, H5File::Mode::Read);
    load_tensors(in, "params0", model.table(), model.params);
    if (pilf) load_tensors(in, "gating0", ses.pilf.gating->table(), ses.pilf.gating->params);
  }
  H5File f(out, H5File::Mode::Create);
  f.set_attr("config", to_ini(cfg));
  dump_tensors(f, "params0", model.table(), model.params);
  if (pilf) {
    dump_tensors(f, "gating0", ses.pilf.gating->table(), ses.pilf.gating->params);
    // a probe of the GatingTransformer alone: 2 queries and their histories, bank 1
    const GatingConfig& gc = ses.pilf.gating->config();
    const int n = 2, C = gc.d_model, Kh = gc.history;
    std::vector<T> q(static_cast<size_t>(n) * C), hist(static_cast<size_t>(n) * Kh * C), probe(static_cast<size_t>(n) * 2 * gc.experts * C);
    for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<T>(std::sin(0.7 * static_cast<double>(i) + 0.3));
    for (size_t i = 0; i < hist.size(); ++i) hist[i] = static_cast<T>(std::cos(1.3 * static_cast<double>(i)));
    f.write("probe/q", q.data(), {n, C});
    f.write("probe/hist", hist.data(), {n, Kh, C});
    for (int b = 0; b < gc.banks; ++b) {
      ses.pilf.gating->forward(probe.data(), q.data(), hist.data(), n, b);
      f.write("probe/out" + std::to_string(b), probe.data(), {n, 2, gc.experts, C});
    }
  }
  std::vector<double> losses, norms;
  for (int64_t step = 0; step < cfg.steps; ++step) {
    ses.fill_train_batch(step);
    f.write("batch/" + std::to_string(step) + "/tokens", batch.tokens.data(), {B, L});
    f.write("batch/" + std::to_string(step) + "/targets", batch.targets.data(), {B, L});
    if (!batch.images.empty()) f.write("batch/" + std::to_string(step) + "/images", batch.images.data(), {B, 28, 28});
    if (step == 0) {  // the first gradients, before clipping and the update
      const double loss = model.forward(batch);
      model.zero_grad();
      model.backward();
      f.write("loss0", &loss, {1});
      dump_tensors(f, "grads0", model.table(), model.grads);
    }
    const StepStats s = train_step(model, ses.opt, batch, ses.step_cfg, step, &ses.pilf);
    losses.push_back(s.loss);
    norms.push_back(s.grad_norm);
    if (pilf) {
      const std::string g = "step/" + std::to_string(step) + "/";
      const double st[] = {s.loss, s.tau, s.surprise, s.expert_surprise, s.gating_surprise, s.pi, s.lr_mod_expert,
                           s.lr_mod_gating, s.gating_loss, s.routing_acc, s.k_mean};
      f.write(g + "stats", st, {static_cast<int64_t>(std::size(st))});
      std::vector<int32_t> masks(s.smk_mask.begin(), s.smk_mask.end());
      f.write(g + "smk", masks.data(), {static_cast<int64_t>(masks.size())});
      f.write(g + "tokens", model.expert_tokens().data(), {static_cast<int64_t>(model.expert_tokens().size())});
      dump_tensors(f, g + "params", model.table(), model.params);  // after the step
      for (size_t l = 0; l < ses.pilf.buffers.size(); ++l) {
        const pilf::ExperienceBuffer& b = ses.pilf.buffers[l];
        std::vector<double> pr;
        for (int i = 0; i < b.size(); ++i) pr.push_back(b.priority(i));
        const std::string bl = g + "buffer" + std::to_string(l) + "/";
        f.write(bl + "priority", pr.data(), {static_cast<int64_t>(pr.size())});
        const int32_t protos = b.active_prototypes();
        f.write(bl + "prototypes", &protos, {1});
        // the replay sets cached so far (their q: another implementation's draws can be matched)
        const auto& cache = ses.pilf.replay[l];
        for (size_t j = 0; j < cache.size(); ++j)
          if (cache[j].size() > 0)
            f.write(bl + "replay" + std::to_string(j) + "_q", cache[j].q.data(), {cache[j].size(), b.dim()});
      }
    }
  }
  if (pilf) dump_tensors(f, "gating_final", ses.pilf.gating->table(), ses.pilf.gating->params);
  f.write("losses", losses.data(), {static_cast<int64_t>(losses.size())});
  f.write("grad_norms", norms.data(), {static_cast<int64_t>(norms.size())});
  dump_tensors(f, "params_final", model.table(), model.params);
}

// wkv7 mode: random inputs of the RWKV-7 recurrence (r, u, k, v, a, b, dy, the initial state),
// its forward (y, the final state) and every gradient of sum(y * dy), for test_torch_wkv7.py.
template <class T>
void run_wkv7(const std::string& out, int Tn, int H, int N, int chunk) {
  const nn::Wkv7Dims d{Tn, H, N, chunk};
  const int64_t n = static_cast<int64_t>(Tn) * H * N, ss = d.state_size();
  std::mt19937_64 gen(12345);
  auto fill = [&](double scale, int64_t m) {
    std::uniform_real_distribution<double> u(-scale, scale);
    std::vector<T> v(static_cast<size_t>(m));
    for (T& x : v) x = static_cast<T>(u(gen));
    return v;
  };
  const std::vector<T> r = fill(1, n), u = fill(4, n), k = fill(1, n), v = fill(1, n), a = fill(0.5, n), b = fill(0.5, n),
                       dy = fill(1, n), s0 = fill(0.5, ss);
  std::vector<T> y(static_cast<size_t>(n)), ck(static_cast<size_t>(d.checkpoints() * ss)), s1(static_cast<size_t>(ss)),
      scratch(static_cast<size_t>(nn::wkv7_scratch_size(d)));
  nn::wkv7_forward(y.data(), ck.data(), r.data(), u.data(), k.data(), v.data(), a.data(), b.data(), d, s0.data(), s1.data());
  std::vector<std::vector<T>> g(7, std::vector<T>(static_cast<size_t>(n)));
  g[6].resize(static_cast<size_t>(ss));
  nn::wkv7_backward(g[0].data(), g[1].data(), g[2].data(), g[3].data(), g[4].data(), g[5].data(), g[6].data(), dy.data(),
                    ck.data(), r.data(), u.data(), k.data(), v.data(), a.data(), b.data(), d, scratch.data());
  H5File f(out, H5File::Mode::Create);
  const std::vector<int64_t> sh{Tn, H, N}, st{H, N, N};
  const char* names[] = {"r", "u", "k", "v", "a", "b", "dy"};
  const std::vector<T>* ins[] = {&r, &u, &k, &v, &a, &b, &dy};
  for (int i = 0; i < 7; ++i) f.write(std::string("in/") + names[i], ins[i]->data(), sh);
  f.write("in/state0", s0.data(), st);
  f.write("out/y", y.data(), sh);
  f.write("out/state", s1.data(), st);
  for (int i = 0; i < 6; ++i) f.write(std::string("grad/") + names[i], g[static_cast<size_t>(i)].data(), sh);
  f.write("grad/state0", g[6].data(), st);
  f.close();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 8 && std::strcmp(argv[1], "wkv7") == 0) {  // hyperrnn_refdump wkv7 float|double OUT.h5 T H N CHUNK
    try {
      const int Tn = std::atoi(argv[4]), H = std::atoi(argv[5]), N = std::atoi(argv[6]), C = std::atoi(argv[7]);
      if (std::strcmp(argv[2], "float") == 0) run_wkv7<float>(argv[3], Tn, H, N, C);
      else run_wkv7<double>(argv[3], Tn, H, N, C);
      return 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "hyperrnn_refdump: %s\n", e.what());
      return 1;
    }
  }
  if ((argc < 5 || argc > 7) || (std::strcmp(argv[2], "float") != 0 && std::strcmp(argv[2], "double") != 0)) {
    std::fprintf(stderr, "usage: hyperrnn_refdump MODEL float|double true|false OUT.h5\n");
    return 2;
  }
  try {
    // Small shapes so that the PyTorch side runs in a second; a clip threshold the first steps
    // exceed, so that clipping is exercised; warm-up and cosine both active within 5 steps.
    std::map<std::string, std::string> kv;
    auto merge = [&kv](const std::string& text) {
      std::istringstream in(text);
      std::string line;
      while (std::getline(in, line)) {
        const size_t eq = line.find('=');
        if (eq == std::string::npos) continue;
        auto trim = [](std::string x) {
          x.erase(0, x.find_first_not_of(' '));
          x.erase(x.find_last_not_of(' ') + 1);
          return x;
        };
        kv[trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
      }
    };
    // (for pilf the schedule, clip and decay are left to its profile unless the extra lines set them)
    const bool rwkv = std::strcmp(argv[1], "rwkv7") == 0;  // heads from head-size, no experts, untied head
    merge(std::string("model = ") + argv[1] +
          "\nvocab = 40\nseq-len = 16\nkv-pairs = 3\nd-model = 16\nlayers = 2\n"
          "d-ff = 24\nbatch = 4\nsteps = 5\nlr = 0.01\nseed = 3\n");
    if (rwkv) merge("head-size = 8\n");
    else merge(std::string("heads = 2\nexperts = 4\ntop-k = 2\ntie-embeddings = ") + argv[3] + "\n");
    if (std::strcmp(argv[1], "pilf") != 0) merge("warmup = 2\nlr-min-ratio = 0.1\ngrad-clip = 0.5\nweight-decay = 0.1\n");
    if (argc >= 6) merge(argv[5]);
    std::string ini;
    for (const auto& [k, v] : kv) ini += k + " = " + v + "\n";
    const RunConfig cfg = from_ini(ini, "refdump");
    const std::string init = argc == 7 ? argv[6] : "";
    if (std::strcmp(argv[2], "float") == 0) run<float>(cfg, argv[4], init);
    else run<double>(cfg, argv[4], init);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hyperrnn_refdump: %s\n", e.what());
    return 1;
  }
  return 0;
}
