#!/usr/bin/env python3
"""Threads against ranks on one node: `hyperrnn bench` as 1 rank x 1 thread, 1 rank x T threads and
P ranks x 1 thread (same --shards, so the same run), and optionally a peer binary (e.g. an older
build with OpenBLAS's own threading), run in alternation REPEATS times; prints the median tokens/s
of each variant, its ratio to 1 x 1, and the 1 x T run's per-thread busy/idle split. Usage:

    /usr/bin/python3 analysis/bench_threads.py [--threads 2] [--ranks 2] [--repeats 3] [--steps 20] \
        [--peer BINARY] -- [--config jobs/configs/mqar-pilf.ini] [hyperrnn options]

The binary is $HYPERRNN_BIN or build/bin/hyperrnn. The peer runs with the environment as it is
(OPENBLAS_NUM_THREADS unset: OpenBLAS threads by itself), with the same options minus --threads.
"""
import argparse
import os
import re
import statistics
import subprocess


def bench(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return float(re.search(r"tokens_per_s: (\d+)", out).group(1)), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--peer", default=None, help="another hyperrnn binary to run as it is (no --threads)")
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    opts = [o for o in a.opts if o != "--"]
    binary = os.environ.get("HYPERRNN_BIN", "build/bin/hyperrnn")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.pop("OPENBLAS_NUM_THREADS", None)
    common = ["bench", "--bench-steps", str(a.steps), "--repeats", "5", *opts]
    variants = {
        "1 x 1": [binary, *common, "--threads", "1"],
        f"1 x {a.threads}": [binary, *common, "--threads", str(a.threads)],
        f"{a.ranks} x 1": ["mpiexec", "-n", str(a.ranks), binary, *common, "--threads", "1"],
    }
    if a.peer:
        variants["peer"] = [a.peer, *common]
    tok = {k: [] for k in variants}
    texts = {}
    for _ in range(a.repeats):
        for k, cmd in variants.items():
            t, text = bench(cmd, env)
            tok[k].append(t)
            texts[k] = text
    base = statistics.median(tok["1 x 1"])
    print(re.search(r"^model: .*$", texts["1 x 1"], re.M).group(0))
    print(f"{a.repeats} alternating repeats, each the median of 5 x {a.steps} steps")
    print("| variant | tokens/s (median) | runs | vs 1 x 1 | model GFLOP/s (last run) |")
    print("|---|---|---|---|---|")
    for k in variants:
        g = re.search(r"model_gflops: ([0-9.]+)", texts[k]).group(1)
        m = statistics.median(tok[k])
        print(f"| {k} | {m:.0f} | {' '.join(f'{t:.0f}' for t in tok[k])} | {m / base:.2f} | {g} |")
    split = texts[f"1 x {a.threads}"]
    for line in split.splitlines():
        if line.startswith(("thread_split", "thread ")):
            print(line)


if __name__ == "__main__":
    main()
