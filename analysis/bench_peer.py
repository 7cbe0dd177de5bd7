#!/usr/bin/env python3
"""Throughput of hyperrnn against PyTorch (CPU) on the same model and batch shapes.

Runs `hyperrnn bench` and an equivalent PyTorch training step (pre-LN Transformer, tied head,
dense FFN, AdamW, loss on the scored MQAR positions only) alternately, REPEATS times each, with the
same thread count, and prints the medians and their ratio. Usage:

    /usr/bin/python3 analysis/bench_peer.py [--threads 1] [--repeats 5] [--steps 20] -- [hyperrnn options]

Only the dense model has a PyTorch peer here (PyTorch has no built-in MoE); the hyperrnn options
after `--` must describe it (e.g. --model dense --d-model 64 --layers 2 --heads 4).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time


def hyperrnn_bench(binary, opts, steps, env):
    out = subprocess.run([binary, "bench", "--bench-steps", str(steps), "--repeats", "3", *opts],
                         capture_output=True, text=True, env=env, check=True).stdout
    return float(re.search(r"tokens_per_s: (\d+)", out).group(1)), out


def torch_bench(cfg, steps, threads):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    B, L, C, V, H, layers = cfg["batch"], cfg["seq-len"], cfg["d-model"], cfg["vocab"], cfg["heads"], cfg["layers"]
    dff = cfg["d-ff"] or 4 * C

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(V, C)
            self.wpe = torch.nn.Embedding(L, C)
            self.blocks = torch.nn.ModuleList(
                torch.nn.TransformerEncoderLayer(C, H, dff, dropout=0.0, activation="gelu", batch_first=True,
                                                 norm_first=True) for _ in range(layers))
            self.lnf = torch.nn.LayerNorm(C)
            self.register_buffer("mask", torch.triu(torch.full((L, L), float("-inf")), 1))

        def forward(self, x, rows):
            h = self.wte(x) + self.wpe.weight
            for b in self.blocks:
                h = b(h, src_mask=self.mask)
            h = self.lnf(h).reshape(-1, C)[rows]  # scored positions only, as hyperrnn does
            return h @ self.wte.weight.T

    model = Model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    x = torch.randint(0, V, (B, L))
    D = cfg["kv-pairs"]
    rows = torch.cat([torch.arange(2 * D, 2 * D + 2 * D, 2) + b * L for b in range(B)])
    y = torch.randint(V // 2, V, (rows.numel(),))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x, rows), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t0) / steps)
    return B * L / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..", "build", "bin", "hyperrnn"))
    ap.add_argument("opts", nargs="*")
    a = ap.parse_args()
    env = dict(os.environ)
    a.opts = ["--threads", str(a.threads), *a.opts]  # hyperrnn's own threads (its BLAS calls are single-threaded)
    _, text = hyperrnn_bench(a.binary, a.opts, 1, env)
    cfg = {"batch": 64, "seq-len": 64, "d-model": 64, "vocab": 256, "heads": 4, "layers": 2, "d-ff": 0, "kv-pairs": 8}
    for i, tok in enumerate(a.opts):
        if tok.startswith("--") and tok[2:] in cfg:
            cfg[tok[2:]] = int(a.opts[i + 1])
    if "--model" not in a.opts or a.opts[a.opts.index("--model") + 1] != "dense":
        sys.exit("bench_peer.py: pass --model dense (the PyTorch peer is the dense model)")
    ours, theirs = [], []
    for _ in range(a.repeats):
        ours.append(hyperrnn_bench(a.binary, a.opts, a.steps, env)[0])
        theirs.append(torch_bench(cfg, a.steps, a.threads))
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(text.splitlines()[0])
    print(f"shapes: {cfg}, threads {a.threads}, {a.repeats} alternating repeats")
    print(f"hyperrnn tokens/s: median {mo:.0f} (all {[round(v) for v in ours]})")
    print(f"pytorch  tokens/s: median {mt:.0f} (all {[round(v) for v in theirs]})")
    print(f"ratio hyperrnn / pytorch: {mo / mt:.2f}")


if __name__ == "__main__":
    main()
