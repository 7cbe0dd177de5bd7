#!/usr/bin/env python3
"""Weak scaling of the expert-parallel step: `hyperrnn bench` on 1 rank and on P ranks with the same
per-rank batch (global batch and shard count grow with P, so every rank runs one shard of the same
size), with the reproducible (exact) and the plain MPI_Allreduce reduction. Variants are run in
alternation, REPEATS times each; the medians give the efficiency t(1) / t(P) and the shares of the
step spent in the dispatch exchange and the reductions. Usage:

    /usr/bin/python3 analysis/bench_weak_scaling.py [--ranks 2] [--repeats 3] [--steps 20] \
        [--per-rank-batch 32] -- --config jobs/configs/mqar-pilf.ini [hyperrnn options]

Each rank runs one thread (--threads 1, one core per rank); the binary is $HYPERRNN_BIN or build/bin/hyperrnn.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys


def bench(binary, ranks, reduction, opts, per_rank_batch, steps):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = ["mpiexec", "--oversubscribe", "--bind-to", "core", "-n", str(ranks), binary, "bench", "--threads", "1", "--bench-steps",
           str(steps), "--repeats", "5", "--batch", str(per_rank_batch * ranks), "--shards", str(ranks),
           "--reduction", reduction, *opts]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    step = float(re.search(r"step_time_s: median ([0-9.]+)", out).group(1))
    split = re.search(r"split_s: compute ([0-9.]+), dispatch ([0-9.]+), reduce ([0-9.]+), optimizer ([0-9.]+)", out)
    xfer = float(re.search(r"xfer_bytes_per_step: ([0-9.]+)", out).group(1))
    return {"step": step, "compute": float(split.group(1)), "dispatch": float(split.group(2)),
            "reduce": float(split.group(3)), "optimizer": float(split.group(4)), "xfer": xfer}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--per-rank-batch", type=int, default=32)
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    opts = [o for o in a.opts if o != "--"]
    binary = os.environ.get("HYPERRNN_BIN", "build/bin/hyperrnn")
    variants = [(1, "exact"), (a.ranks, "exact"), (a.ranks, "plain")]
    runs = {v: [] for v in variants}
    for _ in range(a.repeats):
        for v in variants:
            runs[v].append(bench(binary, v[0], v[1], opts, a.per_rank_batch, a.steps))
    med = {v: {k: statistics.median(r[k] for r in runs[v]) for k in runs[v][0]} for v in variants}
    t1 = med[(1, "exact")]["step"]
    print(f"weak scaling, {a.per_rank_batch} samples per rank, medians of {a.repeats} runs (each the median of 5 repeats)")
    print("| ranks | reduction | step ms | efficiency t1/tP | compute | dispatch | reduce | optimizer | bytes moved/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        m = med[v]
        share = lambda k: f"{100 * m[k] / m['step']:.1f}%"
        print(f"| {v[0]} | {v[1]} | {1e3 * m['step']:.2f} | {t1 / m['step']:.3f} | {share('compute')} | "
              f"{share('dispatch')} | {share('reduce')} | {share('optimizer')} | {m['xfer']:.0f} |")
    e, p = med[(a.ranks, "exact")], med[(a.ranks, "plain")]
    print(f"determinism costs {1e3 * (e['reduce'] - p['reduce']):.3f} ms of reduction per step "
          f"({100 * (e['step'] / p['step'] - 1):.1f}% of the plain step)")
    print("all runs (step ms):", {f"{v[0]}-{v[1]}": [round(1e3 * r['step'], 2) for r in runs[v]] for v in variants})


if __name__ == "__main__":
    sys.exit(main())
