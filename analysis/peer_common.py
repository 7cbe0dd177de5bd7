"""What the PyTorch peers (analysis/bench_peer.py, bench_rwkv7_peer.py, bench_pilf_peer.py) share:
their command line, `hyperrnn bench`'s figures, the effective configuration of a run, and the
peak-memory measurement of a peer alone in a child process (docs/performance.md)."""
import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


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


def hyperrnn_bench(binary, opts, steps, threads):
    """One `hyperrnn bench` (3 repeats of `steps` steps): its training tokens/s, peak memory (MiB),
    recurrent inference tokens/s (rwkv7; else None) and the whole report."""
    out = subprocess.run([binary, "bench", "--bench-steps", str(steps), "--repeats", "3", "--threads", str(threads), *opts],
                         capture_output=True, text=True, check=True).stdout
    rec = re.search(r"inference_tokens_per_s: parallel \d+, recurrent (\d+)", out)
    return (float(re.search(r"tokens_per_s: (\d+)", out).group(1)), int(re.search(r"peak_rss_mib: (\d+)", out).group(1)),
            float(rec.group(1)) if rec else None, out)


def vm_hwm_mib():
    """This process's resident high-water mark (VmHWM: of its own address space; ru_maxrss would
    carry over a forked parent's, e.g. the driver's when this runs as its child)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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




def pair_ratios(ours, theirs):
    """The ratio of each alternating pair (ours[i] / theirs[i]) as 'median X (range A-B)': the two
    runs of a pair share the machine's state, so on a noisy VM their ratio varies less than the
    ratio of the two medians does between invocations."""
    r = sorted(o / t for o, t in zip(ours, theirs))
    mid = r[len(r) // 2] if len(r) % 2 else 0.5 * (r[len(r) // 2 - 1] + r[len(r) // 2])
    return f"median {mid:.2f} (range {r[0]:.2f}-{r[-1]:.2f})"
