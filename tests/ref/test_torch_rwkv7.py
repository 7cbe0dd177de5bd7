"""Independent PyTorch implementation of model rwkv7, checked against hyperrnn's C++ code.

The model is written as a naive per-token recurrence that follows the reference's own code
(BlinkDL/RWKV-LM, RWKV-v7/rwkv_v7_numpy.py's time_mixing / channel_mixing and the training
model's block, loss and optimizer groups in RWKV-v7/train_temp/src/model.py; docs/rwkv7.md), not
our C++: the state update is the numpy file's S = S * w^T - S kk (kk a)^T + v k^T per head, the
decay exp(-sigmoid(u) / sqrt(e)), GroupNorm with eps 64e-5, the bonus with the replaced key, the
L2Wrap loss as an autograd function (an extra gradient of factor x max logit at each row's
argmax), AdamW with att.w0 at twice the learning rate and decay on the 2-D weights only.
Autograd gives the gradients; torch.optim.AdamW the updates.

hyperrnn_refdump writes the MQAR batches, the loss and every gradient of the first batch and the
parameters after 5 training steps (clip, warm-up + cosine schedule, AdamW) from random weights the
test writes (the reference's initialisation has exact zeros, W_o among them, under which most
gradients vanish and a comparison proves little; test_rwkv7.cpp checks the initialisation itself).

Tolerances (derived as in test_torch_reference.py): double 1e-12 on the loss, 1e-9 on gradients
(per tensor, L2), 1e-10 of the change after 5 steps; float 1e-5 / 1e-4 / 1e-3. The recurrence adds
depth (T = 16 state updates) but no longer reductions than the Transformer oracle's; measured
errors are printed (-s) and reported in docs/rwkv7.md.
"""
import hashlib
import math
import os
import subprocess

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_torch_reference import TOL, check_steps, parse_ini, rel

torch.set_default_dtype(torch.float64)


class L2Wrap(torch.autograd.Function):
    """model.py's L2Wrap: the loss passes through; the logits get factor x max at their argmax."""

    @staticmethod
    def forward(ctx, loss, y, factor):
        ctx.save_for_backward(y)
        ctx.factor = factor
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        maxx, ids = torch.max(y, -1, keepdim=True)
        gy = torch.zeros_like(y)
        gy.scatter_(-1, ids, maxx * ctx.factor)
        return grad_output, gy, None


class TorchRwkv7:
    def __init__(self, cfg, tensors):
        self.C = int(cfg["d-model"])
        self.L = int(cfg["layers"])
        self.N = int(cfg["head-size"])
        self.H = self.C // self.N
        self.vres = cfg["value-residual"] == "true"
        self.gate = cfg["output-gate"] == "true"
        self.cmix = cfg["channel-mix"] == "true"
        self.l2wrap = float(cfg["l2wrap"])
        self.p = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in tensors.items()}

    def group_norm(self, y, w, b):  # (B, C): H groups of N, eps 64e-5 (model.py's ln_x)
        B = y.shape[0]
        y = y.view(B, self.H, self.N)
        m = y.mean(-1, keepdim=True)
        var = ((y - m) ** 2).mean(-1, keepdim=True)
        return ((y - m) / torch.sqrt(var + 64e-5)).view(B, self.C) * w + b

    def time_mixing(self, l, x, v_first, last_x, S):
        """One token for a batch of rows x (B, C); S (B, H, N, N) rows = value index."""
        P = lambda n: self.p[f"layers.{l}.att.{n}"]
        B, H, N = x.shape[0], self.H, self.N
        xx = last_x - x
        xr, xw, xk, xv, xa = (x + xx * P(f"x_{s}") for s in "rwkva")
        r = xr @ P("receptance.weight").T
        k = xk @ P("key.weight").T
        v = xv @ P("value.weight").T
        w = torch.exp(-torch.sigmoid(P("w0") + torch.tanh(xw @ P("w1")) @ P("w2")) / math.e ** 0.5)
        if l == 0:
            v_first = v
        elif self.vres:
            v = v + (v_first - v) * torch.sigmoid(P("v0") + (xv @ P("v1")) @ P("v2"))
        a = torch.sigmoid(P("a0") + (xa @ P("a1")) @ P("a2"))
        kk = (k * P("k_k")).view(B, H, N)
        kk = kk / torch.clamp(kk.norm(dim=-1, keepdim=True), min=1e-12)
        k = k * (1 + (a - 1) * P("k_a"))
        kh, vh, rh, ah, wh = (t.view(B, H, N) for t in (k, v, r, a, w))
        # S = S * w^T - S @ kk * (kk * a)^T + v * k^T   (column vectors, per head)
        S = S * wh.unsqueeze(-2) - (S @ kk.unsqueeze(-1)) * (kk * ah).unsqueeze(-2) + vh.unsqueeze(-1) * kh.unsqueeze(-2)
        y = (S @ rh.unsqueeze(-1)).squeeze(-1).reshape(B, self.C)
        y = self.group_norm(y, P("ln_x.weight"), P("ln_x.bias"))
        y = y + ((rh * kh * P("r_k")).sum(-1, keepdim=True) * vh).reshape(B, self.C)
        if self.gate:
            g = torch.sigmoid((x + xx * P("x_g")) @ P("g1")) @ P("g2")
            y = y * g
        return y @ P("output.weight").T, x, S, v_first

    def channel_mixing(self, l, x, last_x):
        P = lambda n: self.p[f"layers.{l}.ffn.{n}"]
        k = x + (last_x - x) * P("x_k")
        k = torch.relu(k @ P("key.weight").T) ** 2
        return k @ P("value.weight").T, x

    def logits(self, tokens):
        p, C = self.p, self.C
        B, T = tokens.shape
        last_a = [torch.zeros(B, C) for _ in range(self.L)]
        last_f = [torch.zeros(B, C) for _ in range(self.L)]
        S = [torch.zeros(B, self.H, self.N, self.N) for _ in range(self.L)]
        out = []
        for t in range(T):
            x = p["wte"][tokens[:, t]]
            x = F.layer_norm(x, (C,), p["ln0.weight"], p["ln0.bias"], eps=1e-5)
            v_first = None
            for l in range(self.L):
                pre = f"layers.{l}."
                xa = F.layer_norm(x, (C,), p[pre + "ln1.weight"], p[pre + "ln1.bias"], eps=1e-5)
                dx, last_a[l], S[l], v_first = self.time_mixing(l, xa, v_first, last_a[l], S[l])
                x = x + dx
                if self.cmix:
                    xb = F.layer_norm(x, (C,), p[pre + "ln2.weight"], p[pre + "ln2.bias"], eps=1e-5)
                    dx, last_f[l] = self.channel_mixing(l, xb, last_f[l])
                    x = x + dx
            x = F.layer_norm(x, (C,), p["lnf.weight"], p["lnf.bias"], eps=1e-5)
            out.append(x @ p["head.weight"].T)
        return torch.stack(out, 1)  # (B, T, V)

    def loss(self, tokens, targets):
        logits = self.logits(tokens)
        mask = targets >= 0
        y = logits[mask]
        loss = F.cross_entropy(y, targets[mask])
        return L2Wrap.apply(loss, y, self.l2wrap / y.shape[0]) if self.l2wrap > 0 else loss


def param_groups(tm, names, cfg):
    """model.py's groups: att.w0 at 2x lr without decay; 2-D weights (and the embedding) decay."""
    wd = float(cfg["weight-decay"])
    two_d = lambda n: tm.p[n].dim() == 2 and (n.endswith(".weight") or n == "wte")
    return [{"params": [tm.p[n] for n in names if n.endswith("att.w0")], "weight_decay": 0.0, "scale": 2.0},
            {"params": [tm.p[n] for n in names if two_d(n)], "weight_decay": wd, "scale": 1.0},
            {"params": [tm.p[n] for n in names if not two_d(n) and not n.endswith("att.w0")], "weight_decay": 0.0, "scale": 1.0}]


VARIANTS = {
    "all-on": "",
    "all-off": "value-residual = false\noutput-gate = false\nchannel-mix = false\nl2wrap = 0\n",
    "no-gate": "output-gate = false\nl2wrap = 0.05\n",
    "no-residual": "value-residual = false\nchannel-mix = false\n",
}


def dump(tmp_path, dtype, variant):
    exe = os.environ.get("HYPERRNN_REFDUMP")
    if not exe:
        pytest.skip("HYPERRNN_REFDUMP not set: run through ctest")
    extra = ("rwkv-decay-rank = 4\nrwkv-a-rank = 3\nrwkv-value-rank = 5\nrwkv-gate-rank = 6\nrwkv-chunk = 5\n"
             + VARIANTS[variant])
    shapes = tmp_path / "shapes.h5"
    subprocess.run([exe, "rwkv7", dtype, "false", str(shapes), extra], check=True)
    rng = np.random.default_rng(11)
    init = tmp_path / "init.h5"
    with h5py.File(shapes, "r") as s, h5py.File(init, "w") as f:
        for n in s["params0"]:
            shape = s["params0"][n].shape
            x = rng.uniform(-0.4, 0.4, shape)
            if n.endswith("ln_x.weight") or (n.endswith(".weight") and len(shape) == 1):
                x += 1.0
            x = np.ascontiguousarray(x, dtype="<f8")
            f[f"params0/{n}"] = x
            f[f"params0/{n}"].attrs["sha256"] = np.bytes_(hashlib.sha256(x.tobytes()).hexdigest())  # hyperrnn's reader checks it
    out = tmp_path / f"rwkv7-{dtype}.h5"
    subprocess.run([exe, "rwkv7", dtype, "false", str(out), extra, str(init)], check=True)
    return h5py.File(out, "r")


@pytest.mark.parametrize("dtype", ["double", "float"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rwkv7_matches_torch(tmp_path, variant, dtype):
    f = dump(tmp_path, dtype, variant)
    cfg = parse_ini(f.attrs["config"])
    names = list(f["params0"].keys())
    p0 = {n: f["params0"][n][()] for n in names}
    tol = TOL[dtype]
    tm = TorchRwkv7(cfg, p0)
    tokens = torch.tensor(f["batch/0/tokens"][()], dtype=torch.long)
    targets = torch.tensor(f["batch/0/targets"][()], dtype=torch.long)
    loss = tm.loss(tokens, targets)
    loss.backward()
    lerr = abs(f["loss0"][0] - loss.item()) / abs(loss.item())
    assert lerr <= tol["loss"]
    for n in names:
        assert tm.p[n].grad is not None and tm.p[n].grad.abs().sum() > 0, f"{n}: no gradient (a test that proves nothing)"
    worst = max((rel(f["grads0"][n][()], tm.p[n].grad.numpy()), n) for n in names)
    assert worst[0] <= tol["grad"], f"gradient of {worst[1]}: relative error {worst[0]:.3g}"
    print(f"rwkv7 {variant}/{dtype}: loss error {lerr:.3g}, worst gradient error {worst[0]:.3g} ({worst[1]})")

    tm = TorchRwkv7(cfg, p0)
    groups = param_groups(tm, names, cfg)
    assert sum(len(g["params"]) for g in groups) == len(names)
    opt = torch.optim.AdamW(groups, lr=float(cfg["lr"]), betas=(float(cfg["adam-beta1"]), float(cfg["adam-beta2"])),
                            eps=float(cfg["adam-eps"]))
    worst, steps = check_steps(f, tm, opt, cfg, tol, names, p0)
    print(f"rwkv7 {variant}/{dtype}: worst parameter error after {steps} steps {worst:.3g} of the change")
