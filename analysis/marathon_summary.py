#!/usr/bin/env python3
"""Summary of fmnist-marathon runs: each run's final per-task accuracy, their mean and the average
forgetting from RUN/marathon.csv (the last validation pass), the best mean along the way, and
optionally a plot of the mean task accuracy and the average forgetting after every task.

    /usr/bin/python3 analysis/marathon_summary.py RUN [RUN ...] [--plot marathon.png] [--markdown]

A run is a run directory (or its marathon.csv); its label is the directory name.
"""
import argparse
import os
import sys

from runfiles import read_rows


def load(run):
    f, rows = read_rows(run, "marathon.csv", "marathon_summary")
    tasks = sorted(int(k[len("acc_task"):]) for k in rows[0] if k.startswith("acc_task"))
    label = os.path.basename(os.path.dirname(os.path.abspath(f)))
    return label, tasks, rows


def summarise(label, tasks, rows):
    last = rows[-1]
    acc = [float(last[f"acc_task{t}"]) for t in tasks]
    return {"run": label, "step": int(last["step"]), "cycles": int(last["cycle"]) + 1, "acc": acc,
            "mean": float(last["avg_acc"]), "forgetting": float(last["avg_forgetting"]),
            "best_mean": max(float(r["avg_acc"]) for r in rows),
            "mean_forgetting": sum(float(r["avg_forgetting"]) for r in rows) / len(rows)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--plot", help="write a PNG of mean accuracy and forgetting per validation")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    a = ap.parse_args(argv)
    loaded = [load(r) for r in a.runs]
    summaries = [summarise(*x) for x in loaded]
    tasks = loaded[0][1]
    head = ["run", "steps", "cycles"] + [f"task{t}" for t in tasks] + ["mean", "avg forgetting", "mean forgetting (all passes)"]
    body = [[s["run"], str(s["step"]), str(s["cycles"])] + [f"{x:.3f}" for x in s["acc"]] +
            [f"{s['mean']:.3f}", f"{s['forgetting']:.3f}", f"{s['mean_forgetting']:.3f}"] for s in summaries]
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in body:
            print("| " + " | ".join(r) + " |")
    else:
        w = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
        for r in body:
            print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for label, _, rows in loaded:
            steps = [int(r["step"]) for r in rows]
            ax[0].plot(steps, [float(r["avg_acc"]) for r in rows], marker="o", label=label)
            ax[1].plot(steps, [float(r["avg_forgetting"]) for r in rows], marker="o", label=label)
        ax[0].set(xlabel="step", ylabel="mean accuracy over seen tasks")
        ax[1].set(xlabel="step", ylabel="average forgetting")
        ax[0].legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
