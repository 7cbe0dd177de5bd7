"""RWKV-7's recurrence (src/nn/wkv7.*) against an independent PyTorch implementation that follows
the reference's own code, not our spec: the per-token update of RWKV-LM's rwkv_v7_numpy.py
(`S = S * w.mT - S @ kk * (kk*a).mT + v * k.mT; y = S @ r`), written with the kernel's general
arguments a (= -kk) and b (= kk * a) as in train_temp/cuda/rwkv7_clampw.cu (`sa = S a;
S = S diag(w) + sa b^T + v k^T`), and the decay w = exp(-sigmoid(u) / sqrt(e)) of both. PyTorch's
autograd gives every gradient, in float64.

Tolerances (derived): C++ double vs torch double: the same operations in another order, a few
ulps per operation over T = 19 tokens of N = 4 term sums and N^2 state entries of O(1): 1e-12
relative per tensor (L2). C++ float vs torch double: float32 rounding (6e-8) per operation,
through 19 steps whose state is a contraction (w < 1, |a b| <= 0.25), random-walk growth: ~1e-6;
we require 1e-5. A wrong term changes a tensor by O(10%) or more.
"""
import os
import subprocess

import h5py
import numpy as np
import pytest
import torch

REFDUMP = os.environ.get("HYPERRNN_REFDUMP")


def torch_recurrence(inp):
    t = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in inp.items() if k != "dy"}
    T, H, N = t["r"].shape
    S = t["state0"]
    ys = []
    for i in range(T):
        r, u, k, v, a, b = (t[n][i].reshape(H, N, 1) for n in ("r", "u", "k", "v", "a", "b"))
        w = torch.exp(-torch.sigmoid(u) / np.e ** 0.5)  # rwkv_v7_numpy.py's decay
        S = S * w.mT + (S @ a) * b.mT + v * k.mT        # sa b^T with sa = S a (a = -kk, b = kk a)
        ys.append((S @ r).reshape(H, N))
    y = torch.stack(ys)
    (y * torch.tensor(np.asarray(inp["dy"], np.float64))).sum().backward()
    return y.detach().numpy(), S.detach().numpy(), {k: v.grad.numpy() for k, v in t.items()}


def rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("dtype,tol", [("double", 1e-12), ("float", 1e-5)])
@pytest.mark.parametrize("chunk", [4, 16])
def test_wkv7_matches_the_reference_recurrence(tmp_path, dtype, tol, chunk):
    if not REFDUMP:
        pytest.skip("HYPERRNN_REFDUMP not set: run through ctest")
    out = tmp_path / "wkv7.h5"
    r = subprocess.run([REFDUMP, "wkv7", dtype, str(out), "19", "2", "4", str(chunk)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        inp = {k: f["in/" + k][()] for k in f["in"]}
        y, S, g = f["out/y"][()], f["out/state"][()], {k: f["grad/" + k][()] for k in f["grad"]}
    ty, tS, tg = torch_recurrence(inp)
    errs = {"y": rel(y, ty), "state": rel(S, tS)}
    errs.update({"d" + k: rel(g[k], tg[k]) for k in tg})
    print(dtype, chunk, {k: f"{v:.1e}" for k, v in errs.items()})
    assert all(v <= tol for v in errs.values()), errs
