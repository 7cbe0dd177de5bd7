"""What each subcommand plots. Every builder takes runs (runs.Run) and returns (figures, notes):
plots.Figure objects and lines saying what was left out and why (a model without experts has no
expert figures, a run with one snapshot no trajectory). A panel is drawn only for a quantity that
some run has (not all nan).
Leaves out: the command line (cli.py) and the HTML page (report.py).
"""
import math

import numpy as np

from . import plots
from .errors import AnalysisError
from .snapshot import expert_of, layer_of, list_snapshots, open_snapshot

PI_COLUMNS = [("epsilon", "epsilon (loss)"), ("tau", "tau (routing entropy)"), ("surprise", "surprise"),
              ("expert_surprise", "surprise: experts"), ("gating_surprise", "surprise: gating"), ("pi", "PI"),
              ("lr_mod_expert", "lr_mod: experts"), ("lr_mod_gating", "lr_mod: gating"),
              ("gating_loss", "gating loss"), ("routing_acc", "routing accuracy")]


def _window(run, n, window):
    return window if window else plots.auto_window(n)


def _steps(t):
    return np.asarray(t["step"], float)


def _last_step(run):
    return float(_steps(run.metrics)[-1])


def curves(runs, window=None):
    """Loss, training accuracy and held-out / test accuracy against the step, every run on one
    figure."""
    have_acc = any(r.metrics.has_data("acc") for r in runs)
    evals = [(r, r.evals) for r in runs if r.evals is not None]
    marathons = [(r, r.marathon) for r in runs if r.marathon is not None]
    n = 1 + have_acc + bool(evals) + bool(marathons)
    fig, axes = plots.panels(n)
    ax = iter(axes)
    a = next(ax)
    for i, r in enumerate(runs):
        m = r.metrics
        plots.raw_and_smooth(a, _steps(m), m["loss"], r.label, "loss", i, _window(r, len(m), window))
        plots.mark_tasks(a, r.task_boundaries(_last_step(r)) if len(runs) == 1 else [])
    a.set_ylabel("training loss")
    if have_acc:
        a = next(ax)
        for i, r in enumerate(runs):
            m = r.metrics
            if m.has_data("acc"):
                plots.raw_and_smooth(a, _steps(m), m["acc"], r.label, "acc", i, _window(r, len(m), window))
        a.set_ylabel("training accuracy")
    if evals:
        a = next(ax)
        for i, r in enumerate(runs):
            e = r.evals
            if e is None:
                continue
            for split in sorted(set(e["split"]) & {"heldout", "test"}):  # per-task validation: marathon panel
                sel = np.array([s == split for s in e["split"]])
                a.plot(_steps(e)[sel], np.asarray(e["acc"])[sel], marker="o", ms=3, color=plots.color(i),
                       ls="-" if split != "test" else "--", label=f"{r.label} ({split})", gid=f"eval:{r.label}:{split}")
        a.set_ylabel("held-out / test accuracy")
        a.legend(loc="best")
    if marathons:
        a = next(ax)
        for i, r in enumerate(runs):
            if r.marathon is None:
                continue
            t = r.marathon
            a.plot(_steps(t), t["avg_acc"], marker="o", ms=3, color=plots.color(i), label=f"{r.label}: mean over seen tasks",
                   gid=f"marathon:{r.label}:avg_acc")
            a.plot(_steps(t), t["avg_forgetting"], marker="x", ms=3, ls=":", color=plots.color(i),
                   label=f"{r.label}: forgetting", gid=f"marathon:{r.label}:avg_forgetting")
        a.set_ylabel("marathon validation")
        a.legend(loc="best")
    title = "learning curves: " + ", ".join(r.label for r in runs)
    return [plots.Figure("curves", plots.finish(fig, axes, title),
                         "Training loss and accuracy (faint: every step; solid: moving average), held-out or test "
                         "accuracy at each evaluation, and for marathons the validation after every task.")], []


def pi(runs, window=None):
    """PI assessment and learning-rate modulation of each run; marathon task boundaries dotted."""
    figs, notes = [], []
    for r in runs:
        m = r.metrics
        cols = [(c, label) for c, label in PI_COLUMNS if m.has_data(c)]
        flat = [c for c, _ in cols if c.startswith("lr_mod") and np.all(np.asarray(m[c])[np.isfinite(m[c])] == 1.0)]
        if flat:  # PILR off: lr_mod is 1 at every step, nothing to see
            notes.append(f"{r.label}: {', '.join(flat)} = 1 at every step (PILR off); not plotted")
            cols = [x for x in cols if x[0] not in flat]
        if not cols:
            notes.append(f"{r.label}: no PI columns with data")
            continue
        fig, axes = plots.panels(len(cols), height=1.7)
        w = _window(r, len(m), window)
        for a, (c, label) in zip(axes, cols):
            plots.raw_and_smooth(a, _steps(m), m[c], r.label, c, 0, w)
            plots.mark_tasks(a, r.task_boundaries(_last_step(r)))
            a.set_ylabel(label, fontsize=8)
        figs.append(plots.Figure(f"pi-{_slug(r.label)}", plots.finish(fig, axes, f"PI assessment: {r.label}", legend=False),
                                 f"{r.label}: the PI assessment per step (epsilon, tau, surprise and its expert and gating "
                                 "parts, PI), the learning-rate modulation per group, and pilf's gating loss and routing "
                                 "accuracy where the model has them."))
    return figs, notes


def _moe_shape(m):
    layers = 0
    while f"tokens_l{layers}_e0" in m:
        layers += 1
    experts = 0
    while layers and f"tokens_l0_e{experts}" in m:
        experts += 1
    return layers, experts


def _bins(n, most=400):
    """Row index ranges of at most `most` bins (each row its own bin when n <= most)."""
    return np.array_split(np.arange(n), min(n, most))


def experts(runs, window=None):
    """Tokens per expert per layer over time, load imbalance, dynamic k, SMK selection heat maps."""
    figs, notes = [], []
    for r in runs:
        m = r.metrics
        L, E = _moe_shape(m)
        if not L:
            notes.append(f"{r.label}: model '{r.model}' has no experts")
            continue
        x, w = _steps(m), _window(r, len(m), window)
        dyn = m.has_data("k_mean") and np.nanstd(m["k_mean"]) > 0
        fig, axes = plots.panels(L + 1 + dyn, height=2.0)
        for l in range(L):
            a = axes[l]
            for e in range(E):
                c = f"tokens_l{l}_e{e}"
                a.plot(x, m[c], color=plots.color(e), lw=0.5, alpha=0.25, gid=f"raw:{r.label}:{c}")
                a.plot(x, plots.smooth(m[c], w), color=plots.color(e), lw=1.2, label=f"expert {e}",
                       gid=f"smooth:{r.label}:{c}")
            a.set_ylabel(f"tokens, layer {l}", fontsize=8)
            plots.mark_tasks(a, r.task_boundaries(_last_step(r)))
        a = axes[L]
        for l in range(L):
            t = np.stack([m[f"tokens_l{l}_e{e}"] for e in range(E)])
            with np.errstate(invalid="ignore", divide="ignore"):
                imb = t.max(axis=0) / t.mean(axis=0)
            plots.raw_and_smooth(a, x, imb, r.label, f"imbalance_l{l}", l, w)
            a.lines[-1].set_label(f"layer {l}")
        a.set_ylabel("load imbalance\n(max / mean)", fontsize=8)
        a.legend(loc="best")
        if dyn:
            plots.raw_and_smooth(axes[-1], x, m["k_mean"], r.label, "k_mean", 0, w)
            axes[-1].set_ylabel("dynamic k (mean)", fontsize=8)
        axes[0].legend(loc="upper right", ncol=min(E, 4))
        figs.append(plots.Figure(f"experts-{_slug(r.label)}", plots.finish(fig, axes, f"experts: {r.label}", legend=False),
                                 f"{r.label}: tokens routed to each expert of each MoE layer per step, the load imbalance "
                                 "(the busiest expert's tokens over the mean)" + (", and dynamic top-k's mean k" if dyn else "") + "."))
        smk = [f"smk_l{l}" for l in range(L) if f"smk_l{l}" in m]
        if smk:
            masks = np.stack([np.asarray(m[c], float).astype(np.int64) for c in smk])
            if np.all(masks == (1 << E) - 1):
                notes.append(f"{r.label}: SMK kept every expert at every step (no selection heat map)")
            else:
                figs.append(_smk_heatmap(r, x, masks, E))
    return figs, notes


def _smk_heatmap(r, x, masks, E):
    import matplotlib.pyplot as plt
    L = masks.shape[0]
    bins = _bins(masks.shape[1])
    fig, axes = plt.subplots(L, 1, figsize=(8, 1.0 + 0.35 * E * L + 0.5), squeeze=False)
    for l in range(L):
        bits = (masks[l][None, :] >> np.arange(E)[:, None]) & 1  # (E, steps)
        img = np.stack([bits[:, b].mean(axis=1) for b in bins], axis=1)
        a = axes[l][0]
        im = a.imshow(img, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1,
                      extent=[x[bins[0][0]], x[bins[-1][-1]], E - 0.5, -0.5])
        im.set_gid(f"smk:{r.label}:l{l}")
        a.set_ylabel(f"layer {l}\nexpert", fontsize=8)
        a.set_yticks(range(E))
        a.grid(False)
    axes[-1][0].set_xlabel("step")
    fig.colorbar(im, ax=[a[0] for a in axes], label="share of steps SMK let it learn")
    fig.suptitle(f"SMK selection: {r.label}")
    return plots.Figure(f"smk-{_slug(r.label)}", fig,
                        f"{r.label}: which experts Surprise-Min-K let learn (1 = every step of the bin, 0 = none).")


def _pick(dirs, most):
    if len(dirs) <= most:
        return dirs
    idx = sorted(set(np.linspace(0, len(dirs) - 1, most).round().astype(int)))
    return [dirs[i] for i in idx]


def _group(name):
    e = expert_of(name)
    l = layer_of(name)
    return (f"layer {l}" if l is not None else "embeddings, head, norms"), (e[0], e[1]) if e else None


def trajectory(runs, max_snapshots=50):
    """theta_t across a run's snapshots: distance between consecutive snapshots per layer and per
    expert, a PCA projection of the path, the cosine similarity between snapshots, and for
    marathons the experts' movement per task."""
    import matplotlib.pyplot as plt
    figs, notes = [], []
    for r in runs:
        dirs = list_snapshots(r.path)
        if len(dirs) < 2:
            notes.append(f"{r.label}: {len(dirs)} complete snapshot(s); a trajectory needs 2 (lower --snapshot-every)")
            continue
        dirs = _pick(dirs, max_snapshots)
        steps, flats, layer_d, expert_d, prev = [], [], {}, {}, None
        for d in dirs:
            with open_snapshot(d) as s:
                p = s.params()
                p.update({"gating." + k: v for k, v in s.gating().items()})
                steps.append(s.step)
            flats.append(np.concatenate([np.asarray(v, np.float32).ravel() for v in p.values()]))
            if prev is not None:
                acc_l, acc_e = {}, {}
                for n, v in p.items():
                    dd = float(np.sum((np.asarray(v, np.float64) - prev[n]) ** 2))
                    g, ex = _group(n) if not n.startswith("gating.") else ("GatingTransformer", None)
                    acc_l[g] = acc_l.get(g, 0.0) + dd
                    if ex:
                        acc_e[ex] = acc_e.get(ex, 0.0) + dd
                for g, v in acc_l.items():
                    layer_d.setdefault(g, []).append(math.sqrt(v))
                for ex, v in acc_e.items():
                    expert_d.setdefault(ex, []).append(math.sqrt(v))
            prev = {n: np.asarray(v, np.float64) for n, v in p.items()}
        ends = np.array(steps[1:], float)
        # distances per layer and in total
        fig, axes = plots.panels(2)
        for i, (g, v) in enumerate(sorted(layer_d.items())):
            axes[0].plot(ends, v, marker="o", ms=3, color=plots.color(i), label=g, gid=f"dist:{r.label}:{g}")
        axes[0].set_ylabel("||theta_k - theta_k-1||\nper layer", fontsize=8)
        axes[0].legend(loc="best")
        X = np.stack(flats).astype(np.float64)
        total = np.linalg.norm(np.diff(X, axis=0), axis=1)
        axes[1].plot(ends, total, marker="o", ms=3, color="k", gid=f"dist:{r.label}:total")
        axes[1].set_ylabel("||theta_k - theta_k-1||", fontsize=8)
        for a in axes:
            plots.mark_tasks(a, r.task_boundaries(steps[-1]))
        figs.append(plots.Figure(f"trajectory-distance-{_slug(r.label)}", plots.finish(fig, axes, f"theta_t between snapshots: {r.label}", legend=False),
                                 f"{r.label}: the L2 distance between consecutive snapshots (at the later one's step), per "
                                 "layer (expert tensors included in their layer) and over the whole theta."))
        if expert_d:
            keys = sorted(expert_d)
            M = np.array([expert_d[k] for k in keys])
            fig, a = plt.subplots(figsize=(8, 1.2 + 0.3 * len(keys)))
            im = a.imshow(M, aspect="auto", interpolation="nearest", cmap="magma")
            im.set_gid(f"expert-distance:{r.label}")
            a.set_yticks(range(len(keys)))
            a.set_yticklabels([f"L{l} E{e}" for l, e in keys], fontsize=7)
            labels = [f"{int(s0)}-{int(s1)}" for s0, s1 in zip(steps[:-1], steps[1:])]
            if r.is_marathon():
                labels = [f"{lab}\n{_task_label(r, s0)}" for lab, s0 in zip(labels, steps[:-1])]
            a.set_xticks(range(len(labels)))
            a.set_xticklabels(labels, rotation=90 if len(labels) > 8 else 0, fontsize=7)
            a.set_xlabel("snapshot interval (steps)" + (" and the marathon task it began in" if r.is_marathon() else ""))
            a.grid(False)
            fig.colorbar(im, ax=a, label="||delta theta|| of the expert")
            fig.suptitle(f"which experts moved when: {r.label}")
            fig.tight_layout()
            figs.append(plots.Figure(f"trajectory-experts-{_slug(r.label)}", fig,
                                     f"{r.label}: how far each expert's parameters moved in each interval between "
                                     "snapshots" + (", labelled with the marathon task the interval began in." if r.is_marathon() else ".")))
        # PCA of the path, directions from the differences to the final snapshot (as loss-landscape
        # projects checkpoints)
        D = X - X[-1]
        G = D @ D.T
        lam, U = np.linalg.eigh(G)
        order = np.argsort(lam)[::-1]
        lam, U = np.clip(lam[order], 0, None), U[:, order]
        k = 2 if len(lam) > 1 and lam[1] > 0 else 1
        coords = U[:, :k] * np.sqrt(lam[:k])
        share = lam / lam.sum() if lam.sum() > 0 else lam
        fig, a = plt.subplots(figsize=(5.5, 4.5))
        yy = coords[:, 1] if k == 2 else np.zeros(len(coords))
        a.plot(coords[:, 0], yy, "-o", ms=3, color=plots.color(0), gid=f"pca:{r.label}")
        for j in sorted({0, len(steps) // 2, len(steps) - 1}):
            a.annotate(f"step {steps[j]}", (coords[j, 0], yy[j]), fontsize=7, textcoords="offset points", xytext=(4, 4))
        a.set_xlabel(f"PC1 ({100 * share[0]:.1f}% of the variance)")
        a.set_ylabel(f"PC2 ({100 * share[1]:.1f}%)" if k == 2 else "(one direction only)")
        a.set_title(f"theta_t projected on its principal directions: {r.label}")
        fig.tight_layout()
        figs.append(plots.Figure(f"trajectory-pca-{_slug(r.label)}", fig,
                                 f"{r.label}: the path of theta_t through its {len(steps)} snapshots projected on the two "
                                 "principal directions of (theta_k - theta_final)."))
        nrm = np.linalg.norm(X, axis=1)
        C = (X @ X.T) / np.outer(nrm, nrm)
        fig, a = plt.subplots(figsize=(5.5, 4.5))
        im = a.imshow(C, interpolation="nearest", cmap="viridis")
        im.set_gid(f"cosine:{r.label}")
        ticks = sorted(set(np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int)))
        a.set_xticks(ticks)
        a.set_xticklabels([str(steps[t]) for t in ticks], rotation=90, fontsize=7)
        a.set_yticks(ticks)
        a.set_yticklabels([str(steps[t]) for t in ticks], fontsize=7)
        a.grid(False)
        fig.colorbar(im, ax=a, label="cosine similarity")
        a.set_title(f"cosine similarity between snapshots: {r.label}")
        fig.tight_layout()
        figs.append(plots.Figure(f"trajectory-cosine-{_slug(r.label)}", fig,
                                 f"{r.label}: cosine similarity of the whole theta between every two snapshots (by step)."))
    return figs, notes


def _task_label(r, step):
    ts = int(r.config.get("task-steps", "0") or 0)
    cpt = int(r.config.get("classes-per-task", "2") or 2)
    if ts <= 0:
        return ""
    n_tasks = max(1, 10 // cpt)
    visit = int(step) // ts
    return f"task {visit % n_tasks}"


def summary(r):
    """One run's final figures, configuration essentials and provenance (a dict of strings)."""
    m = r.metrics
    ok = m["skipped"] == 0 if "skipped" in m else np.ones(len(m), bool)
    tail = max(1, len(m) // 20)
    last = lambda c: float(np.nanmean(np.asarray(m[c])[ok][-tail:])) if m.has_data(c) else math.nan
    row = {"run": r.label, "model": r.model, "task": r.task, "steps": f"{int(_last_step(r))} of {r.config.get('steps', '?')}",
           "final loss": _fmt(last("loss")), "final train acc": _fmt(last("acc"))}
    e = r.evals
    row["held-out acc"] = _fmt(float(e["acc"][-1])) + f" ({e['split'][-1]}, step {int(_steps(e)[-1])})" if e is not None else "-"
    mt = r.marathon
    row["marathon acc / forgetting"] = (f"{_fmt(float(mt['avg_acc'][-1]))} / {_fmt(float(mt['avg_forgetting'][-1]))}"
                                        if mt is not None else "-")
    row["tokens/s (median)"] = f"{np.nanmedian(m['tokens_per_s']):.0f}" if m.has_data("tokens_per_s") else "-"
    row["train time (s)"] = f"{np.nansum(m['step_time_s']):.1f}" if m.has_data("step_time_s") else "-"
    inv = r.optional("logs/invocations.csv")
    if inv is not None:
        th = inv["threads_per_rank"][-1]  # "T0 T1 ..." per rank (a number when there is one rank)
        row["ranks x threads"] = f"{int(inv['ranks'][-1])} x {number(th) if not isinstance(th, str) else th}"
        row["invocations"] = str(len(inv))
        row["code"] = str(inv["code_version"][-1])
    row["snapshots"] = str(len(list_snapshots(r.path)))
    row["status"] = "in progress" if r.writing else "stopped" if int(_last_step(r)) < int(r.config.get("steps", "0") or 0) else "complete"
    return row


def number(x):
    """A table cell: whole numbers without a fraction, others to 6 digits, nan as '-'."""
    x = float(x)
    if math.isnan(x):
        return "-"
    return str(int(x)) if x.is_integer() else f"{x:.6g}"


def _fmt(x):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def compare(runs, window=None):
    """A table of the runs' final figures and their learning curves, held-out accuracy and
    throughput side by side."""
    import matplotlib.pyplot as plt
    table = [summary(r) for r in runs]
    figs = []
    fig, axes = plots.panels(1)
    for i, r in enumerate(runs):
        m = r.metrics
        plots.raw_and_smooth(axes[0], _steps(m), m["loss"], r.label, "loss", i, _window(r, len(m), window))
    axes[0].set_ylabel("training loss")
    figs.append(plots.Figure("compare-loss", plots.finish(fig, axes, "training loss"), "Training loss of every run."))
    evals = [r for r in runs if r.evals is not None or r.marathon is not None]
    if evals:
        fig, axes = plots.panels(1)
        for i, r in enumerate(runs):
            if r.evals is not None:
                axes[0].plot(_steps(r.evals), r.evals["acc"], "-o", ms=3, color=plots.color(i), label=r.label,
                             gid=f"eval:{r.label}")
            elif r.marathon is not None:
                axes[0].plot(_steps(r.marathon), r.marathon["avg_acc"], "-o", ms=3, color=plots.color(i),
                             label=r.label + " (marathon mean)", gid=f"marathon:{r.label}:avg_acc")
        axes[0].set_ylabel("held-out / test accuracy")
        figs.append(plots.Figure("compare-heldout", plots.finish(fig, axes, "held-out accuracy"),
                                 "Held-out (MQAR) or test (Fashion-MNIST) accuracy at each evaluation; marathons: the mean "
                                 "over seen tasks after each task."))
    tput = [(r.label, float(np.nanmedian(r.metrics["tokens_per_s"]))) for r in runs if r.metrics.has_data("tokens_per_s")]
    if tput:
        fig, a = plt.subplots(figsize=(8, 0.6 + 0.4 * len(tput)))
        bars = a.barh([t[0] for t in tput], [t[1] for t in tput], color=[plots.color(i) for i in range(len(tput))])
        for b in bars:
            b.set_gid("throughput")
        a.set_xlabel("tokens / s (median over steps)")
        a.invert_yaxis()
        fig.tight_layout()
        figs.append(plots.Figure("compare-throughput", fig, "Median training throughput of every run."))
    return figs, [], table


def _slug(s):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def require_metrics(runs):
    for r in runs:
        r.metrics  # noqa: B018 (loads it: a missing, empty or torn metrics.csv is an AnalysisError here)
    if not runs:
        raise AnalysisError("no run given")
