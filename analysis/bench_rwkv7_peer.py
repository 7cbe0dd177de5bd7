#!/usr/bin/env python3
"""Throughput of hyperrnn's rwkv7 against its PyTorch peer, the naive per-token recurrence of
tests/ref/test_torch_rwkv7.py (the oracle that follows the reference's rwkv_v7_numpy.py), in
float32 on the same shapes and thread count: a training step (forward over the sequence, autograd
backward, AdamW) and recurrent inference (no grad). Alternates the two programs REPEATS times and
prints both medians and the ratios. Usage:

    /usr/bin/python3 analysis/bench_rwkv7_peer.py [--threads 1] [--repeats 5] [--steps 5] -- [hyperrnn options]

The hyperrnn options after `--` describe the model and batch (e.g. --model rwkv7 --d-model 64
--head-size 16 --seq-len 64 --kv-pairs 8 --batch 32 --channel-mix false).
"""
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from peer_common import effective_run, hyperrnn_bench, peer_arguments, torch_only, torch_only_memory  # noqa: E402


def torch_peer(cfg, params, steps, threads):
    import numpy as np
    import torch
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "ref"))
    import test_torch_rwkv7 as ref
    torch.set_num_threads(threads)
    torch.set_default_dtype(torch.float32)
    model = ref.TorchRwkv7(cfg, {k: v.astype(np.float32) for k, v in params.items()})
    for v in model.p.values():
        v.data = v.data.float()
    opt = torch.optim.AdamW(list(model.p.values()), lr=1e-3)
    B, T, V = int(cfg["batch"]), int(cfg["seq-len"]), int(cfg["vocab"])
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (B, T), generator=g)
    targets = torch.where(torch.rand(B, T, generator=g) < 0.1, torch.randint(0, V, (B, T), generator=g), -1)
    targets[:, -1] = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(tokens, targets)
        loss.backward()
        opt.step()
    train = B * T * steps / (time.perf_counter() - t0)
    with torch.no_grad():
        t0 = time.perf_counter()
        model.logits(tokens)
        rec = B * T / (time.perf_counter() - t0)
    return train, rec


def main():
    a = peer_arguments(__doc__, 5)
    cfg, params = effective_run(a.binary, a.opts)
    if cfg.get("model") != "rwkv7":
        sys.exit("bench_rwkv7_peer.py: the options after -- must describe a model rwkv7")
    if a.torch_only:  # the peer alone, for its peak memory
        return torch_only(lambda: torch_peer(cfg, params, max(1, a.steps // 2), a.threads)[0])
    h_train, h_rec, t_train, t_rec, rss = [], [], [], [], []
    for _ in range(a.repeats):
        tr, peak_mib, rc, _ = hyperrnn_bench(a.binary, a.opts, a.steps, a.threads)
        rss.append(peak_mib)
        h_train.append(tr)
        h_rec.append(rc)
        tr, rc = torch_peer(cfg, params, max(1, a.steps // 2), a.threads)
        t_train.append(tr)
        t_rec.append(rc)
    peak, base = torch_only_memory(os.path.abspath(__file__), a)
    med = statistics.median
    print(f"rwkv7 d-model {cfg['d-model']} head-size {cfg['head-size']} layers {cfg['layers']} channel-mix {cfg['channel-mix']}, "
          f"batch {cfg['batch']} x {cfg['seq-len']}, {a.threads} thread(s), median of {a.repeats}")
    print(f"training tokens/s: hyperrnn {med(h_train):.0f}, pytorch naive recurrence {med(t_train):.0f}, "
          f"ratio {med(h_train) / med(t_train):.2f}")
    print(f"recurrent inference tokens/s: hyperrnn {med(h_rec):.0f}, pytorch naive recurrence {med(t_rec):.0f}, "
          f"ratio {med(h_rec) / med(t_rec):.2f}")
    print(f"peak memory (training): hyperrnn {max(rss)} MiB; pytorch {peak} MiB (of which {base} MiB after import torch)")


if __name__ == "__main__":
    main()
