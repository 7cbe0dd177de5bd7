"""Independent PyTorch implementation of the `pilf` hyper-step, checked against the C++ one for 3
steps: memory-Gaussian MoE whose per-sample routing Gaussians come from a GatingTransformer built
from torch.nn.TransformerDecoder (post-norm, ReLU, dropout 0), PI assessment, Surprise-Min-K,
PILR, AdamW, experience curation into a prototype buffer, and GatingTransformer meta-training on
Philox-sampled buffer items (BCE with logits against the SMK action, own AdamW).

Written from ../shared/reference/pilf.md and docs/architecture.md (the choices the spec leaves
open), not from the C++ code. The counter RNG (Philox4x32-10) is re-implemented here and checked
against the Random123 known-answer vector first.

Only double precision is compared: the step takes discrete decisions (top-k routing, SMK sets,
candidate order, retrieval order) that float rounding may legitimately flip. In double both sides
agree to ~1e-13 on every continuous value (the dense reference test's bound), so the decisions are
identical and we require 1e-9 relative on the step's figures and 1e-10 of the change on the
parameters after 3 steps (the reasoning of test_torch_reference.py).
"""
import math
import os
import subprocess

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_torch_reference import change_error, lr_at, parse_ini, rel

torch.set_default_dtype(torch.float64)
MASK = 0xFFFFFFFF


# ---- counter RNG -------------------------------------------------------------------------------
def philox(ctr, key):
    c, k = list(ctr), list(key)
    for r in range(10):
        if r:
            k = [(k[0] + 0x9E3779B9) & MASK, (k[1] + 0xBB67AE85) & MASK]
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & MASK, (p0 >> 32) ^ c[3] ^ k[1], p0 & MASK]
    return c


class Stream:
    """(seed, purpose, step, index) -> a stream of 32-bit words, Philox counter in word 0."""

    def __init__(self, seed, purpose, step, index):
        self.key = [seed & MASK, (seed >> 32) & MASK]
        self.ctr = [0, index, step, purpose]
        self.buf = []

    def u32(self):
        if not self.buf:
            self.buf = philox(self.ctr, self.key)
            self.ctr[0] += 1
        return self.buf.pop(0)

    def uniform_double(self):
        hi, lo = self.u32() >> 5, self.u32() >> 6
        return ((hi << 26) | lo) * 2.0 ** -53

    def below(self, n):
        return (self.u32() * n) >> 32


ROUTING = 4


def test_philox_known_answer():
    assert philox([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


# ---- routing experience buffer -----------------------------------------------------------------
def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b) / max(math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)), 1e-12)


class Buffer:
    """The spec's prototype buffer; q and prototype means held in float32 like the stored state."""

    def __init__(self, cap, dim, decay):
        self.cap, self.dim, self.decay_f = cap, dim, decay
        self.q, self.act, self.prio, self.proto_of = [], [], [], []
        self.proto = np.zeros((cap, dim), np.float32)
        self.count = [0] * cap

    def add(self, q32, action, pi):
        B = len(pi)
        budget = min(B, math.floor(B * (1.0 - sum(pi) / B)))
        if budget <= 0:
            return
        cand = sorted(range(B), key=lambda b: -(1.0 - pi[b]))[:budget]  # stable: ties lower index
        prio = [1.0 - pi[c] for c in cand]
        proto, needs = [], []
        for i, c in enumerate(cand):  # best match among prototypes active before this call
            best, bp = -2.0, -1
            for p in range(self.cap):
                if self.count[p] > 0:
                    s = cosine(q32[c], self.proto[p])
                    if s > best:
                        best, bp = s, p
            proto.append(bp)
            needs.append(bp < 0 or best < prio[i])
        free = 0
        for i in range(budget):  # free prototype slots, ascending, highest priority first
            if needs[i]:
                while free < self.cap and self.count[free] > 0:
                    free += 1
                if free < self.cap:
                    proto[i] = free
                    free += 1
        size = len(self.q)
        writes = []
        if size < self.cap:
            for i in range(budget):
                if size + len(writes) >= self.cap:
                    break
                if proto[i] >= 0:
                    writes.append((size + len(writes), i))
        else:
            low = sorted(range(self.cap), key=lambda j: self.prio[j])
            j = 0
            for i in range(budget):
                if j >= self.cap:
                    break
                if proto[i] < 0:
                    continue
                if prio[i] > self.prio[low[j]]:
                    writes.append((low[j], i))
                j += 1
        for slot, i in writes:
            if slot < len(self.q):
                if self.proto_of[slot] >= 0:
                    self.count[self.proto_of[slot]] -= 1
                self.q[slot], self.act[slot], self.prio[slot], self.proto_of[slot] = q32[cand[i]].copy(), action, prio[i], proto[i]
            else:
                self.q.append(q32[cand[i]].copy())
                self.act.append(action)
                self.prio.append(prio[i])
                self.proto_of.append(proto[i])
            p, n = proto[i], max(self.count[proto[i]], 0)
            self.proto[p] = ((self.proto[p].astype(np.float64) * n + q32[cand[i]].astype(np.float64)) / (n + 1)).astype(np.float32)
            self.count[p] = n + 1
        for p in range(self.cap):
            if self.count[p] <= 0:
                self.count[p] = 0
                self.proto[p] = 0

    def prototypes(self):
        return sum(1 for c in self.count if c > 0)

    def sample(self, n, seed, step, stream):
        if not self.q:
            return []
        rng, total = Stream(seed, ROUTING, step, stream), sum(self.prio)
        out = []
        for _ in range(n):
            if total <= 0:
                out.append(rng.below(len(self.q)))
                continue
            u, acc, pick = rng.uniform_double() * total, 0.0, len(self.q) - 1
            for i, p in enumerate(self.prio):
                acc += p
                if u < acc:
                    pick = i
                    break
            out.append(pick)
        return out

    def decay(self, idx):
        for i in sorted(set(idx)):
            self.prio[i] *= self.decay_f

    def retrieve(self, queries32, k):
        out = np.zeros((len(queries32), k, self.dim), np.float32)
        for r, qr in enumerate(queries32):
            order = sorted(range(len(self.q)), key=lambda i: -cosine(qr, self.q[i]))
            for j, i in enumerate(order[:k]):
                out[r, j] = self.q[i]
        return out


# ---- GatingTransformer -------------------------------------------------------------------------
class Gating:
    """One torch.nn.TransformerDecoder + Linear head per MoE layer, loaded from the C++ tensors."""

    def __init__(self, cfg, tensors):
        C, E = int(cfg["d-model"]), int(cfg["experts"])
        H, Lg, L = int(cfg["gating-heads"]), int(cfg["gating-layers"]), int(cfg["layers"])
        self.C, self.E, self.L, self.Lg = C, E, L, Lg
        gen = torch.Generator().manual_seed(0)
        self.dec, self.head = [], []
        t = lambda n: torch.tensor(np.asarray(tensors[n], np.float64))
        for l in range(L):
            layer = torch.nn.TransformerDecoderLayer(C, H, 4 * C, dropout=0.0, activation="relu", batch_first=True,
                                                     norm_first=False)
            dec = torch.nn.TransformerDecoder(layer, Lg)
            with torch.no_grad():
                for j, d in enumerate(dec.layers):
                    pre = f"layers.{l}.gating.dec.{j}."
                    # self-attention over one target: its q/k projections cannot matter; random ones
                    d.self_attn.in_proj_weight.copy_(torch.cat([torch.randn(2 * C, C, generator=gen), t(pre + "self_attn.v.weight")]))
                    d.self_attn.in_proj_bias.copy_(torch.cat([torch.randn(2 * C, generator=gen), t(pre + "self_attn.v.bias")]))
                    d.self_attn.out_proj.weight.copy_(t(pre + "self_attn.out.weight"))
                    d.self_attn.out_proj.bias.copy_(t(pre + "self_attn.out.bias"))
                    d.multihead_attn.in_proj_weight.copy_(torch.cat([t(pre + "cross_attn.q.weight"), t(pre + "cross_attn.kv.weight")]))
                    d.multihead_attn.in_proj_bias.copy_(torch.cat([t(pre + "cross_attn.q.bias"), t(pre + "cross_attn.kv.bias")]))
                    d.multihead_attn.out_proj.weight.copy_(t(pre + "cross_attn.out.weight"))
                    d.multihead_attn.out_proj.bias.copy_(t(pre + "cross_attn.out.bias"))
                    for a, b in (("linear1", "ff1"), ("linear2", "ff2"), ("norm1", "norm1"), ("norm2", "norm2"), ("norm3", "norm3")):
                        getattr(d, a).weight.copy_(t(pre + b + ".weight"))
                        getattr(d, a).bias.copy_(t(pre + b + ".bias"))
            head = torch.nn.Linear(C, 2 * E * C)
            with torch.no_grad():
                head.weight.copy_(t(f"layers.{l}.gating.head.weight"))
                head.bias.copy_(t(f"layers.{l}.gating.head.bias"))
            self.dec.append(dec)
            self.head.append(head)

    def params(self):
        return [p for m in self.dec + self.head for p in m.parameters()]

    def __call__(self, l, q, hist):
        """q (n,C), hist (n,Kh,C) -> mu, log_sigma (n,E,C)."""
        y = self.head[l](self.dec[l](q.unsqueeze(1), hist)).view(-1, 2, self.E, self.C)
        return y[:, 0], y[:, 1]

    def export(self):
        """Tensors named as in the C++ table."""
        C, out = self.C, {}
        for l in range(self.L):
            for j, d in enumerate(self.dec[l].layers):
                pre = f"layers.{l}.gating.dec.{j}."
                out[pre + "self_attn.v.weight"] = d.self_attn.in_proj_weight[2 * C:]
                out[pre + "self_attn.v.bias"] = d.self_attn.in_proj_bias[2 * C:]
                out[pre + "self_attn.out.weight"] = d.self_attn.out_proj.weight
                out[pre + "self_attn.out.bias"] = d.self_attn.out_proj.bias
                out[pre + "cross_attn.q.weight"] = d.multihead_attn.in_proj_weight[:C]
                out[pre + "cross_attn.q.bias"] = d.multihead_attn.in_proj_bias[:C]
                out[pre + "cross_attn.kv.weight"] = d.multihead_attn.in_proj_weight[C:]
                out[pre + "cross_attn.kv.bias"] = d.multihead_attn.in_proj_bias[C:]
                out[pre + "cross_attn.out.weight"] = d.multihead_attn.out_proj.weight
                out[pre + "cross_attn.out.bias"] = d.multihead_attn.out_proj.bias
                for a, b in (("linear1", "ff1"), ("linear2", "ff2"), ("norm1", "norm1"), ("norm2", "norm2"), ("norm3", "norm3")):
                    out[pre + b + ".weight"] = getattr(d, a).weight
                    out[pre + b + ".bias"] = getattr(d, a).bias
            out[f"layers.{l}.gating.head.weight"] = self.head[l].weight
            out[f"layers.{l}.gating.head.bias"] = self.head[l].bias
        return {k: v.detach().numpy().copy() for k, v in out.items()}


def gauss_scores(x, mu, ls):
    """x (..., C), mu/ls (..., E, C) broadcastable -> sum_i log N(x_i; mu, exp(ls)) (..., E)."""
    return torch.distributions.Normal(mu, torch.exp(ls)).log_prob(x.unsqueeze(-2)).sum(-1)


# ---- the hyper-step ----------------------------------------------------------------------------
class Pilr:
    def __init__(self, cfg):
        self.beta, self.var, self.mu, self.n = float(cfg["pilr-beta"]), float(cfg["pilr-initial-var"]), 0.0, 0
        self.power, self.exponent = float(cfg["pilr-power"]), float(cfg["pilr-exponent"])
        self.warmup = int(cfg["pilr-warmup"])

    def __call__(self, s):
        self.mu = (1 - self.beta) * self.mu + self.beta * s
        dev = abs(s - self.mu)
        self.var = (1 - self.beta) * self.var + self.beta * dev * dev
        self.n += 1
        if self.n <= self.warmup:
            return 1.0
        return math.exp(-self.power * (dev / (math.sqrt(self.var + 1e-9) + 1e-9)) ** self.exponent)


def pi_of(cfg, eps, tau, s, es, gs):
    a, g = float(cfg["pi-alpha"]), float(cfg["pi-gamma"])
    ne = eps / (tau + 1e-9)
    cost = (1 - g) * ne + g * s if cfg["pi-form"] == "published" else ne + (1 - g) * es + g * gs
    return math.exp(-a * cost)


def entropy(logits):
    p = torch.softmax(logits, -1)
    return -(p * torch.log(p)).sum(-1)


class Hyper:
    def __init__(self, cfg, params0, gating0):
        self.cfg = cfg
        self.C, self.L, self.H, self.E, self.K = (int(cfg[k]) for k in ("d-model", "layers", "heads", "experts", "top-k"))
        self.p = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in params0.items()}
        self.names = list(params0.keys())
        self.gt = Gating(cfg, gating0)
        self.buffers = [Buffer(int(cfg["buffer-capacity"]), self.C, float(cfg["priority-decay"])) for _ in range(self.L)]
        self.kh = int(cfg["history"])
        decays = lambda n, v: v.dim() == 2
        self.opt = torch.optim.AdamW(
            [{"params": [self.p[n] for n in self.names if decays(n, self.p[n])], "weight_decay": float(cfg["weight-decay"])},
             {"params": [self.p[n] for n in self.names if not decays(n, self.p[n])], "weight_decay": 0.0}],
            lr=1.0, betas=(float(cfg["adam-beta1"]), float(cfg["adam-beta2"])), eps=float(cfg["adam-eps"]))
        gp = self.gt.params()
        self.gopt = torch.optim.AdamW(
            [{"params": [q for q in gp if q.dim() == 2], "weight_decay": float(cfg["weight-decay"])},
             {"params": [q for q in gp if q.dim() != 2], "weight_decay": 0.0}],
            lr=1.0, betas=(float(cfg["adam-beta1"]), float(cfg["adam-beta2"])), eps=float(cfg["adam-eps"]))
        self.pilr_e, self.pilr_g = Pilr(cfg), Pilr(cfg)
        self.rs = [[0.0, 1.0] for _ in range(self.L)]
        self.rs_steps = 0

    def dyn_k(self, r, l):
        kmin = int(self.cfg["k-min"])
        z = 0.0 if self.rs_steps == 0 else (r - self.rs[l][0]) / math.sqrt(self.rs[l][1] + 1e-9)
        x = (self.K - kmin) * 0.5 * math.erfc(-z / math.sqrt(2))
        return min(max(kmin + math.floor(x + 0.5), kmin), self.K)

    def expert(self, pre, x):
        p = self.p
        return F.linear(F.gelu(F.linear(x, p[pre + "fc1.weight"], p[pre + "fc1.bias"])), p[pre + "fc2.weight"], p[pre + "fc2.bias"])

    def forward(self, tokens, targets):
        p, C, H, E, K = self.p, self.C, self.H, self.E, self.K
        B, T = tokens.shape
        x = p["wte"][tokens] + p["wpe"][:T]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        self.q32, self.r, self.routing, self.counts = [], [], [], []
        for l in range(self.L):
            pre = f"layers.{l}."
            h = F.layer_norm(x, (C,), p[pre + "ln1.weight"], p[pre + "ln1.bias"], eps=1e-5)
            q, k, v = F.linear(h, p[pre + "attn.qkv.weight"], p[pre + "attn.qkv.bias"]).split(C, dim=-1)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            att = torch.softmax(((q @ k.transpose(-1, -2)) / math.sqrt(C // H)).masked_fill(causal, float("-inf")), -1)
            x = x + F.linear((att @ v).transpose(1, 2).reshape(B, T, C), p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])
            h = F.layer_norm(x, (C,), p[pre + "ln2.weight"], p[pre + "ln2.bias"], eps=1e-5)
            qs = h.mean(1).detach()  # the sample's q: data to the gating network
            q32 = qs.numpy().astype(np.float32)
            hist = torch.tensor(self.buffers[l].retrieve(q32, self.kh).astype(np.float64))
            with torch.no_grad():
                mu, ls = self.gt(l, qs, hist)
            mu_ls = torch.stack([mu, ls], 1).detach().requires_grad_()  # stop-gradient; grad = routing grad
            r = (-gauss_scores(qs, mu, ls).max(-1).values / C).tolist()
            ks = [self.dyn_k(r[b], l) if self.cfg["dynamic-top-k"] == "true" else K for b in range(B)]
            scores = gauss_scores(h, mu_ls[:, 0].unsqueeze(1), mu_ls[:, 1].unsqueeze(1))  # (B,T,E)
            top, idx = torch.topk(scores, K, dim=-1)
            active = torch.tensor(ks).view(B, 1, 1) > torch.arange(K).view(1, 1, K)
            gates = torch.softmax(top.masked_fill(~active, float("-inf")), -1)
            out = torch.zeros_like(h)
            for e in range(E):
                out = out + (gates * (idx == e)).sum(-1, keepdim=True) * self.expert(f"{pre}moe.experts.{e}.", h)
            x = x + out
            self.q32.append(q32)
            self.r.append(r)
            self.routing.append(mu_ls)
            self.counts.append([int(((idx == e) & active).sum()) for e in range(E)])
            self.ks = ks
        x = F.layer_norm(x, (C,), p["lnf.weight"], p["lnf.bias"], eps=1e-5)
        logits = F.linear(x, p["wte"])
        mask = targets >= 0
        per_row = F.cross_entropy(logits[mask], targets[mask], reduction="none")
        rows_b = mask.nonzero()[:, 0]
        ent = entropy(logits[mask].detach())
        self.eps_b = [float(per_row[rows_b == b].mean()) for b in range(B)]
        self.tau_b = [float(ent[rows_b == b].mean()) for b in range(B)]
        self.tau = float(ent.mean())
        self.k_mean = sum(sum(c) for c in self.counts) / (B * T * self.L)
        return per_row.mean()

    def step(self, s, tokens, targets):
        cfg, E = self.cfg, self.E
        for t in list(self.p.values()):
            t.grad = None
        loss = self.forward(tokens, targets)
        loss.backward()
        names = self.names
        es = math.sqrt(sum(float((self.p[n].grad ** 2).sum()) for n in names))
        gs = math.sqrt(sum(float((m.grad ** 2).sum()) for m in self.routing))
        S = math.hypot(es, gs)
        pi = pi_of(cfg, loss.item(), self.tau, S, es, gs)
        # SMK per layer
        min_k, mode, masks = int(cfg["min-k"]), cfg["smk"], []
        for l in range(self.L):
            norms = [math.sqrt(sum(float((self.p[f"layers.{l}.moe.experts.{e}.{t}"].grad ** 2).sum())
                                   for t in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))) for e in range(E)]
            cnt = self.counts[l]
            pool = [e for e in range(E) if mode == "smk" or cnt[e] > 0]
            keep = sorted(pool, key=lambda e: (cnt[e] == 0, norms[e], e))[:min_k]
            masks.append(sum(1 << e for e in keep))
        # PILR
        if cfg["pilr"] == "single":
            me = mg = self.pilr_e(S)
        else:
            me, mg = self.pilr_e(es), self.pilr_g(gs)
        torch.nn.utils.clip_grad_norm_([self.p[n] for n in names], float(cfg["grad-clip"]))
        for l in range(self.L):
            for e in range(E):
                if not masks[l] >> e & 1:
                    for t in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
                        self.p[f"layers.{l}.moe.experts.{e}.{t}"].grad = None  # no update at all
        lr = lr_at(s, int(cfg["steps"]), int(cfg["warmup"]), float(cfg["lr"]), float(cfg["lr-min-ratio"]))
        for g in self.opt.param_groups:
            g["lr"] = lr * me
        self.opt.step()
        # curation
        B = tokens.shape[0]
        pis = [pi_of(cfg, self.eps_b[b], self.tau_b[b], S, es, gs) for b in range(B)]
        for l in range(self.L):
            action = tuple((masks[l] >> e) & 1 for e in range(E))
            self.buffers[l].add(self.q32[l], action, pis)
        beta = float(cfg["pilr-beta"])
        for l in range(self.L):
            r = np.array(self.r[l])
            mean, var = float(r.mean()), float(((r - r.mean()) ** 2).mean())
            if self.rs_steps == 0:
                self.rs[l] = [mean, var]
            else:
                mu = (1 - beta) * self.rs[l][0] + beta * mean
                self.rs[l] = [mu, (1 - beta) * self.rs[l][1] + beta * (var + (mean - mu) ** 2)]
        self.rs_steps += 1
        gating_loss = routing_acc = float("nan")
        if (s + 1) % int(cfg["meta-every"]) == 0:
            self.gopt.zero_grad()
            total, acc, drawn = 0.0, 0.0, []
            for l in range(self.L):
                buf = self.buffers[l]
                idx = buf.sample(int(cfg["meta-batch"]), int(cfg["seed"]), s, l)
                drawn.append(idx)
                q32 = np.stack([buf.q[i] for i in idx])
                y = torch.tensor([buf.act[i] for i in idx], dtype=torch.float64)
                hist = torch.tensor(buf.retrieve(q32, self.kh).astype(np.float64))
                qd = torch.tensor(q32.astype(np.float64))
                mu, ls = self.gt(l, qd, hist)
                sc = gauss_scores(qd, mu, ls)  # (n,E)
                bce = F.binary_cross_entropy_with_logits(sc, y)
                bce.backward()
                total += bce.item()
                top = torch.topk(sc.detach(), self.K, dim=-1).indices
                acc += float(y.gather(1, top).mean())
            for q in self.gt.params():
                if q.grad is None:
                    q.grad = torch.zeros_like(q)
            for g in self.gopt.param_groups:
                g["lr"] = float(cfg["meta-lr"]) * mg
            self.gopt.step()
            for l in range(self.L):
                self.buffers[l].decay(drawn[l])
            gating_loss, routing_acc = total / self.L, acc / self.L
        return {"loss": loss.item(), "tau": self.tau, "surprise": S, "expert_surprise": es, "gating_surprise": gs,
                "pi": pi, "lr_mod_expert": me, "lr_mod_gating": mg, "gating_loss": gating_loss,
                "routing_acc": routing_acc, "k_mean": self.k_mean, "smk": masks}


STAT_NAMES = ["loss", "tau", "surprise", "expert_surprise", "gating_surprise", "pi", "lr_mod_expert", "lr_mod_gating",
              "gating_loss", "routing_acc", "k_mean"]

CASES = {
    "smk-single": "model = pilf\nsteps = 3\nsmk = smk\nmin-k = 2\npilr = single\nmeta-every = 1\nmeta-batch = 5\n"
                  "history = 3\nbuffer-capacity = 16\n",
    "asmk-dual-dynk": "model = pilf\nsteps = 3\nsmk = asmk\nmin-k = 1\npilr = dual\nmeta-every = 2\nmeta-batch = 6\n"
                      "history = 2\nbuffer-capacity = 5\ndynamic-top-k = true\nk-min = 1\npi-form = reference-code\n"
                      "pi-gamma = 0.3\npilr-beta = 0.3\n",
}


@pytest.mark.parametrize("case", list(CASES))
def test_pilf_hyper_step_matches_torch(tmp_path, case):
    exe = os.environ.get("HYPERRNN_REFDUMP")
    if not exe:
        pytest.skip("HYPERRNN_REFDUMP not set: run through ctest")
    out = tmp_path / f"{case}.h5"
    subprocess.run([exe, "pilf", "double", "true", str(out), CASES[case]], check=True)
    f = h5py.File(out, "r")
    cfg = parse_ini(f.attrs["config"])
    p0 = {n: f["params0"][n][()] for n in f["params0"]}
    g0 = {n: f["gating0"][n][()] for n in f["gating0"]}
    hy = Hyper(cfg, p0, g0)
    # the GatingTransformer alone first: C++ ops vs torch.nn.TransformerDecoder on a probe
    for bank in range(hy.L):
        with torch.no_grad():
            mu, ls = hy.gt(bank, torch.tensor(f["probe/q"][()]), torch.tensor(f["probe/hist"][()]))
        probe = f[f"probe/out{bank}"][()]
        err = max(rel(probe[:, 0], mu.numpy()), rel(probe[:, 1], ls.numpy()))
        assert err <= 1e-12, f"GatingTransformer bank {bank} probe: relative error {err:.3g}"
    for s in range(int(cfg["steps"])):
        st = hy.step(s, torch.tensor(f[f"batch/{s}/tokens"][()], dtype=torch.long),
                     torch.tensor(f[f"batch/{s}/targets"][()], dtype=torch.long))
        ours = f[f"step/{s}/stats"][()]
        for i, name in enumerate(STAT_NAMES):
            a, b = ours[i], st[name]
            if math.isnan(b):
                assert math.isnan(a), f"step {s} {name}: C++ {a}, torch NaN"
                continue
            assert abs(a - b) <= 1e-9 * max(abs(b), 1e-12) + 1e-300, f"step {s} {name}: C++ {a!r}, torch {b!r}"
        assert list(f[f"step/{s}/smk"][()]) == st["smk"], f"step {s} SMK sets"
        for l in range(hy.L):
            pr = f[f"step/{s}/buffer{l}/priority"][()]
            assert len(pr) == len(hy.buffers[l].prio), f"step {s} layer {l} buffer size"
            assert np.allclose(pr, hy.buffers[l].prio, rtol=1e-9, atol=1e-15), f"step {s} layer {l} priorities"
            assert int(f[f"step/{s}/buffer{l}/prototypes"][0]) == hy.buffers[l].prototypes()
        print(f"{case} step {s}: " + ", ".join(f"{n} {st[n]:.6g}" for n in STAT_NAMES) + f", smk {st['smk']}")
    worst = 0.0
    for group, start, theirs in (("params_final", p0, {n: hy.p[n].detach().numpy() for n in p0}),
                                 ("gating_final", g0, hy.gt.export())):
        for n in start:
            err = change_error(n, f[group][n][()], theirs[n], start[n], hy.C)
            worst = max(worst, err)
            assert err <= 1e-10, f"{group}/{n}: differs by {err:.3g} of its change after the steps"
    print(f"{case}: worst parameter error {worst:.3g} of the change")
