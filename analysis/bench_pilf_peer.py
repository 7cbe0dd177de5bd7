#!/usr/bin/env python3
"""Throughput of hyperrnn's pilf hyper-step against a PyTorch (CPU) peer doing the same work.

The peer is the PILF-2 training step as the reference's code runs it (the reference profile of
tests/ref/test_torch_pilf.py, which checks it value for value against the C++ step in double),
written here the efficient PyTorch way for timing, in float32 with PyTorch's own kernels:
- the model: the reference ViT (patch embedding, class token, positions, pre-norm blocks, dropout
  at its sites) or the MQAR token model (tied embedding), pre-norm attention blocks through
  nn.MultiheadAttention (dropout on the probabilities), and a memory-Gaussian MoE in each block:
  q = the sample's mean token after the second norm, its history = the `history` nearest buffer
  items by cosine, one GatingTransformer per layer (nn.TransformerDecoder: `gating-layers` layers,
  `gating-heads` heads, ReLU FFN of 4 C, dropout) and a Linear head to (mu, log sigma) per expert,
  token scores = the diagonal-Gaussian log-likelihood (as GEMMs), top-k, softmax gates, experts
  dispatched by index_select / index_add_; q is not detached (the task loss reaches the backbone
  through the GatingTransformer);
- the step: cross-entropy, backward, PI from the loss, the logits' entropy and the gradient norm
  of every main-model parameter, SMK per layer (the `min-k` experts of lowest gradient norm keep
  their gradient, the others are zeroed and Adam still steps them), torch.optim.Adam (no decay,
  no clipping); curation into one shared prototyping buffer (candidates by priority 1 - PI, cosine
  to the prototypes, replacement of the lowest priorities); meta-training every step on a replay
  set of the buffer's size drawn once and reused: each layer's GatingTransformer on the replay
  queries and their histories, BCE of the Gaussian scores against the SMK actions, averaged over
  layers, Adam; the replayed priorities decayed.
Its cost is that of the reference's step (the same tensors and operations, vectorised where the
reference loops in Python); its values are not compared here (the test oracle does that). The
PILF reference's own figures (issue 17: >= 18.3k / 25.9k tokens/s without its SMK, buffer and
meta work) are a second peer. Usage:

    /usr/bin/python3 analysis/bench_pilf_peer.py [--threads 1] [--repeats 5] [--steps 4] -- --config jobs/configs/bench-vit-pilf-256.ini
"""
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from peer_common import effective_run, hyperrnn_bench, pair_ratios, peer_arguments, torch_only, torch_only_memory  # noqa: E402


def build(cfg):
    import torch
    import torch.nn.functional as F
    C, L, H, E, K = (int(cfg[k]) for k in ("d-model", "layers", "heads", "experts", "top-k"))
    dff, B, p = int(cfg["d-ff"]) or 4 * C, int(cfg["batch"]), float(cfg["dropout"])
    Hg, Lg, pg = int(cfg["gating-heads"]), int(cfg["gating-layers"]), float(cfg["gating-dropout"])
    cap, kh, min_k = int(cfg["buffer-capacity"]), int(cfg["history"]), int(cfg["min-k"])
    vit = cfg["task"] != "mqar"
    if vit:
        P = int(cfg["patch"])
        T = (28 // P) ** 2 + (1 if cfg["vit-pool"] == "cls" else 0)
    else:
        T, V = int(cfg["seq-len"]), int(cfg["vocab"])

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(C), torch.nn.LayerNorm(C)
            self.attn = torch.nn.MultiheadAttention(C, H, dropout=p, batch_first=True)
            self.fc1 = torch.nn.ModuleList(torch.nn.Linear(C, dff) for _ in range(E))
            self.fc2 = torch.nn.ModuleList(torch.nn.Linear(dff, C) for _ in range(E))

    class Gate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerDecoderLayer(C, Hg, 4 * C, dropout=pg, activation="relu", batch_first=True)
            self.dec = torch.nn.TransformerDecoder(layer, Lg)
            self.head = torch.nn.Linear(C, 2 * E * C)

        def forward(self, q, hist):
            out = self.head(self.dec(q.unsqueeze(1), hist)).view(-1, 2, E, C)
            return out[:, 0], out[:, 1]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            if vit:
                self.patch = torch.nn.Linear(P * P, C)
                self.cls = torch.nn.Parameter(torch.zeros(1, 1, C))
                self.head = torch.nn.Linear(C, 10)
            else:
                self.wte = torch.nn.Embedding(V, C)
            self.pos = torch.nn.Parameter(torch.randn(1, T, C) * 0.02)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(L))
            self.lnf = torch.nn.LayerNorm(C)

    model, gates = Model(), torch.nn.ModuleList(Gate() for _ in range(L))
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]))
    gopt = torch.optim.Adam(gates.parameters(), lr=float(cfg["meta-lr"]))
    mask = torch.triu(torch.full((T, T), float("-inf")), 1)
    buf = {"q": torch.zeros(0, C), "act": torch.zeros(0, L * E), "prio": torch.zeros(0),
           "proto": torch.zeros(cap, C), "count": torch.zeros(cap), "replay": None}

    def gauss(x, mu, ls):  # x (n,T,C), mu/ls (n,E,C) -> (n,T,E): sum_c log N(x_c; mu, exp(ls)), as GEMMs
        w = torch.exp(-2 * ls)
        c = (-0.5 * mu * mu * w - ls - 0.9189385332046727).sum(-1)
        return -0.5 * torch.bmm(x * x, w.transpose(1, 2)) + torch.bmm(x, (mu * w).transpose(1, 2)) + c.unsqueeze(1)

    def retrieve(q):  # the kh nearest buffer items by cosine, zeros where the buffer has fewer
        out = torch.zeros(q.shape[0], kh, C)
        size = buf["q"].shape[0]
        if size:
            sim = F.normalize(q, dim=-1) @ F.normalize(buf["q"], dim=-1).T
            idx = sim.topk(min(kh, size), dim=-1).indices
            out[:, :idx.shape[1]] = buf["q"][idx]
        return out

    def add(q, act, pi):
        n = q.shape[0]
        budget = min(n, math.floor(n * (1.0 - pi)))
        if budget <= 0:
            return
        prio = torch.full((budget,), 1.0 - pi)
        cand_q, cand_a = q[:budget], act[:budget]
        active = buf["count"] > 0  # best prototype of each candidate by cosine, else a free slot
        sim = F.normalize(cand_q, dim=-1) @ F.normalize(buf["proto"], dim=-1).T
        sim[:, ~active] = -2
        best, proto = sim.max(-1)
        free = (~active).nonzero().flatten()
        need = (best < prio).nonzero().flatten()[:free.numel()]
        proto[need] = free[:need.numel()]
        size = buf["q"].shape[0]
        if size < cap:
            m = min(cap - size, budget)
            buf["q"] = torch.cat([buf["q"], cand_q[:m]])
            buf["act"] = torch.cat([buf["act"], cand_a[:m]])
            buf["prio"] = torch.cat([buf["prio"], prio[:m]])
            slots, src = torch.arange(size, size + m), torch.arange(m)
        else:
            low = buf["prio"].argsort()[:budget]
            src = (prio[:low.numel()] > buf["prio"][low]).nonzero().flatten()
            slots = low[src]
            buf["q"][slots], buf["act"][slots], buf["prio"][slots] = cand_q[src], cand_a[src], prio[src]
        cnt = buf["count"].clone()
        cnt.index_add_(0, proto[src], torch.ones(src.numel()))
        sums = buf["proto"] * buf["count"].unsqueeze(1)
        sums.index_add_(0, proto[src], cand_q[src])
        buf["proto"] = sums / cnt.clamp(min=1).unsqueeze(1)
        buf["count"] = cnt

    def forward(x_in, targets):
        if vit:
            Bn = x_in.shape[0]
            patches = x_in.view(Bn, 28 // P, P, 28 // P, P).permute(0, 1, 3, 2, 4).reshape(Bn, -1, P * P)
            x = torch.cat([model.cls.expand(Bn, 1, C), model.patch(patches)], 1) + model.pos
        else:
            x = model.wte(x_in) + model.pos
        x = F.dropout(x, p)
        routing, qs_all, acts = [], [], []
        for l, b in enumerate(model.blocks):
            h = b.ln1(x)
            y = b.attn(h, h, h, attn_mask=None if vit else mask, need_weights=False)[0]
            x = x + F.dropout(y, p)
            h = b.ln2(x)
            qs = h.mean(1)
            mu, ls = gates[l](qs, retrieve(qs.detach()))
            routing.append(mu)
            scores = gauss(h, mu, ls)
            top, idx = torch.topk(scores, K, dim=-1)
            gate = torch.softmax(top, -1).reshape(-1, K)
            hf, idx = h.reshape(-1, C), idx.reshape(-1, K)
            out = torch.zeros_like(hf)
            used = []
            for e in range(E):
                rows, slot = torch.nonzero(idx == e, as_tuple=True)
                used.append(rows.numel())
                if rows.numel() == 0:
                    continue
                he = b.fc2[e](F.dropout(F.gelu(b.fc1[e](hf.index_select(0, rows))), p))
                out.index_add_(0, rows, he * gate[rows, slot].unsqueeze(-1))
            x = x + F.dropout(out.view_as(x), p)
            qs_all.append(qs.detach())
            acts.append(used)
        x = model.lnf(x)
        if vit:
            logits = model.head(x[:, 0])
            loss = F.cross_entropy(logits, targets)
        else:
            rows = targets.reshape(-1) >= 0
            logits = x.reshape(-1, C)[rows] @ model.wte.weight.T
            loss = F.cross_entropy(logits, targets.reshape(-1)[rows])
        pr = torch.softmax(logits.detach(), -1)
        tau = float(-(pr * torch.log(pr + 1e-9)).sum(-1).mean())
        return loss, tau, qs_all

    def step(x_in, targets):
        opt.zero_grad(set_to_none=True)
        loss, tau, qs_all = forward(x_in, targets)
        loss.backward()
        S = math.sqrt(sum(float((q.grad ** 2).sum()) for q in model.parameters() if q.grad is not None))
        pi = math.exp(-(loss.item() / (tau + 1e-9) + S))
        keep = []
        for b in model.blocks:  # SMK: the min-k experts of lowest surprise keep their gradient
            norms = []
            for e in range(E):
                g = [t.grad for t in (b.fc1[e].weight, b.fc1[e].bias, b.fc2[e].weight, b.fc2[e].bias) if t.grad is not None]
                norms.append(math.sqrt(sum(float((t ** 2).sum()) for t in g)) if g else math.inf)
            kept = sorted(range(E), key=lambda e: (norms[e], e))[:min_k]
            for e in range(E):
                if e not in kept:
                    for t in (b.fc1[e].weight, b.fc1[e].bias, b.fc2[e].weight, b.fc2[e].bias):
                        if t.grad is not None:
                            t.grad.zero_()
            keep.append(kept)
        opt.step()
        act = torch.zeros(L * E)
        for l, kept in enumerate(keep):
            act[[l * E + e for e in kept]] = 1
        Bn = x_in.shape[0]
        for l in range(L):  # one add per layer into the shared buffer, with the batch's PI
            add(qs_all[l], act.expand(Bn, L * E), pi)
        if buf["q"].shape[0]:  # meta-training every step on the replay set (drawn once, reused)
            if buf["replay"] is None:
                n = buf["q"].shape[0]
                buf["replay"] = torch.multinomial(buf["prio"].clamp(min=1e-12), n, replacement=True)
            idx = buf["replay"]
            gopt.zero_grad(set_to_none=True)
            q = buf["q"][idx]
            hist = retrieve(q)
            losses = []
            for l in range(L):
                mu, ls = gates[l](q, hist)
                sc = gauss(q.unsqueeze(1), mu, ls).squeeze(1)
                losses.append(F.binary_cross_entropy_with_logits(sc, buf["act"][idx, l * E:(l + 1) * E]))
            (sum(losses) / L).backward()
            gopt.step()
            buf["prio"][idx.unique()] *= float(cfg["priority-decay"])

    g = torch.Generator().manual_seed(0)
    if vit:
        data = torch.rand(B, 1, 28, 28, generator=g), torch.randint(0, 10, (B,), generator=g)
    else:
        D = int(cfg["kv-pairs"])
        tg = torch.full((B, T), -1, dtype=torch.long)
        tg[:, 2 * D:4 * D:2] = torch.randint(0, V, (B, D), generator=g)
        data = torch.randint(0, V, (B, T), generator=g), tg
    return lambda: step(*data), B * T


def torch_bench(cfg, steps, threads):
    import torch
    torch.set_num_threads(threads)
    step, tokens = build(cfg)
    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return tokens * steps / (time.perf_counter() - t0)


def main():
    a = peer_arguments(__doc__, 4)
    cfg, _ = effective_run(a.binary, a.opts)
    if cfg.get("model") != "pilf":
        sys.exit("bench_pilf_peer.py: the options after -- must describe a model pilf")
    if cfg["pilf-profile"] != "reference":
        sys.exit("bench_pilf_peer.py: the peer is the reference profile (PILF-2 as its code runs)")
    if a.torch_only:
        return torch_only(lambda: torch_bench(cfg, a.steps, a.threads))
    ours, theirs, mem = [], [], []
    for _ in range(a.repeats):
        tps, rss, _, _ = hyperrnn_bench(a.binary, a.opts, a.steps, a.threads)
        ours.append(tps)
        mem.append(rss)
        theirs.append(torch_bench(cfg, a.steps, a.threads))
    peak, base = torch_only_memory(os.path.abspath(__file__), a)
    med = statistics.median
    print(f"pilf ({cfg['task']}, C {cfg['d-model']}, {cfg['layers']} layers, {cfg['experts']} experts top-{cfg['top-k']} "
          f"of width {cfg['d-ff']}, batch {cfg['batch']}; reference profile), {a.threads} thread(s), {a.repeats} alternating repeats")
    print(f"hyperrnn tokens/s: median {med(ours):.0f} (all {[round(v) for v in ours]})")
    print(f"pytorch  tokens/s: median {med(theirs):.0f} (all {[round(v) for v in theirs]})")
    print(f"ratio hyperrnn / pytorch: {med(ours) / med(theirs):.2f}")
    print(f"ratio per alternating pair: {pair_ratios(ours, theirs)}")
    print(f"peak memory: hyperrnn {max(mem)} MiB; pytorch {peak} MiB (of which {base} MiB after import torch)")


if __name__ == "__main__":
    main()
