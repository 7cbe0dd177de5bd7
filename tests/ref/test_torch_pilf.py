"""Independent PyTorch implementation of the `pilf` hyper-step, checked against the C++ one for 3
steps, in both profiles.

The reference profile follows the reference's PILF-2 train loop as its code runs
(utils/train_loops/pilf_train_loop.py, main.py, utils/experience_buffer.py,
utils/strategies/backpropagation_strategies.py, utils/pi_calculator.py, models/moe_layers.py;
docs/pilf.md), not the C++ code: torch.optim.Adam without decay and no clipping,
zero_grad(set_to_none=True) (an expert that received no tokens has no gradient), SMK as
grad.zero_() on the dropped experts followed by Adam's step (a dropped expert moves by its
momentum), PI = exp(-alpha (eps/(tau + 1e-9) + surprise)) over every non-GatingTransformer
parameter gradient, q not detached (the task loss reaches the backbone through the
GatingTransformer, whose own task-loss gradient is discarded by its optimizer's zero_grad before
meta-training), one experience buffer shared by all MoE layers (multi-hot actions over layers x
experts, one add per layer with the batch PI), meta-training every step on a replay set drawn once
per (task, epoch) with the buffer's size and reused, BCE averaged over layers, priorities decayed
after the gating step, dropout 0.1 in the model and the GatingTransformer. The hyperrnn profile is
our variant (AdamW with decay on matrices, clipping, SMK freezing dropped experts, PILR, detached
routing, one buffer per layer with per-sample PI, fresh replay draws, summed BCE).

The MoE dispatch is written the reference's way (each expert runs on the tokens routed to it, so
an unrouted expert's parameters get no gradient). The GatingTransformer is a functional decoder
(explicit self-attention over the one-token target, cross-attention over the history, ReLU FFN,
post-norm), checked first against torch.nn.TransformerDecoder with dropout 0. Randomness the two
sides cannot share is replaced by the same counter RNG: Philox4x32-10 is re-implemented here
(checked against the Random123 known-answer vector) and drives the replay draws and every dropout
mask (one 32-bit word per element, kept when >= floor(p 2^32)).

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
ROUTING, DROPOUT, GATING_DROPOUT, META_DROPOUT = 4, 6, 7, 8


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
        self.ctr = [0, index & MASK, step & MASK, purpose]
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


def test_philox_known_answer():
    assert philox([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def keep(seed, purpose, step, index, n, p):
    """Dropout keep mask (n) as 0/1 doubles."""
    thr = min(math.floor(p * 2.0 ** 32), MASK)
    st = Stream(seed, purpose, step, index)
    return torch.tensor([1.0 if st.u32() >= thr else 0.0 for _ in range(n)])


# ---- routing experience buffer -----------------------------------------------------------------
def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b) / max(math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)), 1e-12)


class Buffer:
    """PrototypingExperienceBuffer (utils/experience_buffer.py) with deterministic ties (lower index
    first where torch.topk leaves the order open); q, prototype means and priorities in float32."""

    def __init__(self, cap, dim, decay):
        self.cap, self.dim, self.decay_f = cap, dim, decay
        self.q, self.act, self.prio, self.proto_of = [], [], [], []
        self.proto = np.zeros((cap, dim), np.float32)
        self.count = [0] * cap

    def add(self, q32, actions, pi):
        B = len(pi)
        pi = [np.float32(p) for p in pi]  # pi_scores: a float32 tensor
        budget = min(B, math.floor(B * (1.0 - sum(float(p) for p in pi) / B)))
        if budget <= 0:
            return
        prio_all = [np.float32(1.0) - p for p in pi]  # float32: 1 - PI is 1 for PI < 3e-8
        cand = sorted(range(B), key=lambda b: -prio_all[b])[:budget]  # stable: ties lower index
        prio = [prio_all[c] for c in cand]
        proto, needs = [], []
        for i, c in enumerate(cand):  # best match among the prototypes active before this call
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
        else:  # the i-th highest candidate replaces the i-th lowest item if strictly higher
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
        # evictions first, then the new members, then each prototype's mean from its final count
        for slot, i in writes:
            if slot < size and self.proto_of[slot] >= 0:
                self.count[self.proto_of[slot]] -= 1
        gained = {}
        for slot, i in writes:
            item = (q32[cand[i]].copy(), tuple(actions[cand[i]]), prio[i], proto[i])
            if slot < len(self.q):
                self.q[slot], self.act[slot], self.prio[slot], self.proto_of[slot] = item
            else:
                for lst, v in zip((self.q, self.act, self.prio, self.proto_of), item):
                    lst.append(v)
            self.count[proto[i]] += 1
            gained.setdefault(proto[i], []).append(q32[cand[i]].astype(np.float64))
        for p in sorted(gained):
            n, cnt = len(gained[p]), self.count[p]
            self.proto[p] = ((self.proto[p].astype(np.float64) * (cnt - n) + np.sum(gained[p], axis=0)) / cnt).astype(np.float32)
        for p in range(self.cap):
            if self.count[p] <= 0:
                self.count[p] = 0
                self.proto[p] = 0

    def prototypes(self):
        return sum(1 for c in self.count if c > 0)

    def sample(self, n, seed, step, stream):
        if not self.q:
            return []
        rng, total = Stream(seed, ROUTING, step, stream), sum(float(p) for p in self.prio)
        out = []
        for _ in range(n):
            if total <= 0:
                out.append(rng.below(len(self.q)))
                continue
            u, acc, pick = rng.uniform_double() * total, 0.0, len(self.q) - 1
            for i, p in enumerate(self.prio):
                acc += float(p)
                if u < acc:
                    pick = i
                    break
            out.append(pick)
        return out

    def decay(self, idx):
        for i in sorted(set(idx)):  # priority_buffer[indices] *= decay: a repeated index decays once
            self.prio[i] = np.float32(self.prio[i] * np.float32(self.decay_f))

    def retrieve(self, queries32, k):
        out = np.zeros((len(queries32), k, self.dim), np.float32)
        for r, qr in enumerate(queries32):
            order = sorted(range(len(self.q)), key=lambda i: -cosine(qr, self.q[i]))
            for j, i in enumerate(order[:k]):
                out[r, j] = self.q[i]
        return out


# ---- GatingTransformer -------------------------------------------------------------------------
def ln(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5)


class Gating:
    """One torch.nn.TransformerDecoder(Layer) stack + Linear head per MoE layer, written
    functionally so that dropout can use given masks; its self-attention has query and key
    projections of its own (random: with one target they cannot matter)."""

    def __init__(self, cfg, tensors):
        C, E = int(cfg["d-model"]), int(cfg["experts"])
        self.H, self.Lg, self.L = int(cfg["gating-heads"]), int(cfg["gating-layers"]), int(cfg["layers"])
        self.C, self.E = C, E
        self.p = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in tensors.items()}
        gen = torch.Generator().manual_seed(0)
        self.sa_qk = {(l, j): (torch.randn(2 * C, C, generator=gen), torch.randn(2 * C, generator=gen))
                      for l in range(self.L) for j in range(self.Lg)}

    def params(self):
        return list(self.p.values())

    def __call__(self, l, q, hist, mask=None):
        """q (n,C), hist (n,Kh,C) -> mu, log_sigma (n,E,C). mask(j, site, per_query) -> (n, per_query)
        keep masks times 1/(1-p), or None (no dropout)."""
        C, H, p = self.C, self.H, self.p
        n, hs = q.shape[0], C // self.H
        x = q.unsqueeze(1)  # (n,1,C): the one-token target
        drop = (lambda j, site, m: mask(j, site, m)) if mask else None
        for j in range(self.Lg):
            pre = f"layers.{l}.gating.dec.{j}."
            wqk, bqk = self.sa_qk[(l, j)]
            qk = F.linear(x, wqk, bqk)
            sq, sk = qk[..., :C], qk[..., C:]
            sv = F.linear(x, p[pre + "self_attn.v.weight"], p[pre + "self_attn.v.bias"])
            heads = lambda t: t.view(n, -1, H, hs).transpose(1, 2)  # (n,H,T,hs)
            att = torch.softmax(heads(sq) @ heads(sk).transpose(-1, -2) / math.sqrt(hs), -1)  # (n,H,1,1)
            if drop:
                att = att * drop(j, 0, H).view(n, H, 1, 1)
            y = (att @ heads(sv)).transpose(1, 2).reshape(n, 1, C)
            y = F.linear(y, p[pre + "self_attn.out.weight"], p[pre + "self_attn.out.bias"])
            if drop:
                y = y * drop(j, 1, C).view(n, 1, C)
            x = ln(x + y, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
            cq = F.linear(x, p[pre + "cross_attn.q.weight"], p[pre + "cross_attn.q.bias"])
            kv = F.linear(hist, p[pre + "cross_attn.kv.weight"], p[pre + "cross_attn.kv.bias"])
            att = torch.softmax(heads(cq) @ heads(kv[..., :C]).transpose(-1, -2) / math.sqrt(hs), -1)  # (n,H,1,Kh)
            if drop:
                att = att * drop(j, 2, H * hist.shape[1]).view(n, H, 1, -1)
            y = (att @ heads(kv[..., C:])).transpose(1, 2).reshape(n, 1, C)
            y = F.linear(y, p[pre + "cross_attn.out.weight"], p[pre + "cross_attn.out.bias"])
            if drop:
                y = y * drop(j, 3, C).view(n, 1, C)
            x = ln(x + y, p[pre + "norm2.weight"], p[pre + "norm2.bias"])
            h = F.relu(F.linear(x, p[pre + "ff1.weight"], p[pre + "ff1.bias"]))
            if drop:
                h = h * drop(j, 4, 4 * C).view(n, 1, 4 * C)
            y = F.linear(h, p[pre + "ff2.weight"], p[pre + "ff2.bias"])
            if drop:
                y = y * drop(j, 5, C).view(n, 1, C)
            x = ln(x + y, p[pre + "norm3.weight"], p[pre + "norm3.bias"])
        out = F.linear(x.squeeze(1), p[f"layers.{l}.gating.head.weight"], p[f"layers.{l}.gating.head.bias"])
        out = out.view(n, 2, self.E, C)
        return out[:, 0], out[:, 1]

    def torch_decoder(self, l):
        """torch.nn.TransformerDecoder (dropout 0) with this bank's weights, for the probe check."""
        C, t = self.C, lambda name: self.p[name].detach()
        layer = torch.nn.TransformerDecoderLayer(C, self.H, 4 * C, dropout=0.0, activation="relu", batch_first=True)
        dec = torch.nn.TransformerDecoder(layer, self.Lg)
        with torch.no_grad():
            for j, d in enumerate(dec.layers):
                pre = f"layers.{l}.gating.dec.{j}."
                wqk, bqk = self.sa_qk[(l, j)]
                d.self_attn.in_proj_weight.copy_(torch.cat([wqk, t(pre + "self_attn.v.weight")]))
                d.self_attn.in_proj_bias.copy_(torch.cat([bqk, t(pre + "self_attn.v.bias")]))
                d.self_attn.out_proj.weight.copy_(t(pre + "self_attn.out.weight"))
                d.self_attn.out_proj.bias.copy_(t(pre + "self_attn.out.bias"))
                d.multihead_attn.in_proj_weight.copy_(torch.cat([t(pre + "cross_attn.q.weight"), t(pre + "cross_attn.kv.weight")]))
                d.multihead_attn.in_proj_bias.copy_(torch.cat([t(pre + "cross_attn.q.bias"), t(pre + "cross_attn.kv.bias")]))
                d.multihead_attn.out_proj.weight.copy_(t(pre + "cross_attn.out.weight"))
                d.multihead_attn.out_proj.bias.copy_(t(pre + "cross_attn.out.bias"))
                for a, b in (("linear1", "ff1"), ("linear2", "ff2"), ("norm1", "norm1"), ("norm2", "norm2"), ("norm3", "norm3")):
                    getattr(d, a).weight.copy_(t(pre + b + ".weight"))
                    getattr(d, a).bias.copy_(t(pre + b + ".bias"))
        head = torch.nn.Linear(C, 2 * self.E * C)
        with torch.no_grad():
            head.weight.copy_(t(f"layers.{l}.gating.head.weight"))
            head.bias.copy_(t(f"layers.{l}.gating.head.bias"))
        return lambda q, hist: head(dec(q.unsqueeze(1), hist)).view(-1, 2, self.E, C)

    def export(self):
        return {k: v.detach().numpy().copy() for k, v in self.p.items()}


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
    cost = {"published": lambda: (1 - g) * ne + g * s, "reference-code": lambda: ne + (1 - g) * es + g * gs,
            "reference-loop": lambda: ne + s}[cfg["pi-form"]]()
    return math.exp(-a * cost)


def entropy(logits):
    p = torch.softmax(logits, -1)
    return -(p * torch.log(p + 1e-9)).sum(-1)  # PICalculator._calculate_tau


class Hyper:
    def __init__(self, cfg, params0, gating0):
        self.cfg = cfg
        self.C, self.L, self.H, self.E, self.K = (int(cfg[k]) for k in ("d-model", "layers", "heads", "experts", "top-k"))
        self.seed, self.pdrop, self.pgate = int(cfg["seed"]), float(cfg["dropout"]), float(cfg["gating-dropout"])
        self.p = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in params0.items()}
        self.names = list(params0.keys())
        self.gt = Gating(cfg, gating0)
        self.shared = cfg["buffer"] == "shared"
        cap, decay = int(cfg["buffer-capacity"]), float(cfg["priority-decay"])
        self.buffers = [Buffer(cap, self.C, decay) for _ in range(1 if self.shared else self.L)]
        self.kh = int(cfg["history"])
        betas, eps = (float(cfg["adam-beta1"]), float(cfg["adam-beta2"])), float(cfg["adam-eps"])
        wd = float(cfg["weight-decay"])
        if wd == 0:  # main.py: torch.optim.Adam over the non-GatingTransformer parameters, no decay
            self.opt = torch.optim.Adam([self.p[n] for n in self.names], lr=1.0, betas=betas, eps=eps)
            self.gopt = torch.optim.Adam(self.gt.params(), lr=1.0, betas=betas, eps=eps)
        else:  # AdamW, decay on matrices only
            self.opt = torch.optim.AdamW(
                [{"params": [self.p[n] for n in self.names if self.p[n].dim() == 2], "weight_decay": wd},
                 {"params": [self.p[n] for n in self.names if self.p[n].dim() != 2], "weight_decay": 0.0}],
                lr=1.0, betas=betas, eps=eps)
            gp = self.gt.params()
            self.gopt = torch.optim.AdamW([{"params": [q for q in gp if q.dim() == 2], "weight_decay": wd},
                                           {"params": [q for q in gp if q.dim() != 2], "weight_decay": 0.0}],
                                          lr=1.0, betas=betas, eps=eps)
        self.pilr_e, self.pilr_g = Pilr(cfg), Pilr(cfg)
        self.rs = [[0.0, 1.0] for _ in range(self.L)]
        self.rs_steps = 0
        self.replay_cache = {}  # (task, epoch) -> (q32, actions, indices): gating_loss_cache
        self.momentum_moves = []  # (step, layer, expert): dropped with tokens after an update, stepped anyway
        self.updated = set()  # (layer, expert) updated with its own gradient at some step

    def dyn_k(self, r, l):
        kmin = int(self.cfg["k-min"])
        z = 0.0 if self.rs_steps == 0 else (r - self.rs[l][0]) / math.sqrt(self.rs[l][1] + 1e-9)
        x = (self.K - kmin) * 0.5 * math.erfc(-z / math.sqrt(2))
        return min(max(kmin + math.floor(x + 0.5), kmin), self.K)

    def expert(self, pre, x):
        p = self.p
        return F.linear(F.gelu(F.linear(x, p[pre + "fc1.weight"], p[pre + "fc1.bias"])), p[pre + "fc2.weight"], p[pre + "fc2.bias"])

    def drop(self, step, site, n):
        """The main model's mask for every sample: (B, n) times 1/(1-p); None without dropout."""
        if step is None or self.pdrop == 0:
            return None
        sites = 1 + 5 * self.L
        return torch.stack([keep(self.seed, DROPOUT, step, b * sites + site, n, self.pdrop) for b in range(self.B)]) / (1 - self.pdrop)

    def gate_mask(self, purpose, step, l, n_queries):
        if self.pgate == 0:
            return None
        sites, Lg = self.L * self.gt.Lg * 6, self.gt.Lg
        cache = {}

        def mask(j, site, per_query):
            key = (j, site)
            if key not in cache:
                s0 = (l * Lg + j) * 6 + site
                cache[key] = torch.stack([keep(self.seed, purpose, step, b * sites + s0, per_query, self.pgate)
                                          for b in range(n_queries)]) / (1 - self.pgate)
            return cache[key]
        return mask

    def forward(self, tokens, targets, step):
        p, C, H, E, K, cfg = self.p, self.C, self.H, self.E, self.K, self.cfg
        B, T = tokens.shape
        self.B = B
        x = p["wte"][tokens] + p["wpe"][:T]
        if (m := self.drop(step, 0, T * C)) is not None:
            x = x * m.view(B, T, C)
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        self.q32, self.r, self.routing, self.counts = [], [], [], []
        detach = cfg["gating-backprop"] != "true"
        for l in range(self.L):
            pre, site = f"layers.{l}.", 1 + 5 * l
            h = F.layer_norm(x, (C,), p[pre + "ln1.weight"], p[pre + "ln1.bias"], eps=1e-5)
            q, k, v = F.linear(h, p[pre + "attn.qkv.weight"], p[pre + "attn.qkv.bias"]).split(C, dim=-1)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            att = torch.softmax(((q @ k.transpose(-1, -2)) / math.sqrt(C // H)).masked_fill(causal, float("-inf")), -1)
            if (m := self.drop(step, site, H * T * T)) is not None:
                att = att * m.view(B, H, T, T)
            y = F.linear((att @ v).transpose(1, 2).reshape(B, T, C), p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])
            if (m := self.drop(step, site + 1, T * C)) is not None:
                y = y * m.view(B, T, C)
            x = x + y
            h = F.layer_norm(x, (C,), p[pre + "ln2.weight"], p[pre + "ln2.bias"], eps=1e-5)
            qs = h.mean(1)  # the sample's q
            if detach:
                qs = qs.detach()
            q32 = qs.detach().numpy().astype(np.float32)
            buf = self.buffers[0 if self.shared else l]
            hist = torch.tensor(buf.retrieve(q32, self.kh).astype(np.float64))
            mask = self.gate_mask(GATING_DROPOUT, step, l, B) if step is not None else None
            if detach:
                with torch.no_grad():
                    mu, ls = self.gt(l, qs, hist, mask)
                mu_ls = torch.stack([mu, ls], 1).detach().requires_grad_()  # stop-gradient; grad = routing grad
            else:
                mu, ls = self.gt(l, qs, hist, mask)
                mu_ls = torch.stack([mu, ls], 1)
                mu_ls.retain_grad()  # the routing gradient, for gating_surprise
            r = (-gauss_scores(qs.detach(), mu_ls[:, 0].detach(), mu_ls[:, 1].detach()).max(-1).values / C).tolist()
            ks = [self.dyn_k(r[b], l) if cfg["dynamic-top-k"] == "true" else K for b in range(B)]
            scores = gauss_scores(h, mu_ls[:, 0].unsqueeze(1), mu_ls[:, 1].unsqueeze(1))  # (B,T,E)
            top, idx = torch.topk(scores, K, dim=-1)
            active = torch.tensor(ks).view(B, 1, 1) > torch.arange(K).view(1, 1, K)
            gates = torch.softmax(top.masked_fill(~active, float("-inf")), -1)
            # the reference's dispatch: each expert on the (token, slot) pairs routed to it
            hf, out = h.reshape(B * T, C), torch.zeros(B * T, C)
            sel_all = (idx == torch.arange(E).view(E, 1, 1, 1)) & active  # (E,B,T,K)
            counts = []
            for e in range(E):
                tok, slot = sel_all[e].reshape(B * T, K).nonzero(as_tuple=True)
                counts.append(int(tok.numel()))
                if tok.numel() == 0:
                    continue
                g = gates.reshape(B * T, K)[tok, slot].unsqueeze(1)
                out = out.index_add(0, tok, g * self.expert(f"{pre}moe.experts.{e}.", hf[tok]))
            y = out.view(B, T, C)
            if (m := self.drop(step, site + 2, T * C)) is not None:
                y = y * m.view(B, T, C)
            x = x + y
            self.q32.append(q32)
            self.r.append(r)
            self.routing.append(mu_ls)
            self.counts.append(counts)
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

    def expert_tensors(self, l, e):
        return [self.p[f"layers.{l}.moe.experts.{e}.{t}"] for t in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")]

    def step(self, s, tokens, targets):
        cfg, E, L = self.cfg, self.E, self.L
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward(tokens, targets, s)
        loss.backward()
        names = self.names
        grads = [self.p[n].grad for n in names if self.p[n].grad is not None]
        S = math.sqrt(sum(float((g ** 2).sum()) for g in grads))  # PICalculator: every main-model gradient
        es = S  # pilf has no router parameters: the expert group is every main-model parameter
        gs = math.sqrt(sum(float((m.grad ** 2).sum()) for m in self.routing))
        if cfg["surprise-routing"] == "true":
            S = math.hypot(es, gs)
        pi = pi_of(cfg, loss.item(), self.tau, S, es, gs)
        # SMK per layer (SurpriseMinKStrategy / ActivatedSurpriseMinKStrategy)
        min_k, mode, masks = int(cfg["min-k"]), cfg["smk"], []
        for l in range(L):
            norms = []
            for e in range(E):
                g = [t.grad for t in self.expert_tensors(l, e) if t.grad is not None]
                norms.append(math.sqrt(sum(float((x ** 2).sum()) for x in g)) if g else math.inf)
            pool = [e for e in range(E) if mode == "smk" or self.counts[l][e] > 0]
            keep_ = sorted(pool, key=lambda e: (norms[e], e))[:min_k]  # stable sort by surprise
            masks.append(sum(1 << e for e in keep_))
        # PILR
        me = mg = 1.0
        if cfg["pilr"] == "single":
            me = mg = self.pilr_e(S)
        elif cfg["pilr"] == "dual":
            me, mg = self.pilr_e(es), self.pilr_g(gs)
        if float(cfg["grad-clip"]) > 0:
            torch.nn.utils.clip_grad_norm_([self.p[n] for n in names], float(cfg["grad-clip"]))
        for l in range(L):
            for e in range(E):
                if masks[l] >> e & 1:
                    continue
                for t in self.expert_tensors(l, e):
                    if t.grad is None:
                        continue
                    if cfg["smk-dropped"] == "step":
                        t.grad.zero_()  # Adam still steps it
                    else:
                        t.grad = None  # no update at all
                if cfg["smk-dropped"] == "step" and self.counts[l][e] > 0 and (l, e) in self.updated:
                    self.momentum_moves.append((s, l, e))  # it has momentum from an earlier update
        for l in range(L):
            for e in range(E):
                if masks[l] >> e & 1 and self.counts[l][e] > 0:
                    self.updated.add((l, e))
        lr = lr_at(s, int(cfg["steps"]), int(cfg["warmup"]), float(cfg["lr"]), float(cfg["lr-min-ratio"]))
        for g in self.opt.param_groups:
            g["lr"] = lr * me
        self.opt.step()
        # curation: with SMK (the reference's condition) or always (hyperrnn)
        B = tokens.shape[0]
        curate = cfg["smk"] != "off" or cfg["curation"] == "always"
        if cfg["curation-pi"] == "batch":
            pis = [pi] * B
        else:
            pis = [pi_of(cfg, self.eps_b[b], self.tau_b[b], S, es, gs) for b in range(B)]
        if curate:
            for l in range(L):
                width, off = (L * E, l * E) if self.shared else (E, 0)
                action = [0] * width
                for e in range(E):
                    action[off + e] = (masks[l] >> e) & 1
                self.buffers[0 if self.shared else l].add(self.q32[l], [action] * B, pis)
        beta = float(cfg["pilr-beta"])
        for l in range(L):
            r = np.array(self.r[l])
            mean, var = float(r.mean()), float(((r - r.mean()) ** 2).mean())
            if self.rs_steps == 0:
                self.rs[l] = [mean, var]
            else:
                mu = (1 - beta) * self.rs[l][0] + beta * mean
                self.rs[l] = [mu, (1 - beta) * self.rs[l][1] + beta * (var + (mean - mu) ** 2)]
        self.rs_steps += 1
        gating_loss = routing_acc = float("nan")
        if curate and any(b.q for b in self.buffers) and (s + 1) % int(cfg["meta-every"]) == 0:
            self.gopt.zero_grad(set_to_none=True)  # also discards the task loss's GatingTransformer gradient
            sets = []
            for k, buf in enumerate(self.buffers):
                n = int(cfg["meta-batch"]) or len(buf.q)
                if cfg["meta-replay"] == "fresh":
                    idx = buf.sample(n, self.seed, s, k)
                    sets.append((np.stack([buf.q[i] for i in idx]), [buf.act[i] for i in idx], idx))
                else:  # one task, one epoch in these steps: drawn at the first meta step, then reused
                    if (k, 0, 1) not in self.replay_cache:
                        idx = buf.sample(n, self.seed, s, k)
                        self.replay_cache[(k, 0, 1)] = (np.stack([buf.q[i] for i in idx]), [buf.act[i] for i in idx], idx)
                    sets.append(self.replay_cache[(k, 0, 1)])
            losses, accs = [], []
            for l in range(L):
                k = 0 if self.shared else l
                q32, acts, idx = sets[k]
                off = l * E if self.shared else 0
                y = torch.tensor([a[off:off + E] for a in acts], dtype=torch.float64)
                hist = torch.tensor(self.buffers[k].retrieve(q32, self.kh).astype(np.float64))
                qd = torch.tensor(q32.astype(np.float64))
                mu, ls = self.gt(l, qd, hist, self.gate_mask(META_DROPOUT, s, l, len(idx)))
                sc = gauss_scores(qd, mu, ls)  # (n,E)
                bce = F.binary_cross_entropy_with_logits(sc, y)
                if torch.isfinite(bce):
                    losses.append(bce)
                    top = torch.topk(sc.detach(), self.K, dim=-1).indices
                    accs.append(float(y.gather(1, top).mean()))
            total = sum(losses) / len(losses) if cfg["meta-loss"] == "mean" else sum(losses)
            total.backward()
            for g in self.gopt.param_groups:
                g["lr"] = float(cfg["meta-lr"]) * mg
            self.gopt.step()
            for k, buf in enumerate(self.buffers):
                buf.decay(sets[k][2])
            gating_loss, routing_acc = sum(float(x) for x in losses) / len(losses), sum(accs) / len(accs)
        return {"loss": loss.item(), "tau": self.tau, "surprise": S, "expert_surprise": es, "gating_surprise": gs,
                "pi": pi, "lr_mod_expert": me, "lr_mod_gating": mg, "gating_loss": gating_loss,
                "routing_acc": routing_acc, "k_mean": self.k_mean, "smk": masks}


STAT_NAMES = ["loss", "tau", "surprise", "expert_surprise", "gating_surprise", "pi", "lr_mod_expert", "lr_mod_gating",
              "gating_loss", "routing_acc", "k_mean"]

CASES = {
    # the reference profile as it is (dropout, shared buffer, q's gradient through the router, ...)
    "reference": "model = pilf\nsteps = 3\nmin-k = 2\nhistory = 3\nbuffer-capacity = 16\nd-ff = 24\n",
    # the reference profile with ASMK, dynamic top-k and a 5-item buffer that fills and evicts
    "reference-asmk-dynk": "model = pilf\nsteps = 3\nsmk = asmk\nmin-k = 1\nhistory = 2\nbuffer-capacity = 5\n"
                           "dynamic-top-k = true\nk-min = 1\nd-ff = 24\n",
    # the reference profile with replay sets of 32 and 48 items (fresh draws of the buffer's size), so
    # that meta-training runs in several chunks of 16 items whose gradients are added in chunk order
    "reference-chunked-meta": "model = pilf\nsteps = 3\nbatch = 16\nmin-k = 2\nhistory = 3\nbuffer-capacity = 64\n"
                              "meta-replay = fresh\nd-ff = 24\n",
    # our profile: AdamW, clip, warm-up + cosine, PILR, SMK freezing, per-layer buffers, fresh draws
    "hyperrnn-smk-single": "model = pilf\npilf-profile = hyperrnn\nsteps = 3\nsmk = smk\nmin-k = 2\npilr = single\n"
                           "warmup = 2\nlr-min-ratio = 0.1\ngrad-clip = 0.5\nweight-decay = 0.1\n"
                           "meta-every = 1\nmeta-batch = 5\nhistory = 3\nbuffer-capacity = 16\n",
    "hyperrnn-asmk-dual-dynk": "model = pilf\npilf-profile = hyperrnn\nsteps = 3\nsmk = asmk\nmin-k = 1\npilr = dual\n"
                               "warmup = 2\nlr-min-ratio = 0.1\ngrad-clip = 0.5\nweight-decay = 0.1\n"
                               "meta-every = 2\nmeta-batch = 6\nhistory = 2\nbuffer-capacity = 5\ndynamic-top-k = true\n"
                               "k-min = 1\npi-form = reference-code\npi-gamma = 0.3\npilr-beta = 0.3\n",
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
    if case.startswith("reference"):  # the profile supplied these (refdump's small defaults aside)
        assert (cfg["pilr"], cfg["smk-dropped"], cfg["buffer"], cfg["gating-backprop"], cfg["meta-every"], cfg["dropout"]) \
            == ("off", "step", "shared", "true", "1", "0.1")
    p0 = {n: f["params0"][n][()] for n in f["params0"]}
    g0 = {n: f["gating0"][n][()] for n in f["gating0"]}
    hy = Hyper(cfg, p0, g0)
    # the GatingTransformer alone first: C++ ops and this functional decoder vs torch.nn.TransformerDecoder
    for bank in range(hy.L):
        q, hist = torch.tensor(f["probe/q"][()]), torch.tensor(f["probe/hist"][()])
        with torch.no_grad():
            ref = hy.gt.torch_decoder(bank)(q, hist)
            mu, ls = hy.gt(bank, q, hist)
        probe = f[f"probe/out{bank}"][()]
        err = max(rel(probe[:, 0], ref[:, 0].numpy()), rel(probe[:, 1], ref[:, 1].numpy()),
                  rel(mu.numpy(), ref[:, 0].numpy()), rel(ls.numpy(), ref[:, 1].numpy()))
        assert err <= 1e-12, f"GatingTransformer bank {bank} probe: relative error {err:.3g}"
    prev = p0
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
        assert list(f[f"step/{s}/tokens"][()]) == [c for layer in hy.counts for c in layer], f"step {s} expert tokens"
        for k, buf in enumerate(hy.buffers):
            pr = f[f"step/{s}/buffer{k}/priority"][()]
            assert len(pr) == len(buf.prio), f"step {s} buffer {k} size"
            assert np.allclose(pr, buf.prio, rtol=1e-9, atol=1e-15), f"step {s} buffer {k} priorities"
            assert int(f[f"step/{s}/buffer{k}/prototypes"][0]) == buf.prototypes()
        # SMK "step": an expert dropped after it received tokens moves by its momentum in C++ too
        now = {n: f[f"step/{s}/params"][n][()] for n in f[f"step/{s}/params"]}
        for (ms, l, e) in hy.momentum_moves:
            if ms == s and s > 0:
                w = f"layers.{l}.moe.experts.{e}.fc1.weight"
                assert not np.array_equal(now[w], prev[w]), f"step {s}: dropped expert {e} of layer {l} did not move"
        prev = now
        print(f"{case} step {s}: " + ", ".join(f"{n} {st[n]:.6g}" for n in STAT_NAMES) + f", smk {st['smk']}")
    if cfg["smk-dropped"] == "step":  # the case that matters happened: a dropped expert with momentum
        assert hy.momentum_moves, "no dropped expert with tokens and momentum in these steps"
    worst = 0.0
    for group, start, theirs in (("params_final", p0, {n: hy.p[n].detach().numpy() for n in p0}),
                                 ("gating_final", g0, hy.gt.export())):
        for n in start:
            err = change_error(n, f[group][n][()], theirs[n], start[n], hy.C)
            worst = max(worst, err)
            assert err <= 1e-10, f"{group}/{n}: differs by {err:.3g} of its change after the steps"
    print(f"{case}: worst parameter error {worst:.3g} of the change")
