#!/usr/bin/env python3
"""How hyperrnn's step scales with d-model, experts and sequence length (docs/performance.md).

Around the MQAR benchmark configurations (jobs/configs/bench-mqar-<model>.ini), one axis at a time:
d-model (the heads keep 16 dimensions each; rwkv7's head size stays), experts (the MoE models; top-k
stays), and sequence length (kv-pairs stays; the batch shrinks so that batch x seq-len stays 2048
tokens, and the vocabulary is 512 along this axis so that MQAR fits every length). Each point is `hyperrnn bench` (median of --repeats repeats of --steps steps); written:
OUT.csv (model, axis, value, tokens/s, GFLOP/s, share of the SGEMM peak, FLOPs per token, peak RSS,
the phase shares) and OUT.png (tokens/s and model GFLOP/s against each axis; the share of the peak is in the CSV, each
point divided by the peak its own invocation measured, which is noisier than the GFLOP/s). Usage:

    /usr/bin/python3 analysis/bench_sweep.py [--threads 1] [--models dense,gauss-moe,rwkv7] [--out sweep]
"""
import argparse
import csv
import os
import re
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
AXES = {
    "d-model": [32, 64, 128, 256],
    "experts": [2, 4, 8, 16],
    "seq-len": [32, 64, 128, 256],
}


def bench(binary, model, extra, threads, steps, repeats):
    cfg = os.path.join(HERE, "..", "jobs", "configs", f"bench-mqar-{model}.ini")
    out = subprocess.run([binary, "bench", "--config", cfg, "--threads", str(threads), "--bench-steps", str(steps),
                          "--repeats", str(repeats), *extra], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench_sweep.py: {model} {' '.join(extra)}: {out.stderr.strip()}")
    t = out.stdout
    row = {"tokens_per_s": float(re.search(r"tokens_per_s: (\d+)", t).group(1)),
           "gflops": float(re.search(r"model_gflops: ([0-9.]+)", t).group(1)),
           "share_of_peak": float(re.search(r"model_gflops: [0-9.]+ \(([0-9.]+)%", t).group(1)) / 100,
           "flops_per_token": int(re.search(r"model_flops_per_token: (\d+)", t).group(1)),
           "peak_rss_mib": int(re.search(r"peak_rss_mib: (\d+)", t).group(1))}
    for name, share in re.findall(r"(\w+) [0-9.]+ \((\d+)%", re.search(r"phase_s_per_step: .*", t).group(0)):
        row["phase_" + name] = int(share) / 100
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(HERE, "..", "build", "bin", "hyperrnn"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="dense,gauss-moe,rwkv7")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="sweep")
    a = ap.parse_args()
    rows = []
    for model in a.models.split(","):
        for axis, values in AXES.items():
            if axis == "experts" and model in ("dense", "rwkv7"):
                continue
            for v in values:
                extra = ["--" + axis, str(v)]
                if axis == "d-model" and model != "rwkv7":
                    extra += ["--heads", str(max(1, v // 16))]
                if axis == "seq-len":  # the same tokens per step; one vocabulary above every length
                    extra += ["--batch", str(max(1, 2048 // v)), "--vocab", str(2 * max(AXES["seq-len"]))]
                r = bench(a.binary, model, extra, a.threads, a.steps, a.repeats)
                rows.append({"model": model, "axis": axis, "value": v, **r})
                print(f"{model:10s} {axis:8s} {v:4d}: {r['tokens_per_s']:8.0f} tokens/s, {r['gflops']:6.2f} GFLOP/s "
                      f"({100 * r['share_of_peak']:.1f}% of peak)", flush=True)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("model", "axis", "value"), k))
    with open(a.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, len(AXES), figsize=(4 * len(AXES), 6.5))
    for j, axis in enumerate(AXES):
        for model in a.models.split(","):
            pts = [r for r in rows if r["model"] == model and r["axis"] == axis]
            if not pts:
                continue
            xs = [r["value"] for r in pts]
            ax[0][j].plot(xs, [r["tokens_per_s"] for r in pts], "o-", label=model)
            ax[1][j].plot(xs, [r["gflops"] for r in pts], "o-", label=model)
        for i in range(2):
            ax[i][j].set_xscale("log", base=2)
            ax[i][j].set_xlabel(axis)
            ax[i][j].grid(alpha=0.3)
        ax[0][j].set_ylabel("tokens/s")
        ax[1][j].set_ylabel("model GFLOP/s")
        ax[0][j].legend()
    fig.suptitle(f"hyperrnn bench around the MQAR benchmark configurations, 1 rank x {a.threads} thread(s)")
    fig.tight_layout()
    fig.savefig(a.out + ".png", dpi=100)
    print(f"wrote {a.out}.csv and {a.out}.png")


if __name__ == "__main__":
    main()
