"""Independent PyTorch implementation of the `dense`, `moe` and `gauss-moe` models, the loss, the
gradient clipping, the warm-up + cosine schedule and AdamW, checked against hyperrnn's C++ code.

The C++ tool hyperrnn_refdump writes initial parameters, five MQAR batches, the first batch's loss
and every gradient, and the parameters after five training steps. PyTorch recomputes all of it in
float64 from the same parameters (autograd gives the gradients; torch.optim.AdamW the updates).

Tolerances (derived):
- C++ in double vs PyTorch in double: both are exact to ~1e-16 per operation; summation order
  differs, and errors grow with depth (~40 ops) and reduction length (<= 2^10), so agreement to
  ~1e-12 is expected. We require 1e-9 relative (per tensor, in the L2 norm).
- C++ in float vs PyTorch in double: float32 rounding (eps = 6e-8) per operation, accumulated over
  the same depth and reduction lengths with random-walk growth, gives ~1e-6 relative on loss and
  gradients. We require 1e-4 (the issue's bound), i.e. two orders of magnitude of headroom, while a
  wrong term in any op changes a gradient by O(100%).
- After five AdamW steps, parameters are compared by the size of the change they went through:
  ||p_cpp - p_torch|| / ||p_torch - p_0|| per tensor. Adam divides by sqrt(v), so a coordinate's
  relative update error is its relative gradient error, amplified on the few coordinates whose
  gradient is tiny compared with the tensor's (at most ~1e2 here, measured). In double: 1e-10
  (1e-12 x 1e2). In float: 1e-3 (1e-6 gradient error x 1e2 amplification x 10 headroom); measured
  values are reported by the test (-s) and in docs/results.md.
"""
import math
import os
import subprocess

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def parse_ini(text):
    if isinstance(text, bytes):  # fixed-length HDF5 strings arrive as bytes
        text = text.decode()
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        k, v = (s.strip() for s in line.split("=", 1))
        out[k] = v
    return out


class TorchModel:
    """Pre-LN Transformer with dense FFN or top-k MoE (linear or Gaussian router), written from the
    model description, not from the C++ code."""

    def __init__(self, cfg, tensors):
        self.kind = cfg["model"]
        self.C = int(cfg["d-model"])
        self.L = int(cfg["layers"])
        self.H = int(cfg["heads"])
        self.E = int(cfg["experts"])
        self.K = int(cfg["top-k"])
        self.tied = cfg["tie-embeddings"] == "true"
        self.p = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in tensors.items()}

    def expert(self, pre, x):
        h = F.linear(x, self.p[pre + "fc1.weight"], self.p[pre + "fc1.bias"])
        return F.linear(F.gelu(h), self.p[pre + "fc2.weight"], self.p[pre + "fc2.bias"])

    def loss(self, tokens, targets):
        p, C, H = self.p, self.C, self.H
        B, T = tokens.shape
        x = p["wte"][tokens] + p["wpe"][:T]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        for l in range(self.L):
            pre = f"layers.{l}."
            h = F.layer_norm(x, (C,), p[pre + "ln1.weight"], p[pre + "ln1.bias"], eps=1e-5)
            q, k, v = F.linear(h, p[pre + "attn.qkv.weight"], p[pre + "attn.qkv.bias"]).split(C, dim=-1)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            att = (q @ k.transpose(-1, -2)) / math.sqrt(C // H)
            att = torch.softmax(att.masked_fill(causal, float("-inf")), dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, C)
            x = x + F.linear(y, p[pre + "attn.proj.weight"], p[pre + "attn.proj.bias"])
            h = F.layer_norm(x, (C,), p[pre + "ln2.weight"], p[pre + "ln2.bias"], eps=1e-5)
            if self.kind == "dense":
                x = x + self.expert(pre + "mlp.", h)
                continue
            if self.kind == "moe":
                scores = F.linear(h, p[pre + "moe.router.weight"])
            else:
                normal = torch.distributions.Normal(p[pre + "moe.router.mu"], torch.exp(p[pre + "moe.router.log_sigma"]))
                scores = normal.log_prob(h.unsqueeze(-2)).sum(-1)  # (B,T,E)
            top, idx = torch.topk(scores, self.K, dim=-1)
            gates = torch.softmax(top, dim=-1)
            out = torch.zeros_like(h)
            for e in range(self.E):
                w = (gates * (idx == e)).sum(-1, keepdim=True)  # (B,T,1), zero where e not chosen
                out = out + w * self.expert(f"{pre}moe.experts.{e}.", h)
            x = x + out
        x = F.layer_norm(x, (C,), p["lnf.weight"], p["lnf.bias"], eps=1e-5)
        logits = F.linear(x, p["wte"] if self.tied else p["head.weight"])
        mask = targets >= 0
        return F.cross_entropy(logits[mask], targets[mask])


def lr_at(step, total, warmup, lr, min_ratio):
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def decays(name, value):
    return value.dim() == 2 and not name.endswith(("router.mu", "router.log_sigma"))


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def change_error(name, ours, theirs, start, C):
    """||ours - theirs|| / ||theirs - start||: the error relative to the change the optimizer made.
    A tensor torch never moved must be bit-identical in C++ (returns 0 then). Key biases add the
    same constant to every score of a softmax row: their true gradient is exactly zero, so both
    sides' Adam steps there are rounding noise scaled to +-lr; only the query and value biases of
    self-attention (attn.qkv.bias) and the value bias of cross-attention (cross_attn.kv.bias) are
    compared."""
    if name.endswith("attn.qkv.bias"):
        keep = np.r_[0:C, 2 * C:3 * C]
        ours, theirs, start = ours[keep], theirs[keep], start[keep]
    elif name.endswith("cross_attn.kv.bias"):
        ours, theirs, start = ours[C:], theirs[C:], start[C:]
    moved = np.linalg.norm(theirs - start)
    if moved == 0:
        assert np.array_equal(ours, start), f"{name}: torch left it unchanged, C++ did not"
        return 0.0
    return np.linalg.norm(ours - theirs) / moved


def check_steps(f, tm, opt, cfg, tol, names, p0):
    """Trains tm for cfg's steps on f's batches (clip, the schedule times each group's "scale",
    opt) and compares every step's loss and gradient norm and the final parameters with the C++
    dump; returns the worst parameter error relative to the change, and the step count."""
    steps = int(cfg["steps"])
    for s in range(steps):
        opt.zero_grad()
        loss = tm.loss(torch.tensor(f[f"batch/{s}/tokens"][()], dtype=torch.long),
                       torch.tensor(f[f"batch/{s}/targets"][()], dtype=torch.long))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(tm.p.values()), float(cfg["grad-clip"]))
        assert abs(f["grad_norms"][s] - norm.item()) <= tol["grad"] * norm.item()
        assert abs(f["losses"][s] - loss.item()) <= tol["grad"] * abs(loss.item()), f"loss at step {s}"
        for g in opt.param_groups:
            g["lr"] = g.get("scale", 1.0) * lr_at(s, steps, int(cfg["warmup"]), float(cfg["lr"]), float(cfg["lr-min-ratio"]))
        opt.step()
    worst = 0.0
    for n in names:
        err = change_error(n, f["params_final"][n][()], tm.p[n].detach().numpy(), p0[n], int(cfg["d-model"]))
        worst = max(worst, err)
        assert err <= tol["step"], f"{n}: parameters after {steps} steps differ by {err:.3g} of their change"
    return worst, steps


def dump(tmp_path, model, dtype, tied):
    exe = os.environ.get("HYPERRNN_REFDUMP")
    if not exe:
        pytest.skip("HYPERRNN_REFDUMP not set: run through ctest")
    out = tmp_path / f"{model}-{dtype}.h5"
    subprocess.run([exe, model, dtype, "true" if tied else "false", str(out)], check=True)
    return h5py.File(out, "r")


TOL = {"double": {"loss": 1e-12, "grad": 1e-9, "step": 1e-10}, "float": {"loss": 1e-5, "grad": 1e-4, "step": 1e-3}}


@pytest.mark.parametrize("dtype", ["double", "float"])
@pytest.mark.parametrize("model,tied", [("dense", True), ("dense", False), ("moe", True), ("gauss-moe", True),
                                        ("gauss-moe", False)])
def test_matches_torch(tmp_path, model, tied, dtype):
    f = dump(tmp_path, model, dtype, tied)
    cfg = parse_ini(f.attrs["config"])
    names = list(f["params0"].keys())
    p0 = {n: f["params0"][n][()] for n in names}
    tm = TorchModel(cfg, p0)
    tol = TOL[dtype]

    # loss and every gradient on the first batch
    tokens = torch.tensor(f["batch/0/tokens"][()], dtype=torch.long)
    targets = torch.tensor(f["batch/0/targets"][()], dtype=torch.long)
    loss = tm.loss(tokens, targets)
    loss.backward()
    assert abs(f["loss0"][0] - loss.item()) <= tol["loss"] * abs(loss.item())
    worst = max((rel(f["grads0"][n][()], tm.p[n].grad.numpy()), n) for n in names if tm.p[n].grad.abs().sum() > 0)
    assert worst[0] <= tol["grad"], f"gradient of {worst[1]}: relative error {worst[0]:.3g}"
    print(f"{model}/{dtype}: loss error {abs(f['loss0'][0] - loss.item()) / abs(loss.item()):.3g}, "
          f"worst gradient error {worst[0]:.3g} ({worst[1]})")
    for n in names:  # tensors torch sees no gradient for (unused experts) must be zero in C++ too
        if tm.p[n].grad.abs().sum() == 0:
            assert np.all(f["grads0"][n][()] == 0), n

    # five steps: clip, schedule, AdamW with decay on matrices only
    tm = TorchModel(cfg, p0)
    groups = [{"params": [tm.p[n] for n in names if decays(n, tm.p[n])], "weight_decay": float(cfg["weight-decay"])},
              {"params": [tm.p[n] for n in names if not decays(n, tm.p[n])], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=float(cfg["lr"]), betas=(float(cfg["adam-beta1"]), float(cfg["adam-beta2"])),
                            eps=float(cfg["adam-eps"]))
    worst, steps = check_steps(f, tm, opt, cfg, tol, names, p0)
    print(f"{model}/{dtype}: worst parameter error after {steps} steps {worst:.3g} of the change")
