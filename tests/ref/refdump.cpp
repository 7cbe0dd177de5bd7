// Dumps what the independent PyTorch implementation (test_torch_reference.py) must reproduce:
// initial parameters, 5 MQAR batches, the first batch's loss and every gradient, and the parameters
// and losses after 5 training steps (clipping, schedule, AdamW) through the production train_step.
// usage: hyperrnn_refdump MODEL float|double TIE_EMBEDDINGS(true|false) OUT.h5 [EXTRA_INI_LINES]
// (EXTRA_INI_LINES override the small default shapes, e.g. "d-model = 64\nseq-len = 32\n").
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>

#include "app/options.hpp"
#include "core/error.hpp"
#include "io/h5.hpp"
#include "app/session.hpp"

using namespace hyperrnn;

namespace {

template <class T>
void dump_tensors(H5File& f, const std::string& group, const ParamTable& table, const std::vector<T>& buf) {
  for (const TensorInfo& t : table.entries()) f.write(group + "/" + t.name, buf.data() + t.offset, t.shape);
}

template <class T>
void run(const RunConfig& cfg, const std::string& out) {
  Session<T> ses(cfg);
  const int B = static_cast<int>(cfg.batch), L = static_cast<int>(cfg.seq_len);
  Transformer<T>& model = ses.model;
  const Batch& batch = ses.batch;
  H5File f(out, H5File::Mode::Create);
  f.set_attr("config", to_ini(cfg));
  dump_tensors(f, "params0", model.table(), model.params);
  std::vector<double> losses, norms;
  for (int64_t step = 0; step < cfg.steps; ++step) {
    ses.fill_train_batch(step);
    f.write("batch/" + std::to_string(step) + "/tokens", batch.tokens.data(), {B, L});
    f.write("batch/" + std::to_string(step) + "/targets", batch.targets.data(), {B, L});
    if (step == 0) {  // the first gradients, before clipping and the update
      const double loss = model.forward(batch);
      model.zero_grad();
      model.backward();
      f.write("loss0", &loss, {1});
      dump_tensors(f, "grads0", model.table(), model.grads);
    }
    const StepStats s = train_step(model, ses.opt, batch, ses.step_cfg, step);
    losses.push_back(s.loss);
    norms.push_back(s.grad_norm);
  }
  f.write("losses", losses.data(), {static_cast<int64_t>(losses.size())});
  f.write("grad_norms", norms.data(), {static_cast<int64_t>(norms.size())});
  dump_tensors(f, "params_final", model.table(), model.params);
}

}  // namespace

int main(int argc, char** argv) {
  if ((argc != 5 && argc != 6) || (std::strcmp(argv[2], "float") != 0 && std::strcmp(argv[2], "double") != 0)) {
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
    merge(std::string("model = ") + argv[1] +
          "\nvocab = 40\nseq-len = 16\nkv-pairs = 3\nd-model = 16\nlayers = 2\nheads = 2\n"
          "experts = 4\ntop-k = 2\nd-ff = 24\nbatch = 4\nsteps = 5\nwarmup = 2\n"
          "lr = 0.01\nlr-min-ratio = 0.1\ngrad-clip = 0.5\nweight-decay = 0.1\nseed = 3\n"
          "tie-embeddings = " + argv[3] + "\n");
    if (argc == 6) merge(argv[5]);
    std::string ini;
    for (const auto& [k, v] : kv) ini += k + " = " + v + "\n";
    const RunConfig cfg = from_ini(ini, "refdump");
    if (std::strcmp(argv[2], "float") == 0) run<float>(cfg, argv[4]);
    else run<double>(cfg, argv[4]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hyperrnn_refdump: %s\n", e.what());
    return 1;
  }
  return 0;
}
