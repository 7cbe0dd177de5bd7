"""Scaling studies: the study file, the plan of its points (`plan`, used by jobs/submit-study.sh
before it submits anything) and the analysis of a finished study directory (`analyse`: the
study's CSV, its PNGs and the performance model's predictions).

A study file (INI, `key = value`; jobs/configs/study-*.ini):
  kind = weak | strong        strong: the config's batch and shards for every P; weak: per rank
  config = FILE.ini           the model configuration (relative to the study file)
  ranks = 1 2 4               the rank counts P
  threads = 1 2               threads per rank (default 1): a second axis
  steps = 200                 steps per point (default 200); the first `warmup` are left out of
  warmup = 20                 the medians (default steps / 10)
  batch-per-rank, shards-per-rank   weak: per-rank batch and shards (default: the config's)
  options = ...               further `hyperrnn train` options for every point
  name = ...                  (default: the study file's name)
Leaves out: submitting (jobs/submit-study.sh) and the model's formulas (perfmodel.py).
"""
import json
import math
import os
import shlex

import numpy as np

from . import perfmodel, plots
from .errors import AnalysisError
from .runs import parse_ini, read_table

KEYS = {"kind", "config", "ranks", "threads", "steps", "warmup", "batch-per-rank", "shards-per-rank", "options", "name"}
PHASES = ["expert_s", "dense_s", "dispatch_s", "reduce_s", "pilf_s", "optimizer_s"]


def _ints(study, key, text):
    try:
        vals = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise AnalysisError(f"{study}: '{key} = {text}': expected whole numbers")
    if any(v < 1 for v in vals):
        raise AnalysisError(f"{study}: '{key} = {text}': every value must be at least 1")
    return vals


def read_study(study_path, keys=None):
    """A study file's keys (scaling or comparison); with keys, one not among them is refused."""
    if not os.path.isfile(study_path):
        raise AnalysisError(f"study file '{study_path}' not found")
    with open(study_path) as f:
        st = parse_ini(f.read())
    unknown = sorted(set(st) - keys) if keys is not None else []
    if unknown:
        raise AnalysisError(f"{study_path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(keys))})")
    return st


def plan(study_path, out_dir):
    """Checks the study and returns its plan (a dict, also written as OUT/study.json by the helper)."""
    st = read_study(study_path, KEYS)
    kind = st.get("kind", "")
    if kind not in ("weak", "strong"):
        raise AnalysisError(f"{study_path}: kind must be weak or strong, got '{kind}'")
    if "config" not in st:
        raise AnalysisError(f"{study_path}: no 'config' (the model configuration)")
    cfg_path = st["config"] if os.path.isabs(st["config"]) else os.path.join(os.path.dirname(os.path.abspath(study_path)), st["config"])
    if not os.path.isfile(cfg_path):
        raise AnalysisError(f"{study_path}: config '{st['config']}' not found ({cfg_path})")
    with open(cfg_path) as f:
        cfg = parse_ini(f.read())
    model = cfg.get("model", "gauss-moe")
    if model not in perfmodel.MODELS:
        raise AnalysisError(f"{cfg_path}: unknown model '{model}' (a study runs {', '.join(perfmodel.MODELS)})")
    ranks = _ints(study_path, "ranks", st.get("ranks", ""))
    if not ranks:
        raise AnalysisError(f"{study_path}: 'ranks' is empty: give the rank counts P, e.g. ranks = 1 2")
    threads = _ints(study_path, "threads", st.get("threads", "1")) or [1]
    steps = _ints(study_path, "steps", st.get("steps", "200"))[0]
    warmup = int(st.get("warmup", str(steps // 10)))
    if not 0 <= warmup < steps:
        raise AnalysisError(f"{study_path}: warmup must be in [0, steps), got {warmup}")
    batch = int(cfg.get("batch", "64"))
    shards = int(cfg["shards"]) if cfg.get("shards", "auto") != "auto" else math.gcd(batch, 8)
    experts = int(cfg.get("experts", "4")) if model != "dense" else 0
    bpr = _ints(study_path, "batch-per-rank", st.get("batch-per-rank", str(batch)))[0]
    spr = _ints(study_path, "shards-per-rank", st.get("shards-per-rank", str(shards)))[0]
    points = []
    for P in ranks:
        B, S = (batch, shards) if kind == "strong" else (P * bpr, P * spr)
        if S % P or B % S:
            raise AnalysisError(f"{study_path}: P = {P} does not divide the {S} shards (or the shards the batch {B})")
        if experts and P > experts:
            raise AnalysisError(f"{study_path}: P = {P} exceeds the config's {experts} experts (each rank needs one)")
        for T in threads:
            points.append({"P": P, "T": T, "batch": B, "shards": S, "name": f"P{P}-T{T}"})
    name = st.get("name", os.path.splitext(os.path.basename(study_path))[0])
    return {"name": name, "kind": kind, "config": os.path.abspath(cfg_path), "model": model, "steps": steps,
            "warmup": warmup, "options": shlex.split(st.get("options", "")), "points": points,
            "out": os.path.abspath(out_dir), "study_file": os.path.abspath(study_path)}


def point_args(pl, pt):
    """The `hyperrnn train` options of one point (after the config)."""
    return ["--batch", str(pt["batch"]), "--shards", str(pt["shards"]), "--threads", str(pt["T"]),
            "--steps", str(pl["steps"]), "--snapshot-every", "0", "--eval-every", "0", *pl["options"],
            "--out", os.path.join(pl["out"], "points", pt["name"])]


def _median_after(t, col, warmup):
    v = np.asarray(t[col], float)[warmup:]
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else math.nan


def measure(pl, pt):
    """One point's medians, or its failure."""
    run = os.path.join(pl["out"], "points", pt["name"])
    row = {"P": pt["P"], "T": pt["T"], "batch": pt["batch"], "shards": pt["shards"], "status": "failed", "why": ""}
    try:
        t = read_table(os.path.join(run, "timing.csv"))
        m = read_table(os.path.join(run, "metrics.csv"))
    except AnalysisError as e:
        row["why"] = str(e)
        return row
    if len(t) < pl["steps"]:
        row["why"] = f"{len(t)} of {pl['steps']} steps"
        return row
    w = pl["warmup"]
    row["status"] = "ok"
    row["step_time_s"] = _median_after(t, "step_time_s", w)
    row["tokens_per_s"] = _median_after(m, "tokens_per_s", w)
    for c in ("compute_s", "dispatch_s", "reduce_s", "optimizer_s", "pilf_s", "expert_s"):
        row[c] = _median_after(t, c, w) if c in t else 0.0
    row["dense_s"] = max(0.0, row["compute_s"] - row["expert_s"])
    xb = [c for c in t.header if c.startswith("xfer_bytes_l")]
    row["xfer_bytes"] = float(sum(_median_after(t, c, w) for c in xb)) if xb else 0.0
    return row


def read_comm(out):
    rows = []
    d = os.path.join(out, "comm")
    for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        if f.endswith(".csv"):
            try:
                t = read_table(os.path.join(d, f))
            except AnalysisError:
                continue
            rows += [(t["op"][i], t["ranks"][i], t["bytes"][i], t["seconds"][i]) for i in range(len(t))]
    return rows


def model_inputs(pl, base, run_dir):
    """perfmodel.Inputs from the P = 1 point at one T (and the run's configuration and snapshot)."""
    from .snapshot import expert_of, open_snapshot
    cfg = parse_ini(open(os.path.join(run_dir, "config.ini")).read())
    s = open_snapshot(run_dir)
    rep = exp = 0
    for name, layer, expert, shape in s.structure():
        n = int(np.prod(shape)) if shape else 1
        if expert_of(name):
            exp += n
        else:
            rep += n
    rep += sum(int(np.prod(a.shape)) for a in s.gating().values())
    s.close()
    positions = int(cfg.get("seq-len", "32")) if cfg.get("task", "mqar") == "mqar" else \
        (28 // int(cfg.get("patch", "4"))) ** 2 + (1 if cfg.get("vit-pool") == "cls" else 0)
    model = cfg.get("model")
    return perfmodel.Inputs(
        model=model, kind=pl["kind"], t_dense=base["dense_s"], t_expert=base["expert_s"], t_opt=base["optimizer_s"],
        t_local_sum=base["reduce_s"], t_pilf=base["pilf_s"], tokens=int(cfg["batch"]) * positions, batch=int(cfg["batch"]),
        d_model=int(cfg["d-model"]), top_k=int(cfg.get("top-k", "1")) if model != "dense" else 1,
        moe_layers=int(cfg["layers"]) if model != "dense" else 0, experts=int(cfg.get("experts", "1")) if model != "dense" else 1,
        shards=int(cfg["shards"]), replicated_params=rep, expert_params=exp)


INTER_NODE = perfmodel.uniform_network("inter-node (25 GB/s, 2 us per message)", 25e9, 2e-6)


def analyse(out, keep_figures=False):
    """Writes OUT/study.csv, OUT/model.csv, OUT/study-*.png and OUT/model.md; returns the rows (and
    with keep_figures the open figures by name, for reading their artists back)."""
    path = os.path.join(out, "study.json")
    if not os.path.exists(path):
        raise AnalysisError(f"{out}: not a study directory (no study.json; jobs/submit-study.sh writes it)")
    with open(path) as f:
        pl = json.load(f)
    pl["out"] = os.path.abspath(out)
    rows = [measure(pl, pt) for pt in pl["points"]]
    comm = read_comm(out)
    nets = [INTER_NODE]
    notes = []
    if comm:
        try:
            nets.insert(0, perfmodel.fit_network(comm, "this node (fitted from bench --comm)"))
        except AnalysisError as e:
            notes.append(str(e))
    base_by_T = {r["T"]: r for r in rows if r["P"] == 1 and r["status"] == "ok"}
    inputs = {}
    for T, base in base_by_T.items():
        inp = model_inputs(pl, base, os.path.join(out, "points", f"P1-T{T}"))
        two = [r for r in rows if r["T"] == T and r["P"] > 1 and r["status"] == "ok"]
        if pl["kind"] == "weak" and two and pl["model"] == "pilf":  # the growing part of PILF's work
            r2 = min(two, key=lambda r: r["P"])
            inp.g_pilf = max(0.0, (r2["pilf_s"] - base["pilf_s"]) / (r2["P"] - 1))
        inputs[T] = inp
    for r in rows:
        base = base_by_T.get(r["T"])
        if r["status"] == "ok" and base:
            if pl["kind"] == "strong":
                r["speedup"] = base["step_time_s"] / r["step_time_s"]
                r["efficiency"] = r["speedup"] / r["P"]
            else:
                r["speedup"] = r["P"] * base["step_time_s"] / r["step_time_s"]
                r["efficiency"] = base["step_time_s"] / r["step_time_s"]
            if r["T"] in inputs:
                pred = perfmodel.predict(inputs[r["T"]], r["P"], nets[0])
                r["predicted_step_time_s"] = pred["step"]
                r["prediction_error"] = pred["step"] / r["step_time_s"] - 1
                r["predicted_efficiency"] = perfmodel.efficiency(inputs[r["T"]], r["P"], nets[0])
    # threads as an axis: against the same P's fewest threads
    for r in rows:
        same_p = [q for q in rows if q["P"] == r["P"] and q["status"] == "ok"]
        if r["status"] == "ok" and same_p:
            t0 = min(same_p, key=lambda q: q["T"])
            r["thread_speedup"] = t0["step_time_s"] / r["step_time_s"]
            r["thread_efficiency"] = r["thread_speedup"] * t0["T"] / r["T"]
    head = ["P", "T", "batch", "shards", "status", "step_time_s", "tokens_per_s", "speedup", "efficiency",
            "thread_speedup", "thread_efficiency",
            "predicted_step_time_s", "predicted_efficiency", "prediction_error", "compute_s", "expert_s", "dense_s",
            "dispatch_s", "reduce_s", "pilf_s", "optimizer_s", "xfer_bytes", "why"]
    import csv
    with open(os.path.join(out, "study.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for r in rows:
            w.writerow([_cell(r.get(h, "")) for h in head])
    # predictions to P = 1024
    pred_rows, md = [], [f"# {pl['name']}: {pl['kind']} scaling of {pl['model']}", ""]
    Ps = [2 ** i for i in range(11)]
    for T, inp in sorted(inputs.items()):
        for net in nets:
            for P in Ps:
                try:
                    p = perfmodel.predict(inp, P, net)
                    pred_rows.append([T, net.name, P, p["step"], perfmodel.efficiency(inp, P, net), p["bytes_sent"],
                                      p["exchange"], p["reduce"], p["pilf"]])
                except AnalysisError:
                    break
            best, bad, bound = perfmodel.largest_efficient(inp, net)
            md.append(f"- T = {T}, {net.name}: efficiency >= 0.8 up to P = {best}" +
                      (f"; at P = {bad} it falls below, bounded by {bound}" if bad else " (and beyond, to 1024)"))
    with open(os.path.join(out, "model.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["T", "network", "P", "step_time_s", "efficiency", "bytes_sent_per_rank", "exchange_s", "reduce_s", "pilf_s"])
        w.writerows([[_cell(x) for x in r] for r in pred_rows])
    errs = [abs(r["prediction_error"]) for r in rows if "prediction_error" in r]
    md.append("")
    md.append(f"Prediction error over the {len(errs)} measured points: " +
              (f"max {100 * max(errs):.1f}%, mean {100 * sum(errs) / len(errs):.1f}%" if errs else "none (no P = 1 point)"))
    md += [f"- note: {n}" for n in notes]
    with open(os.path.join(out, "model.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    import matplotlib.pyplot as plt
    figs = _plots(pl, rows, pred_rows)
    for name, fig in figs.items():
        fig.savefig(os.path.join(out, name + ".png"))
        if not keep_figures:
            plt.close(fig)
    return (rows, figs) if keep_figures else rows


def _cell(x):
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.6g}"
    return x


def _plots(pl, rows, pred_rows):
    import matplotlib.pyplot as plt
    figs = {}
    Ts = sorted({r["T"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for i, T in enumerate(Ts):
        pts = sorted((r for r in rows if r["T"] == T), key=lambda r: r["P"])
        ok = [r for r in pts if r["status"] == "ok"]
        bad = [r for r in pts if r["status"] != "ok"]
        c = plots.color(i)
        axes[0].plot([r["P"] for r in ok], [r["step_time_s"] for r in ok], "-o", color=c, label=f"T = {T}", gid=f"time:T{T}")
        axes[1].plot([r["P"] for r in ok], [r["tokens_per_s"] for r in ok], "-o", color=c, label=f"T = {T}", gid=f"tokens:T{T}")
        eff = [r for r in ok if "efficiency" in r]
        axes[2].plot([r["P"] for r in eff], [r["efficiency"] for r in eff], "-o", color=c, label=f"T = {T} measured",
                     gid=f"eff:T{T}")
        pe = [r for r in ok if "predicted_efficiency" in r]
        if pe:
            axes[2].plot([r["P"] for r in pe], [r["predicted_efficiency"] for r in pe], "--", marker="s", mfc="none",
                         color=c, label=f"T = {T} model", gid=f"model-eff:T{T}")
        for a in axes:
            for r in bad:  # a failed point is shown, not dropped
                a.plot([r["P"]], [a.get_ylim()[0] if a.lines else 0], "x", color="red", ms=10, mew=2, gid=f"failed:P{r['P']}-T{T}")
    for a, lab in zip(axes, ["step time (s, median)", "tokens / s (median)", "parallel efficiency"]):
        a.set_xlabel("ranks P")
        a.set_ylabel(lab)
        a.set_xscale("log", base=2)
    axes[2].axhline(0.8, color="0.5", ls=":", lw=0.8)
    if any(r["status"] != "ok" for r in rows):
        axes[0].plot([], [], "x", color="red", label="failed point")
    axes[0].legend()
    axes[2].legend(fontsize=7)
    fig.suptitle(f"{pl['name']}: {pl['kind']} scaling of {pl['model']}")
    fig.tight_layout()
    figs["study-scaling"] = fig
    # where the time goes, per point
    fig, a = plt.subplots(figsize=(8, 3.8))
    labels = [f"P{r['P']} T{r['T']}" for r in rows]
    bottom = np.zeros(len(rows))
    names = {"expert_s": "experts", "dense_s": "dense compute", "dispatch_s": "dispatch (exchanges)",
             "reduce_s": "reductions", "pilf_s": "PILF bookkeeping", "optimizer_s": "optimizer"}
    for i, ph in enumerate(PHASES):
        v = np.array([r.get(ph, 0.0) if r["status"] == "ok" else 0.0 for r in rows])
        a.bar(labels, v, bottom=bottom, color=plots.color(i), label=names[ph], gid=f"phase:{ph}")
        bottom += v
    for j, r in enumerate(rows):
        if r["status"] != "ok":
            a.text(j, 0, "failed", color="red", ha="center", va="bottom", rotation=90, gid=f"failed:{labels[j]}")
    a.set_ylabel("s per step (median)")
    a.legend(fontsize=7)
    fig.tight_layout()
    figs["study-phases"] = fig
    if pred_rows:
        fig, a = plt.subplots(figsize=(7, 4))
        for i, key in enumerate(sorted({(r[0], r[1]) for r in pred_rows})):
            pts = [r for r in pred_rows if (r[0], r[1]) == key]
            a.plot([r[2] for r in pts], [r[4] for r in pts], "-o", ms=3, color=plots.color(i),
                   label=f"T = {key[0]}, {key[1]}", gid=f"predicted:{key[0]}:{key[1]}")
        a.axhline(0.8, color="0.5", ls=":", lw=0.8)
        a.set_xscale("log", base=2)
        a.set_xlabel("ranks P")
        a.set_ylabel(f"predicted {pl['kind']}-scaling efficiency")
        a.legend(fontsize=7)
        fig.tight_layout()
        figs["study-model"] = fig
    return figs
