"""Text tables: the marathon summary (the last validation's per-task accuracies and forgetting, the
best mean, the mean forgetting over passes) and PILF window means (the PI assessment, PILR's
factors, meta-training figures, experts per token and the SMK coverage = share of routed tokens
whose expert SMK let learn). Each takes a run directory or the CSV file itself (so hand-made
files work), and formats as aligned text or Markdown.
"""
import math
import os

import numpy as np

from .runs import read_table

PILF_COLUMNS = ["loss", "epsilon", "tau", "surprise", "expert_surprise", "gating_surprise", "pi", "lr_mod_expert",
                "lr_mod_gating", "gating_loss", "routing_acc", "k_mean"]


def _csv(path, name):
    return path if path.endswith(".csv") else os.path.join(path, name)


def marathon(paths):
    """(header, rows) with one row per run."""
    loaded = []
    for p in paths:
        f = _csv(p, "marathon.csv")
        t = read_table(f)
        loaded.append((os.path.basename(os.path.dirname(os.path.abspath(f))), t))
    tasks = sorted(int(h[len("acc_task"):]) for h in loaded[0][1].header if h.startswith("acc_task"))
    head = ["run", "steps", "cycles"] + [f"task{k}" for k in tasks] + ["mean", "avg forgetting", "mean forgetting (all passes)"]
    body = []
    for label, t in loaded:
        body.append([label, str(int(t["step"][-1])), str(int(t["cycle"][-1]) + 1)] +
                    [f"{t[f'acc_task{k}'][-1]:.3f}" for k in tasks] +
                    [f"{t['avg_acc'][-1]:.3f}", f"{t['avg_forgetting'][-1]:.3f}", f"{np.mean(t['avg_forgetting']):.3f}"])
    return head, body


def smk_coverage(t):
    """(layers, rows): per MoE layer and row, routed tokens of the experts SMK kept / all routed."""
    out = []
    l = 0
    while f"smk_l{l}" in t:
        mask = np.asarray(t[f"smk_l{l}"], float).astype(np.int64)
        kept = np.zeros(len(t))
        total = np.zeros(len(t))
        e = 0
        while f"tokens_l{l}_e{e}" in t:
            tok = np.asarray(t[f"tokens_l{l}_e{e}"], float)
            total += tok
            kept += np.where((mask >> e) & 1, tok, 0.0)
            e += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(total > 0, kept / np.maximum(total, 1), np.nan))
        l += 1
    return np.array(out)


def _nanmean(x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


def pilf_windows(path, windows):
    t = read_table(_csv(path, "metrics.csv"))
    keep = np.asarray(t["skipped"]) == 0 if "skipped" in t else np.ones(len(t), bool)
    idx = np.nonzero(keep)[0]
    cols = [c for c in PILF_COLUMNS if c in t]
    cov = smk_coverage(t)
    head = ["steps"] + cols + [f"smk_coverage_l{l}" for l in range(len(cov))]
    size = max(1, len(idx) // windows)
    body = []
    for w in [idx[i:i + size] for i in range(0, len(idx), size)][:windows]:
        vals = [_nanmean(np.asarray(t[c])[w]) for c in cols] + [_nanmean(cov[l][w]) for l in range(len(cov))]
        body.append([f"{int(t['step'][w[0]])}-{int(t['step'][w[-1]])}"] + [f"{v:.4g}" for v in vals])
    return head, body


def format_table(head, body, style="text"):
    if style == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    if style == "tsv":
        return "\n".join("\t".join(r) for r in [head] + body)
    w = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in [head] + body)
