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
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def hyperrnn_bench(binary, opts, steps, threads):
    out = subprocess.run([binary, "bench", "--bench-steps", str(steps), "--repeats", "3", "--threads", str(threads), *opts],
                         capture_output=True, text=True, check=True).stdout
    train = float(re.search(r"tokens_per_s: (\d+)", out).group(1))
    rec = float(re.search(r"inference_tokens_per_s: parallel \d+, recurrent (\d+)", out).group(1))
    return train, rec, out


def vm_hwm_mib():
    """This process's resident high-water mark (VmHWM: of its own address space; ru_maxrss would
    carry over a forked parent's, e.g. the driver's when this runs as its child)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peer_arguments(doc, steps):
    """The peers' common command line: --binary, --threads, --repeats, --steps, --torch-only, then
    the hyperrnn options after --."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(HERE, "..", "build", "bin", "hyperrnn"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--torch-only", action="store_true", help="run the PyTorch peer alone and print its peak memory")
    ap.add_argument("opts", nargs="*")
    return ap.parse_args()


def torch_only(run):
    """--torch-only: `run()` (the peer's tokens/s) in this process, with its memory: one line
    `torch_only tokens_per_s X peak_rss_mib Y import_rss_mib Z` (Z: resident right after import torch)."""
    import resource
    import torch  # noqa: F401
    base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2 ** 20  # resident now
    tps = run()
    print(f"torch_only tokens_per_s {tps:.0f} peak_rss_mib {vm_hwm_mib():.0f} import_rss_mib {base:.0f}")


def torch_only_memory(script, a):
    """Runs `script --torch-only` in a child process (its own address space): (peak MiB, MiB after
    import torch) as printed."""
    child = subprocess.run([sys.executable, script, "--binary", a.binary, "--threads", str(a.threads), "--steps",
                            str(a.steps), "--torch-only", "--", *a.opts], capture_output=True, text=True, check=True)
    f = child.stdout.split()
    return f[4], f[6]


def effective_run(binary, opts):
    """The configuration as hyperrnn resolves it (its config.ini, defaults included) and its
    initial parameters (the shapes of its table; speed does not depend on the values), from a
    one-step run in a temporary directory."""
    import tempfile
    import h5py
    import numpy as np
    with tempfile.TemporaryDirectory() as d:
        run = os.path.join(d, "run")
        subprocess.run([binary, "train", *opts, "--out", run, "--steps", "1", "--eval-every", "0"], capture_output=True, check=True)
        cfg = {}
        for line in open(os.path.join(run, "config.ini")).read().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = (s.strip() for s in line.split("=", 1))
                cfg[k] = v
        snap = sorted(p for p in os.listdir(os.path.join(run, "snapshots")) if p.startswith("step_"))[-1]
        with h5py.File(os.path.join(run, "snapshots", snap, "manifest.h5"), "r") as f:
            params = {n: np.asarray(f["params/" + n][()]) for n in f["params"]}
    return cfg, params


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
        tr, rc, text = hyperrnn_bench(a.binary, a.opts, a.steps, a.threads)
        rss.append(int(re.search(r"peak_rss_mib: (\d+)", text).group(1)))
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
