#!/usr/bin/env python3
"""The PILF dynamics of a run from RUN/metrics.csv: window means of the PI assessment (epsilon, tau,
surprise and its split, PI), PILR's factors, the meta-training figures, experts per token, and the
SMK coverage = share of routed tokens whose expert SMK let learn (from smk_l<l> and
tokens_l<l>_e<e>); optionally a plot of them against the step.

    /usr/bin/python3 analysis/pilf_dynamics.py RUN [--windows 5] [--plot pilf.png]
"""
import argparse
import math
import sys

from runfiles import read_rows

COLUMNS = ["loss", "epsilon", "tau", "surprise", "expert_surprise", "gating_surprise", "pi", "lr_mod_expert",
           "lr_mod_gating", "gating_loss", "routing_acc", "k_mean"]


def load(run):
    return read_rows(run, "metrics.csv", "pilf_dynamics")[1]


def smk_coverage(row):
    """Per MoE layer: routed tokens of the experts whose update SMK kept / all routed tokens."""
    out = []
    l = 0
    while f"smk_l{l}" in row:
        mask = int(row[f"smk_l{l}"])
        e, kept, total = 0, 0, 0
        while f"tokens_l{l}_e{e}" in row:
            t = int(row[f"tokens_l{l}_e{e}"])
            total += t
            kept += t if mask >> e & 1 else 0
            e += 1
        out.append(kept / total if total else float("nan"))
        l += 1
    return out


def nanmean(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def windows(rows, n):
    size = max(1, len(rows) // n)
    return [rows[i:i + size] for i in range(0, len(rows), size)][:n]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--plot")
    a = ap.parse_args(argv)
    rows = [r for r in load(a.run) if r.get("skipped", "0") == "0"]
    cols = [c for c in COLUMNS if c in rows[0]]
    layers = len(smk_coverage(rows[0]))
    head = ["steps"] + cols + [f"smk_coverage_l{l}" for l in range(layers)]
    print("\t".join(head))
    for w in windows(rows, a.windows):
        cov = [smk_coverage(r) for r in w]
        vals = [nanmean([float(r[c]) for r in w]) for c in cols] + [nanmean([c[l] for c in cov]) for l in range(layers)]
        print("\t".join([f"{w[0]['step']}-{w[-1]['step']}"] + [f"{v:.4g}" for v in vals]))
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        steps = [int(r["step"]) for r in rows]
        show = [c for c in ("loss", "surprise", "pi", "lr_mod_expert", "gating_loss", "routing_acc") if c in cols]
        fig, axes = plt.subplots(len(show) + (1 if layers else 0), 1, figsize=(8, 2 * (len(show) + 1)), sharex=True)
        for ax, c in zip(axes, show):
            ax.plot(steps, [float(r[c]) for r in rows], lw=0.5)
            ax.set_ylabel(c)
        if layers:
            for l in range(layers):
                axes[-1].plot(steps, [smk_coverage(r)[l] for r in rows], lw=0.5, label=f"layer {l}")
            axes[-1].set_ylabel("SMK coverage")
            axes[-1].legend()
        axes[-1].set_xlabel("step")
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
