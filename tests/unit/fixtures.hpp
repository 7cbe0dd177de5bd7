// Small model and task configurations shared by the unit tests.
#pragma once
#include "models/transformer.hpp"
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

inline MqarConfig small_mqar(int vocab, int seq_len, int kv_pairs) {
  MqarConfig qc;
  qc.vocab = vocab;
  qc.seq_len = seq_len;
  qc.kv_pairs = kv_pairs;
  return qc;
}

}  // namespace hyperrnn::test
