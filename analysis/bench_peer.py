#!/usr/bin/env python3
"""Throughput of hyperrnn against a PyTorch (CPU) peer of the same model, batch and thread count.

Runs `hyperrnn bench` and the peer's training step alternately, REPEATS times each, and prints both
medians and their ratio. The peer per model:
- dense: PyTorch's own pre-LN nn.TransformerEncoderLayer blocks (its fused attention path), tied
  head, AdamW, loss on the scored MQAR positions only;
- moe, gauss-moe: the same attention blocks with a top-k MoE feed-forward written the efficient
  PyTorch way (each expert gathers its tokens with index_select and adds back with index_add_; the
  linear or diagonal-Gaussian log-likelihood router of tests/ref/test_torch_reference.py);
- rwkv7: analysis/bench_rwkv7_peer.py's naive per-token recurrence (the test oracle), run through
  that script.
- pilf: analysis/bench_pilf_peer.py's PILF-2 step (the reference profile) in PyTorch, run through
  that script.
Peak memory: hyperrnn's peak RSS from its bench, PyTorch's from a child process that runs the peer
alone (printed with the RSS it has after `import torch`, the interpreter's and libtorch's share).
Usage:

    /usr/bin/python3 analysis/bench_peer.py [--threads 1] [--repeats 5] [--steps 20] -- [hyperrnn options]

The hyperrnn options after `--` describe the model and batch (e.g. --config jobs/configs/bench-mqar-dense.ini).
"""
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def torch_bench(cfg, steps, threads):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    kind = cfg["model"]
    B, L, C, V, H, layers = (int(cfg[k]) for k in ("batch", "seq-len", "d-model", "vocab", "heads", "layers"))
    dff = int(cfg["d-ff"]) or 4 * C
    E, K = int(cfg["experts"]), int(cfg["top-k"])

    class Moe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.ModuleList(torch.nn.Linear(C, dff) for _ in range(E))
            self.fc2 = torch.nn.ModuleList(torch.nn.Linear(dff, C) for _ in range(E))
            if kind == "moe":
                self.router = torch.nn.Linear(C, E, bias=False)
            else:
                self.mu = torch.nn.Parameter(torch.randn(E, C) / C ** 0.5)
                self.log_sigma = torch.nn.Parameter(torch.zeros(E, C))

        def forward(self, x):
            shape = x.shape
            x = x.reshape(-1, C)
            if kind == "moe":
                scores = self.router(x)
            else:  # sum_i log N(x_i; mu, sigma), as GEMMs (hyperrnn's form)
                w = torch.exp(-2 * self.log_sigma)
                m = self.mu * w
                c = (-0.5 * self.mu ** 2 * w - self.log_sigma - 0.9189385332046727).sum(-1)
                scores = -0.5 * (x * x) @ w.T + x @ m.T + c
            top, idx = torch.topk(scores, K, dim=-1)
            gates = torch.softmax(top, dim=-1)
            out = torch.zeros_like(x)
            for e in range(E):
                rows, slot = torch.nonzero(idx == e, as_tuple=True)
                if rows.numel() == 0:
                    continue
                h = self.fc2[e](F.gelu(self.fc1[e](x.index_select(0, rows))))
                out.index_add_(0, rows, h * gates[rows, slot].unsqueeze(-1))
            return out.reshape(shape)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(C), torch.nn.LayerNorm(C)
            self.attn = torch.nn.MultiheadAttention(C, H, batch_first=True)
            self.ffn = Moe()

        def forward(self, x, mask):
            h = self.ln1(x)
            x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.ffn(self.ln2(x))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(V, C)
            self.wpe = torch.nn.Embedding(L, C)
            if kind == "dense":
                self.blocks = torch.nn.ModuleList(
                    torch.nn.TransformerEncoderLayer(C, H, dff, dropout=0.0, activation="gelu", batch_first=True,
                                                     norm_first=True) for _ in range(layers))
            else:
                self.blocks = torch.nn.ModuleList(Block() for _ in range(layers))
            self.lnf = torch.nn.LayerNorm(C)
            self.register_buffer("mask", torch.triu(torch.full((L, L), float("-inf")), 1))

        def forward(self, x, rows):
            h = self.wte(x) + self.wpe.weight
            for b in self.blocks:
                h = b(h, self.mask) if kind != "dense" else b(h, src_mask=self.mask)
            h = self.lnf(h).reshape(-1, C)[rows]  # scored positions only, as hyperrnn does
            return h @ self.wte.weight.T

    model = Model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    x = torch.randint(0, V, (B, L))
    D = int(cfg["kv-pairs"])
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
    sys.path.insert(0, HERE)
    from peer_common import effective_run, hyperrnn_bench, pair_ratios, peer_arguments, torch_only, torch_only_memory
    a = peer_arguments(__doc__, 20)
    cfg, _ = effective_run(a.binary, a.opts)
    if cfg["model"] == "rwkv7":
        sys.exit(subprocess.call([sys.executable, os.path.join(HERE, "bench_rwkv7_peer.py"), "--binary", a.binary,
                                  "--threads", str(a.threads), "--repeats", str(a.repeats), "--steps", str(max(1, a.steps // 4)),
                                  "--", *a.opts]))
    if cfg["model"] == "pilf":
        sys.exit(subprocess.call([sys.executable, os.path.join(HERE, "bench_pilf_peer.py"), "--binary", a.binary,
                                  "--threads", str(a.threads), "--repeats", str(a.repeats), "--steps", str(max(1, a.steps // 5)),
                                  "--", *a.opts]))
    if cfg["model"] not in ("dense", "moe", "gauss-moe"):
        sys.exit(f"bench_peer.py: no PyTorch peer for model {cfg['model']}")
    if cfg["task"] != "mqar":
        sys.exit("bench_peer.py: the peer runs the MQAR shapes (token input)")
    if a.torch_only:
        return torch_only(lambda: torch_bench(cfg, a.steps, a.threads))
    text = hyperrnn_bench(a.binary, a.opts, 1, a.threads)[3]  # warm-up; its report names the model
    ours, theirs, rss = [], [], []
    for _ in range(a.repeats):
        tps, peak_mib, _, _ = hyperrnn_bench(a.binary, a.opts, a.steps, a.threads)
        ours.append(tps)
        rss.append(peak_mib)
        theirs.append(torch_bench(cfg, a.steps, a.threads))
    peak, base = torch_only_memory(os.path.abspath(__file__), a)
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print([l for l in text.splitlines() if l.startswith("model:")][0])
    print(f"threads {a.threads}, {a.repeats} alternating repeats")
    print(f"hyperrnn tokens/s: median {mo:.0f} (all {[round(v) for v in ours]})")
    print(f"pytorch  tokens/s: median {mt:.0f} (all {[round(v) for v in theirs]})")
    print(f"ratio hyperrnn / pytorch: {mo / mt:.2f}")
    print(f"ratio per alternating pair: {pair_ratios(ours, theirs)}")
    print(f"peak memory: hyperrnn {max(rss)} MiB; pytorch {peak} MiB (of which {base} MiB after import torch)")


if __name__ == "__main__":
    main()
