// Small model and task configurations shared by the unit tests.
#pragma once
#include "models/transformer.hpp"
#include "nn/adamw.hpp"
#include "pilf/step.hpp"
#include "tasks/mqar.hpp"

namespace hyperrnn::test {

inline ModelConfig small_model(ModelKind kind, int vocab, int seq_len, int d_model, int layers, int heads,
                               int experts, int top_k, int d_ff) {
  ModelConfig mc;
  mc.kind = kind;
  mc.vocab = vocab;
  mc.seq_len = seq_len;
  mc.d_model = d_model;
  mc.layers = layers;
  mc.heads = heads;
  mc.experts = mc.is_moe() ? experts : 0;
  mc.top_k = mc.is_moe() ? top_k : 0;
  mc.d_ff = d_ff;
  return mc;
}

// rwkv7 with V 20, T 12, C 8, 2 layers, head size 4 (2 heads), low ranks 3/2/3/4, channel-mix width
// 12, the given options and checkpoint interval.
inline ModelConfig small_rwkv7(bool vres = true, bool gate = true, bool cmix = true, int chunk = 3) {
  ModelConfig mc = small_model(ModelKind::Rwkv7, 20, 12, 8, 2, 2, 0, 0, 12);
  mc.head_size = 4;
  mc.tie_embeddings = false;
  mc.lora_w = 3;
  mc.lora_a = 2;
  mc.lora_v = 3;
  mc.lora_g = 4;
  mc.rwkv_chunk = chunk;
  mc.value_residual = vres;
  mc.output_gate = gate;
  mc.channel_mix = cmix;
  return mc;
}

inline MqarConfig small_mqar(int vocab, int seq_len, int kv_pairs) {
  MqarConfig qc;
  qc.vocab = vocab;
  qc.seq_len = seq_len;
  qc.kv_pairs = kv_pairs;
  return qc;
}

// B MQAR samples with D key-value pairs shaped for the model (seed 3, the TestData stream).
inline Batch mqar_batch(const ModelConfig& mc, int B, int D) {
  MqarGenerator gen(small_mqar(mc.vocab, mc.seq_len, D));
  Batch batch;
  batch.resize(B, mc.seq_len);
  gen.fill(batch, 3, RngPurpose::TestData, 0, 0, B);
  return batch;
}

// A small MQAR problem (V 40, L 16, 3 pairs) and a model of the given kind (C 8, 2 layers, 2
// heads, 4 experts top-2, width 8), in double (exact comparisons), with its optimizer and a step
// configuration (lr 1e-2, no clip).
struct StepFixture {
  ModelConfig mc;
  Transformer<double> model;
  nn::AdamW<double> opt;
  MqarGenerator gen;
  Batch batch;
  StepConfig sc;
  explicit StepFixture(ModelKind kind, int B = 6, nn::AdamWConfig adam = {})
      : mc(small_model(kind, 40, 16, 8, 2, 2, 4, 2, 8)), model(mc, B, B * 3), opt(model.table(), adam),
        gen(small_mqar(40, 16, 3)) {
    model.init(3);
    batch.resize(B, 16);
    gen.fill(batch, 1, RngPurpose::TestData, 0, 0, B);
    sc.total_steps = 100;
    sc.lr = 1e-2;
    sc.grad_clip = 0.0;
  }
};

}  // namespace hyperrnn::test
