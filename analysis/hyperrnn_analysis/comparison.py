"""The HyperRNN-versus-RNN comparison study (issue 18): the study file, the plan of its runs
(`plan`, used by jobs/submit-study.sh before it submits anything) and the analysis of a finished
study directory (`analyse`: study.csv, best.csv, marathon.csv, the PNGs and index.html).

A comparison study file (INI, `key = value`; jobs/configs/study-compare*.ini):
  kind = compare
  models = dense gauss-moe pilf-reference rwkv7     MQAR model variants: each NAME is the
                              configuration compare-mqar-NAME.ini next to the study file
  cells = 64:4 128:8          MQAR cells seq-len:kv-pairs (4 kv-pairs <= seq-len < vocab)
  d-models = 64 128           model widths
  lrs = 1e-3 3e-3             the learning-rate sweep (the best per cell is reported)
  seeds = 1                   seeds of every MQAR run
  contested-cells = 256:32    cells where the verdict hangs on the seed: these run every seed of
  contested-seeds = 1 2       contested-seeds instead (default: none)
  steps = 2000                MQAR training steps per run, the same in every cell; or
  tokens = 3000000            training tokens per run instead: each cell runs
                              ceil(tokens / (batch x seq-len)) steps, so that every run of every
                              cell sees the same number of tokens (not both)
  eval-samples = 1000         held-out samples of the final evaluation
  options = ...               more `hyperrnn train` options for every MQAR run
  marathon-models = dense rwkv7   fmnist-marathon variants: compare-marathon-NAME.ini (none: no
  marathon-seeds = 1 2 3          marathon part)
  marathon-options = ...      more options for every marathon run
  name = ...                  (default: the study file's name)
Every run is one rank and one thread; its command line is `hyperrnn train --config CONFIG
OPTIONS` as the plan prints it, so one cell is rerun with one command and gives the same bits.
Leaves out: submitting (jobs/submit-study.sh) and the scaling studies (study.py).
"""
import csv
import json
import math
import os
import shlex

import numpy as np

from . import plots
from .errors import AnalysisError
from .runs import parse_ini, read_table
from .study import _cell, read_study

KEYS = {"kind", "models", "cells", "d-models", "lrs", "seeds", "contested-cells", "contested-seeds", "steps", "tokens",
        "eval-samples", "options", "marathon-models", "marathon-seeds", "marathon-options", "name"}
MODELS = ("dense", "moe", "gauss-moe", "pilf", "rwkv7")
# Zoology's recall-versus-state-size plot, RWKV-7 (read from the figure: ../shared/reference/mqar.md)
ZOOLOGY_RWKV7 = [(1.7e4, 0.82), (1.3e5, 0.91), (1.0e6, 0.98)]
# two-sided 95% Student t quantiles by degrees of freedom (1..30; the normal's beyond)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def _words(st, key, default=""):
    return st.get(key, default).replace(",", " ").split()


def _ints(study, key, words):
    try:
        vals = [int(x) for x in words]
    except ValueError:
        raise AnalysisError(f"{study}: '{key} = {' '.join(words)}': expected whole numbers")
    if any(v < 1 for v in vals):
        raise AnalysisError(f"{study}: '{key} = {' '.join(words)}': every value must be at least 1")
    return vals


def _cells(study, key, words, vocab_of):
    cells = []
    for w in words:
        try:
            L, D = (int(x) for x in w.split(":"))
        except ValueError:
            raise AnalysisError(f"{study}: '{key}': '{w}' is not seq-len:kv-pairs (e.g. 64:4)")
        if D < 1 or L < 1:
            raise AnalysisError(f"{study}: '{key}': cell {w}: seq-len and kv-pairs must be at least 1")
        if 4 * D > L:
            raise AnalysisError(f"{study}: '{key}': cell {w}: {D} kv-pairs do not fit seq-len {L} (MQAR needs 4 x kv-pairs <= seq-len)")
        for name, V in vocab_of.items():
            if V <= L:
                raise AnalysisError(f"{study}: '{key}': cell {w}: seq-len {L} needs a vocabulary above it ({name} has vocab {V})")
        cells.append((L, D))
    return cells


def _config(study_path, prefix, name):
    path = os.path.join(os.path.dirname(os.path.abspath(study_path)), f"{prefix}-{name}.ini")
    if not os.path.isfile(path):
        known = sorted(f[len(prefix) + 1:-4] for f in os.listdir(os.path.dirname(path))
                       if f.startswith(prefix + "-") and f.endswith(".ini"))
        raise AnalysisError(f"{study_path}: unknown model '{name}' (no {os.path.basename(path)}; known: {', '.join(known) or 'none'})")
    with open(path) as f:
        cfg = parse_ini(f.read())
    model = cfg.get("model", "gauss-moe")
    if model not in MODELS:
        raise AnalysisError(f"{path}: unknown model '{model}' (hyperrnn has {', '.join(MODELS)})")
    return path, cfg


def _option(opts, flag, default):
    """The value of `flag` in the option list (the last one wins, as on the command line), else default."""
    v = default
    for i, o in enumerate(opts):
        if o == flag and i + 1 < len(opts):
            v = opts[i + 1]
        elif o.startswith(flag + "="):
            v = o.split("=", 1)[1]
    return v


def _lr_text(lr):
    return f"{lr:g}"


def plan(study_path, out_dir):
    """Checks the study and returns its plan (a dict, also written as OUT/study.json by the helper)."""
    st = read_study(study_path, KEYS)
    models = _words(st, "models")
    mmodels = _words(st, "marathon-models")
    if not models and not mmodels:
        raise AnalysisError(f"{study_path}: 'models' is empty: name the MQAR model variants, e.g. models = gauss-moe rwkv7")
    configs = {m: _config(study_path, "compare-mqar", m) for m in models}
    mconfigs = {m: _config(study_path, "compare-marathon", m) for m in mmodels}
    runs = []
    if models:
        vocab = {m: int(c.get("vocab", "256")) for m, (_, c) in configs.items()}
        cells = _cells(study_path, "cells", _words(st, "cells"), vocab)
        if not cells:
            raise AnalysisError(f"{study_path}: 'cells' is empty: give seq-len:kv-pairs cells, e.g. cells = 64:4 128:8")
        contested = set(_cells(study_path, "contested-cells", _words(st, "contested-cells"), vocab))
        dms = _ints(study_path, "d-models", _words(st, "d-models"))
        if not dms:
            raise AnalysisError(f"{study_path}: 'd-models' is empty: give the model widths, e.g. d-models = 64 128")
        words = _words(st, "lrs")
        if not words:
            raise AnalysisError(f"{study_path}: the learning-rate sweep is empty: give 'lrs', e.g. lrs = 1e-3 3e-3")
        try:
            lrs = [float(w) for w in words]
        except ValueError:
            raise AnalysisError(f"{study_path}: 'lrs = {st['lrs']}': expected numbers")
        if any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
            raise AnalysisError(f"{study_path}: 'lrs = {st['lrs']}': every learning rate must be positive")
        seeds = _ints(study_path, "seeds", _words(st, "seeds", "1")) or [1]
        cseeds = _ints(study_path, "contested-seeds", _words(st, "contested-seeds")) or seeds
        if "steps" in st and "tokens" in st:
            raise AnalysisError(f"{study_path}: give 'steps' or 'tokens', not both")
        steps = _ints(study_path, "steps", _words(st, "steps", "2000"))[0]
        tokens = _ints(study_path, "tokens", _words(st, "tokens"))[0] if "tokens" in st else None
        evs = _ints(study_path, "eval-samples", _words(st, "eval-samples", "1000"))[0]
        opts = shlex.split(st.get("options", ""))
        for m in models:
            cfg_path, cfg = configs[m]
            batch = _ints(study_path, f"{m}'s batch", [_option(opts, "--batch", cfg.get("batch", "64"))])[0]
            for d in dms:
                heads = int(cfg.get("heads", "4"))
                hs = int(cfg.get("head-size", "64"))
                if cfg.get("model") == "rwkv7" and d % hs:
                    raise AnalysisError(f"{study_path}: d-model {d} is not a multiple of {m}'s head-size {hs}")
                if cfg.get("model") != "rwkv7" and d % heads:
                    raise AnalysisError(f"{study_path}: d-model {d} is not a multiple of {m}'s {heads} heads")
                for (L, D) in cells:
                    if tokens is not None:
                        steps = -(-tokens // (batch * L))
                    for lr in lrs:
                        for s in (cseeds if (L, D) in contested else seeds):
                            name = f"mqar/{m}-L{L}-D{D}-d{d}-lr{_lr_text(lr)}-s{s}"
                            args = ["--seq-len", str(L), "--kv-pairs", str(D), "--d-model", str(d), "--lr", _lr_text(lr),
                                    "--seed", str(s), "--steps", str(steps), "--eval-every", str(steps),
                                    "--eval-samples", str(evs), "--snapshot-every", "0", "--threads", "1", *opts]
                            runs.append({"name": name, "part": "mqar", "model": m, "hyperrnn_model": cfg.get("model"),
                                         "seq_len": L, "kv_pairs": D, "d_model": d, "lr": lr, "seed": s,
                                         "steps": steps, "config": cfg_path, "args": args})
    if mmodels:
        mseeds = _ints(study_path, "marathon-seeds", _words(st, "marathon-seeds", "1 2 3")) or [1, 2, 3]
        mopts = shlex.split(st.get("marathon-options", ""))
        for m in mmodels:
            cfg_path, cfg = mconfigs[m]
            steps = _ints(study_path, "marathon-options --steps", [_option(mopts, "--steps", cfg.get("steps", "3000"))])[0]
            for s in mseeds:
                args = ["--seed", str(s), "--snapshot-every", "0", "--threads", "1", *mopts]
                runs.append({"name": f"marathon/{m}-s{s}", "part": "marathon", "model": m,
                             "hyperrnn_model": cfg.get("model"), "seed": s, "steps": steps, "config": cfg_path,
                             "args": args})
    name = st.get("name", os.path.splitext(os.path.basename(study_path))[0])
    out = os.path.abspath(out_dir)
    for r in runs:
        r["args"] = r["args"] + ["--out", os.path.join(out, "runs", r["name"])]
    return {"name": name, "kind": "compare", "runs": runs, "out": out, "study_file": os.path.abspath(study_path)}


def write_commands(pl, out):
    """OUT/commands.sh: every run's command, one line each: any one line reruns that run (one rank,
    one thread) and gives the same bits."""
    lines = ["#!/usr/bin/env bash", f"# {pl['name']}: every run of the comparison study, one command per line "
             "(HYPERRNN_BIN: the binary, default hyperrnn on PATH); written by jobs/submit-study.sh"]
    lines += [f"\"${{HYPERRNN_BIN:-hyperrnn}}\" train --config {shlex.quote(r['config'])} {shlex.join(r['args'])}"
              for r in pl["runs"]]
    with open(os.path.join(out, "commands.sh"), "w") as f:
        f.write("\n".join(lines) + "\n")


def plan_lines(pl):
    """The helper's plan: NAME P T CONFIG OPTIONS... per run (P = T = 1)."""
    return [f"{r['name']} 1 1 {shlex.quote(r['config'])} {shlex.join(r['args'])}" for r in pl["runs"]]


# ---------------------------------------------------------------------------------------------
# Analysis

def _run_dir(pl, r):
    return os.path.join(pl["out"], "runs", r["name"])


def _failed(row, why):
    row["status"], row["why"] = "failed", why
    return row


def measure(pl, r):
    """One run's row (its final held-out accuracy, cost and memory), or its failure."""
    d = _run_dir(pl, r)
    row = {k: r.get(k, "") for k in ("part", "model", "hyperrnn_model", "seq_len", "kv_pairs", "d_model", "lr", "seed")}
    row.update(status="ok", why="", run=os.path.relpath(d, pl["out"]))
    try:
        m = read_table(os.path.join(d, "metrics.csv"))
        cost = read_table(os.path.join(d, "model.csv"))
    except AnalysisError as e:
        return _failed(row, str(e))
    done = int(m["step"][-1]) if len(m) else 0
    if done < r["steps"]:
        return _failed(row, f"{done} of {r['steps']} steps")
    row["steps"] = done
    w = len(m) // 10  # the first tenth (start-up, warm-up) left out of the median
    tps = np.asarray(m["tokens_per_s"], float)[w:]
    row["tokens_per_s"] = float(np.median(tps[np.isfinite(tps)])) if np.isfinite(tps).any() else math.nan
    for k in ("parameters", "model_flops_per_token", "memory_floats_per_sequence"):
        row[k] = float(cost[k][-1])
    row["memory"] = cost["memory"][-1]
    if r["part"] == "mqar":
        try:
            e = read_table(os.path.join(d, "eval.csv"))
        except AnalysisError as ex:
            return _failed(row, str(ex))
        held = [i for i in range(len(e)) if e["split"][i] == "heldout"]
        if not held or int(e["step"][held[-1]]) != done:
            return _failed(row, "no held-out evaluation at the last step")
        row["accuracy"] = float(e["acc"][held[-1]])
        row["loss"] = float(e["loss"][held[-1]])
        if not math.isfinite(row["accuracy"]):
            return _failed(row, "the final evaluation is not finite")
    else:
        try:
            t = read_table(os.path.join(d, "marathon.csv"))
        except AnalysisError as ex:
            return _failed(row, str(ex))
        tasks = sorted(int(h[len("acc_task"):]) for h in t.header if h.startswith("acc_task"))
        row["accuracy"] = float(t["avg_acc"][-1])
        row["avg_forgetting"] = float(t["avg_forgetting"][-1])
        for k in tasks:
            acc = np.asarray(t[f"acc_task{k}"], float)
            seen = acc[np.isfinite(acc)]
            row[f"acc_task{k}"] = float(acc[-1])
            # forgetting of task k: its best validation accuracy before the last minus the last
            row[f"forgetting_task{k}"] = float(max(0.0, np.max(seen[:-1]) - seen[-1])) if len(seen) > 1 else 0.0
        row["tasks"] = len(tasks)
    return row


def ci95(vals):
    """(mean, half-width of the two-sided 95% t interval; nan for fewer than two values)."""
    v = np.asarray([x for x in vals if isinstance(x, float) and math.isfinite(x)], float)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan
    t = T975[len(v) - 2] if len(v) - 1 <= len(T975) else 1.960
    return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(len(v)))


def best_per_cell(rows):
    """Per (model, seq-len, kv-pairs, d-model): the learning rate whose mean accuracy over its seeds is
    highest, with that mean, its 95% interval and the seeds' range; a cell none of whose runs
    finished is kept, marked failed."""
    cells = {}
    for r in rows:
        if r["part"] == "mqar":
            cells.setdefault((r["model"], r["seq_len"], r["kv_pairs"], r["d_model"]), []).append(r)
    out = []
    for (m, L, D, d), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][3], kv[0][1], kv[0][2])):
        by_lr = {}
        for r in rs:
            by_lr.setdefault(r["lr"], []).append(r)
        best = None
        for lr, g in sorted(by_lr.items()):
            ok = [x["accuracy"] for x in g if x["status"] == "ok"]
            if ok and (best is None or np.mean(ok) > best[1]):
                best = (lr, float(np.mean(ok)), g)
        row = {"model": m, "seq_len": L, "kv_pairs": D, "d_model": d, "runs": len(rs),
               "failed_runs": sum(1 for x in rs if x["status"] != "ok")}
        if best is None:
            row.update(status="failed", why="; ".join(sorted({x["why"] for x in rs})))
        else:
            lr, _, g = best
            ok = [x for x in g if x["status"] == "ok"]
            mean, half = ci95([x["accuracy"] for x in ok])
            row.update(status="ok", why="", best_lr=lr, accuracy=mean, ci95=half, seeds=len(ok),
                       acc_min=min(x["accuracy"] for x in ok), acc_max=max(x["accuracy"] for x in ok),
                       tokens_per_s=float(np.median([x["tokens_per_s"] for x in ok])),
                       model_flops_per_token=ok[0]["model_flops_per_token"],
                       memory_floats_per_sequence=ok[0]["memory_floats_per_sequence"], memory=ok[0]["memory"],
                       parameters=ok[0]["parameters"])
        out.append(row)
    return out


def marathon_summary(rows):
    """Per marathon model: mean and 95% interval over seeds of final mean accuracy, average
    forgetting and each task's forgetting."""
    by = {}
    for r in rows:
        if r["part"] == "marathon":
            by.setdefault(r["model"], []).append(r)
    out = []
    for m, rs in sorted(by.items()):
        ok = [r for r in rs if r["status"] == "ok"]
        row = {"model": m, "seeds": len(ok), "failed_runs": len(rs) - len(ok), "status": "ok" if ok else "failed"}
        if ok:
            row["parameters"] = ok[0]["parameters"]
            for k in ("accuracy", "avg_forgetting"):
                row[k], row[k + "_ci95"] = ci95([r[k] for r in ok])
            tasks = min(r["tasks"] for r in ok)
            row["tasks"] = tasks
            for k in range(tasks):
                row[f"forgetting_task{k}"], row[f"forgetting_task{k}_ci95"] = ci95([r[f"forgetting_task{k}"] for r in ok])
        out.append(row)
    return out


def _write_csv(path, rows, head=None):
    head = head or list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for r in rows:
            w.writerow([_cell(r.get(h, "")) for h in head])
    return head


RUN_HEAD = ["part", "model", "hyperrnn_model", "seq_len", "kv_pairs", "d_model", "lr", "seed", "status", "accuracy", "loss",
            "steps", "tokens_per_s", "model_flops_per_token", "memory_floats_per_sequence", "memory", "parameters",
            "avg_forgetting", "run", "why"]


def analyse(out, keep_figures=False):
    """Writes OUT/study.csv (every run), OUT/best.csv (per cell), OUT/marathon.csv (per model), the
    comparison-*.png and OUT/index.html; returns (rows, best, marathon[, figures by name])."""
    path = os.path.join(out, "study.json")
    if not os.path.exists(path):
        raise AnalysisError(f"{out}: not a study directory (no study.json; jobs/submit-study.sh writes it)")
    with open(path) as f:
        pl = json.load(f)
    if pl.get("kind") != "compare":
        raise AnalysisError(f"{out}: a {pl.get('kind')} study, not a comparison (use `scaling`)")
    pl["out"] = os.path.abspath(out)
    rows = [measure(pl, r) for r in pl["runs"]]
    extra = sorted({k for r in rows for k in r if k.startswith(("acc_task", "forgetting_task"))},
                   key=lambda k: (k.split("task")[0], int(k.split("task")[1])))
    _write_csv(os.path.join(out, "study.csv"), rows, RUN_HEAD + extra)
    best = best_per_cell(rows)
    _write_csv(os.path.join(out, "best.csv"), best,
               ["model", "seq_len", "kv_pairs", "d_model", "status", "best_lr", "accuracy", "ci95", "seeds", "acc_min",
                "acc_max", "runs", "failed_runs", "tokens_per_s", "model_flops_per_token", "memory_floats_per_sequence",
                "memory", "parameters", "why"])
    mar = marathon_summary(rows)
    if mar:
        _write_csv(os.path.join(out, "marathon.csv"), mar)
    import matplotlib.pyplot as plt
    figs = _plots(pl, rows, best, mar)
    for name, (fig, _) in figs.items():
        fig.savefig(os.path.join(out, name + ".png"), bbox_inches="tight")
        if not keep_figures:
            plt.close(fig)
    _html(pl, out, rows, best, mar, figs)
    res = (rows, best, mar)
    return res + ({k: f for k, (f, _) in figs.items()},) if keep_figures else res


def _plots(pl, rows, best, mar):
    import matplotlib.pyplot as plt
    figs = {}
    models = sorted({b["model"] for b in best})
    dms = sorted({b["d_model"] for b in best})
    colour = {m: plots.color(i) for i, m in enumerate(sorted({r["model"] for r in rows}))}
    if best:
        # 1. accuracy against kv-pairs (the cells in order), one panel per d-model
        cells = sorted({(b["seq_len"], b["kv_pairs"]) for b in best}, key=lambda c: (c[1], c[0]))
        fig, axes = plt.subplots(1, len(dms), figsize=(5.2 * len(dms), 3.8), squeeze=False)
        for a, d in zip(axes[0], dms):
            for m in models:
                pts = {(b["seq_len"], b["kv_pairs"]): b for b in best if b["model"] == m and b["d_model"] == d}
                xs = [i for i, c in enumerate(cells) if c in pts and pts[c]["status"] == "ok"]
                a.errorbar(xs, [pts[cells[i]]["accuracy"] for i in xs],
                           yerr=[0 if math.isnan(pts[cells[i]]["ci95"]) else pts[cells[i]]["ci95"] for i in xs],
                           fmt="-o", ms=4, capsize=3, color=colour[m], label=m, gid=f"acc:{m}:d{d}")
                for i, c in enumerate(cells):
                    if c in pts and pts[c]["status"] != "ok":  # a failed cell is shown, not dropped
                        a.plot([i], [0.0], "x", color="red", ms=9, mew=2, gid=f"failed:{m}:L{c[0]}-D{c[1]}:d{d}")
            a.set_xticks(range(len(cells)))
            a.set_xticklabels([f"{D}\n(L {L})" for L, D in cells])
            a.set_xlabel("kv-pairs (seq-len)")
            a.set_ylabel("held-out recall (best lr)")
            a.set_ylim(-0.05, 1.05)
            a.set_title(f"MQAR, d-model {d}")
        if any(b["status"] != "ok" for b in best):
            axes[0][0].plot([], [], "x", color="red", label="failed cell")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        figs["comparison-accuracy"] = (fig, "Held-out MQAR recall of each model at its best learning rate, against the "
                                             "cell's kv-pairs, one panel per d-model; bars: 95% t intervals over seeds "
                                             "where a cell has several; red x: a cell none of whose runs finished.")
        # 2. accuracy against memory per sequence (rwkv7's fixed state, the attention models' KV cache)
        fig, a = plt.subplots(figsize=(7.5, 4.2))
        for m in models:
            ok = [b for b in best if b["model"] == m and b["status"] == "ok"]
            a.plot([b["memory_floats_per_sequence"] for b in ok], [b["accuracy"] for b in ok], "o", ms=5, color=colour[m],
                   label=f"{m} ({'state' if ok and ok[0]['memory'] == 'recurrent-state' else 'KV cache'})", gid=f"memory:{m}")
            for b in ok:
                a.annotate(f"D{b['kv_pairs']}", (b["memory_floats_per_sequence"], b["accuracy"]), fontsize=6,
                           xytext=(3, 2), textcoords="offset points")
        a.plot([p[0] for p in ZOOLOGY_RWKV7], [p[1] for p in ZOOLOGY_RWKV7], "*--", color="black", ms=9, lw=0.8,
               label="Zoology: RWKV-7 (published, external)", gid="zoology:rwkv7")
        a.set_xscale("log")
        a.set_xlabel("memory per sequence (floats): recurrent state, or KV cache at the cell's seq-len")
        a.set_ylabel("held-out recall (best lr)")
        a.set_ylim(-0.05, 1.05)
        a.legend(fontsize=7)
        fig.tight_layout()
        figs["comparison-memory"] = (fig, "Recall against the memory a model carries per sequence: rwkv7's fixed state "
                                           "floats, the Transformers' KV-cache floats (2 x layers x seq-len x d-model) "
                                           "at the cell's sequence length; Zoology's published RWKV-7 points drawn as "
                                           "an external reference (their models and budgets, not this study's).")
        # 4. cost: tokens/s and FLOPs per token per model and cell
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        labels = [f"L{L} D{D} d{d}" for (L, D, d) in sorted({(b["seq_len"], b["kv_pairs"], b["d_model"]) for b in best},
                                                           key=lambda c: (c[2], c[1], c[0]))]
        keys = sorted({(b["seq_len"], b["kv_pairs"], b["d_model"]) for b in best}, key=lambda c: (c[2], c[1], c[0]))
        wbar = 0.8 / max(1, len(models))
        for j, m in enumerate(models):
            pts = {(b["seq_len"], b["kv_pairs"], b["d_model"]): b for b in best if b["model"] == m and b["status"] == "ok"}
            xs = [i + j * wbar for i, k in enumerate(keys) if k in pts]
            axes[0].bar(xs, [pts[k]["tokens_per_s"] for k in keys if k in pts], wbar, color=colour[m], label=m, gid=f"tps:{m}")
            axes[1].bar(xs, [pts[k]["model_flops_per_token"] for k in keys if k in pts], wbar, color=colour[m], label=m,
                        gid=f"flops:{m}")
        for a, lab in zip(axes, ["training tokens / s (median, one thread)", "model FLOPs per token (fwd + bwd)"]):
            a.set_xticks([i + 0.4 - wbar / 2 for i in range(len(keys))])
            a.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
            a.set_ylabel(lab)
            a.set_yscale("log")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        figs["comparison-cost"] = (fig, "Cost of every model at every cell (its best learning rate's runs): measured "
                                         "training tokens/s (median over steps, one thread, runs two at a time on the "
                                         "node) and analytic model FLOPs per token (PILF's own work included).")
    if mar:
        ok = [r for r in mar if r["status"] == "ok"]
        tasks = min((r["tasks"] for r in ok), default=0)
        fig, a = plt.subplots(figsize=(7.5, 3.8))
        wbar = 0.8 / max(1, len(mar))
        for j, r in enumerate(mar):
            if r["status"] != "ok":
                a.text(j * wbar, 0, f"{r['model']}: failed", color="red", rotation=90, va="bottom", gid=f"failed:{r['model']}")
                continue
            vals = [r[f"forgetting_task{k}"] for k in range(tasks)] + [r["avg_forgetting"]]
            errs = [r[f"forgetting_task{k}_ci95"] for k in range(tasks)] + [r["avg_forgetting_ci95"]]
            a.bar([i + j * wbar for i in range(tasks + 1)], vals, wbar, yerr=[0 if math.isnan(e) else e for e in errs],
                  capsize=3, color=colour[r["model"]], label=f"{r['model']} ({r['seeds']} seeds)", gid=f"forgetting:{r['model']}")
        a.set_xticks([i + 0.4 - wbar / 2 for i in range(tasks + 1)])
        a.set_xticklabels([f"task {k}" for k in range(tasks)] + ["average"])
        a.set_ylabel("forgetting (best earlier - final accuracy)")
        a.legend(fontsize=7)
        fig.tight_layout()
        figs["comparison-forgetting"] = (fig, "fmnist-marathon: forgetting of each task (its best validation accuracy "
                                               "before the last pass minus the last) and the run's average forgetting, "
                                               "mean over seeds with 95% t intervals; a difference is one only where "
                                               "the intervals separate.")
    return figs


def _html(pl, out, rows, best, mar, figs):
    import datetime
    import html
    from .report import _table

    def table(rs, head):
        return _table(head, [[_cell(r.get(h, "")) for h in head] for r in rs])

    failed = [r for r in rows if r["status"] != "ok"]
    parts = [f"<h1>{html.escape(pl['name'])}: HyperRNN against RNN</h1>",
             f"<p>{len(rows)} run(s), {len(failed)} failed; written "
             f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
             f"analysis/hyperrnn-analysis comparison. Study file: {html.escape(pl['study_file'])}.</p>"]
    if best:
        parts += ["<h2>MQAR: best learning rate per cell</h2>",
                  table(best, ["model", "seq_len", "kv_pairs", "d_model", "status", "best_lr", "accuracy", "ci95", "seeds",
                               "acc_min", "acc_max", "tokens_per_s", "model_flops_per_token", "memory_floats_per_sequence",
                               "memory", "parameters", "why"])]
    if mar:
        parts += ["<h2>fmnist-marathon: accuracy and forgetting (mean, 95% interval over seeds)</h2>",
                  table(mar, list(dict.fromkeys(k for r in mar for k in r)))]
    for name, (_, caption) in figs.items():
        parts.append(f'<figure><img src="{name}.png" alt="{name}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    parts += ["<h2>Every run</h2>", table(rows, RUN_HEAD)]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + html.escape(pl["name"]) +
            "</title><style>body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; }"
            " table { border-collapse: collapse; font-size: 0.8em; } th, td { border: 1px solid #ccc; padding: 2px 5px; }"
            " img { max-width: 100%; } figcaption { font-size: 0.85em; color: #555; }</style></head><body>\n" +
            "\n".join(parts) + "\n</body></html>\n")
    with open(os.path.join(out, "index.html"), "w") as f:
        f.write(page)
