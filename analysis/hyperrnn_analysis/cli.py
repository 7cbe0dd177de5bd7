"""analysis/hyperrnn-analysis SUBCOMMAND: the toolkit's command line. Bad input (not a run
directory, an unknown snapshot format, an empty or torn CSV, a missing output directory, nonsense
numbers) ends with one line on stderr and exit status 2; an output that cannot be written, exit 1.
"""
import argparse
import os
import sys

from .errors import AnalysisError

PROG = "hyperrnn-analysis"

DESCRIPTION = """Plots and tables of hyperrnn run directories and snapshots.

Each figure command takes one or more run directories (each holds config.ini, metrics.csv and
snapshots/) and writes PNG files into --out DIR (created if missing; its parent must exist).
A run still in progress works: only its complete snapshots and finished CSV rows are read.
Snapshots are verified before they are read (every shard present, every hash as recorded)."""

EPILOG = """examples:
  hyperrnn-analysis curves runs/a runs/b --out figs/      loss, accuracy, held-out accuracy
  hyperrnn-analysis report runs/a runs/b --out report/    everything, with report/index.html
  hyperrnn-analysis snapshot runs/a                       verify and describe the latest snapshot
Run it with Debian's /usr/bin/python3 (numpy, h5py, matplotlib); the script switches to it by
itself when the python3 on PATH lacks them."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and full help texts."""

    def error(self, message):
        raise AnalysisError(f"{self.prog}: {message} (see {self.prog} --help)")


def positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def out_dir(path):
    p = os.path.abspath(path)
    if os.path.exists(p):
        if not os.path.isdir(p):
            raise AnalysisError(f"--out: '{path}' exists and is not a directory")
    else:
        parent = os.path.dirname(p)
        if not os.path.isdir(parent):
            raise AnalysisError(f"--out: cannot create '{path}': its parent directory '{parent}' does not exist")
        os.mkdir(p)
    if not os.access(p, os.W_OK):
        raise AnalysisError(f"--out: cannot write to '{path}'")
    return p


def build_parser():
    fmt = argparse.RawDescriptionHelpFormatter
    ap = Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    sub = ap.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=Parser)

    def figure_cmd(name, help_, desc, smooth=True):
        p = sub.add_parser(name, help=help_, description=desc, formatter_class=fmt)
        p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
        p.add_argument("--out", required=True, metavar="DIR", help="directory for the figures (created if missing)")
        if smooth:
            p.add_argument("--smooth", type=positive_int, metavar="N",
                           help="moving-average window in steps (default: about 1/50 of each run)")
        return p

    figure_cmd("curves", "loss, accuracy and held-out/test accuracy against the step",
               "Training loss and accuracy against the step (faint: every step; solid: a moving average),\n"
               "held-out (MQAR) or test (Fashion-MNIST) accuracy at each evaluation from eval.csv, and for\n"
               "marathons the validation after every task (marathon.csv). Several runs share one figure.\n"
               "Writes DIR/curves.png.")
    figure_cmd("pi", "the PI assessment, PILR's lr_mod, gating loss and routing accuracy",
               "Per run: epsilon, tau, surprise (and its expert and gating parts), PI, lr_mod per group,\n"
               "pilf's gating loss and routing accuracy, each where the model has it (no empty panels);\n"
               "marathon task boundaries dotted. Writes DIR/pi-RUN.png.")
    figure_cmd("experts", "tokens per expert, load imbalance, dynamic k, SMK selection",
               "Per run with experts: tokens routed to each expert of each MoE layer over time, the load\n"
               "imbalance (max/mean tokens), dynamic top-k's mean k when it varies, and a heat map of which\n"
               "experts SMK let learn. Writes DIR/experts-RUN.png and DIR/smk-RUN.png.")
    p = figure_cmd("trajectory", "theta_t across snapshots: distances, PCA, cosine similarity",
                   "Per run with two or more snapshots: the distance between consecutive snapshots per layer and\n"
                   "per expert (for marathons labelled with the task), a PCA projection of the path of theta_t\n"
                   "(directions of theta_k - theta_final, as loss-landscape projects checkpoints) and the cosine\n"
                   "similarity between every two snapshots. Writes DIR/trajectory-*-RUN.png.", smooth=False)
    p.add_argument("--max-snapshots", type=positive_int, default=50, metavar="N",
                   help="use at most N snapshots, evenly spaced, first and last included (default 50)")
    figure_cmd("compare", "a table and figures for several runs",
               "The runs' final figures in one table (DIR/compare.csv, DIR/compare.md, printed too), and\n"
               "their loss, held-out accuracy and throughput side by side (DIR/compare-*.png).")
    p = figure_cmd("report", "all of the above into DIR with index.html",
                   "Every figure for the runs, written into DIR with DIR/index.html: a summary table, the\n"
                   "configuration (keys that differ, each run's config.ini), provenance (invocations and\n"
                   "events: hosts, Slurm jobs, stops and resumes) and the figures with captions.")
    p.add_argument("--max-snapshots", type=positive_int, default=50, metavar="N", help="as for trajectory (default 50)")

    p = sub.add_parser("snapshot", help="verify a snapshot and describe it",
                       description="Opens a snapshot (a snapshot directory, its manifest.h5, or a run directory: its\n"
                                   "latest), verifies it (format, manifest attributes, every shard's presence and\n"
                                   "SHA-256, every tensor's sha256) and prints its step, layout, tensors and theta_sha256\n"
                                   "(the same digest as `hyperrnn inspect`). Exit 2 when it fails verification.",
                       formatter_class=fmt)
    p.add_argument("path", metavar="PATH")
    p.add_argument("--tensors", action="store_true", help="list every tensor with its layer, expert and shape")

    p = sub.add_parser("marathon", help="table of fmnist-marathon runs' final per-task accuracy and forgetting",
                       description="Each run's last validation from marathon.csv: per-task accuracy, their mean, the\n"
                                   "average forgetting, and the mean forgetting over all passes. RUN is a run\n"
                                   "directory or its marathon.csv.", formatter_class=fmt)
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")

    p = sub.add_parser("pilf-windows", help="window means of the PILF dynamics from metrics.csv",
                       description="Means over --windows equal windows of steps (skipped steps left out): the PI\n"
                                   "assessment, PILR's factors, gating loss, routing accuracy, k, and the SMK coverage\n"
                                   "(share of routed tokens whose expert SMK let learn) per MoE layer. RUN is a run\n"
                                   "directory or its metrics.csv. Tab-separated.", formatter_class=fmt)
    p.add_argument("run", metavar="RUN")
    p.add_argument("--windows", type=positive_int, default=5, metavar="N", help="number of windows (default 5)")
    p = sub.add_parser("study-plan", help="check a study file (scaling or comparison) and print its runs",
                       description="Reads a study file (jobs/configs/study-*.ini): a scaling study (kind = weak |\n"
                                   "strong; keys in analysis/hyperrnn_analysis/study.py and docs/scaling.md) or a\n"
                                   "comparison (kind = compare; keys in analysis/hyperrnn_analysis/comparison.py and\n"
                                   "docs/results.md). Checks it (P divides the shards, P at most the experts, a known\n"
                                   "model; for a comparison: cells that fit, a non-empty learning-rate sweep) and\n"
                                   "prints a header ('# NAME: ...' and '# analysis: scaling|comparison') and one line\n"
                                   "per run: NAME P T CONFIG and its hyperrnn train options, shell-quoted. With --write\n"
                                   "it also writes DIR/study.json, which the analysis reads. jobs/submit-study.sh\n"
                                   "calls this.",
                       formatter_class=fmt)
    p.add_argument("study", metavar="STUDY.ini")
    p.add_argument("--out", required=True, metavar="DIR", help="the study directory")
    p.add_argument("--write", action="store_true", help="write DIR/study.json (DIR must exist)")
    p = sub.add_parser("scaling", help="analyse a finished scaling study directory",
                       description="Reads DIR/study.json and every point's run directory and writes DIR/study.csv\n"
                                   "(per point: median step time, tokens/s, speedup, parallel efficiency, the split into\n"
                                   "experts, dense compute, dispatch, reductions, PILF bookkeeping and optimizer, the\n"
                                   "model's prediction and its error; failed points marked failed), DIR/model.csv and\n"
                                   "DIR/model.md (predictions to P = 1024 on this node's fitted network and a 25 GB/s,\n"
                                   "2 us inter-node one) and DIR/study-{scaling,phases,model}.png.",
                       formatter_class=fmt)
    p.add_argument("dir", metavar="DIR")
    p = sub.add_parser("comparison", help="analyse a finished comparison study directory (HyperRNN against RNN)",
                       description="Reads DIR/study.json and every run directory and writes DIR/study.csv (every run:\n"
                                   "final held-out accuracy, or the marathon's accuracy and forgetting, tokens/s, model\n"
                                   "FLOPs per token, memory per sequence, parameters; a failed run marked failed with\n"
                                   "why), DIR/best.csv (per model and cell: the best learning rate, the mean over seeds\n"
                                   "with its 95% t interval), DIR/marathon.csv (per model, over seeds), the PNGs\n"
                                   "comparison-{accuracy,memory,cost,forgetting}.png and DIR/index.html.",
                       formatter_class=fmt)
    p.add_argument("dir", metavar="DIR")
    return ap


def run_command(a):
    from . import figures, report, tables
    from .runs import open_runs

    if a.command == "study-plan":
        import json
        import shlex
        from . import comparison, study
        kind = study.read_study(a.study).get("kind", "")
        if kind == "compare":
            pl = comparison.plan(a.study, a.out)
            lines = comparison.plan_lines(pl)
            print(f"# {pl['name']}: comparison, {len(lines)} run(s)")
            print("# analysis: comparison")
        else:
            pl = study.plan(a.study, a.out)
            lines = [f"{pt['name']} {pt['P']} {pt['T']} {shlex.quote(pl['config'])} {shlex.join(study.point_args(pl, pt))}"
                     for pt in pl["points"]]
            print(f"# {pl['name']}: {pl['kind']} scaling of {pl['model']} ({pl['config']}), {len(lines)} point(s)")
            print("# analysis: scaling")
        if a.write:
            with open(os.path.join(a.out, "study.json"), "w") as f:
                json.dump(pl, f, indent=1)
            if kind == "compare":
                comparison.write_commands(pl, a.out)
        for line in lines:
            print(line)
        return 0
    if a.command == "comparison":
        from . import comparison
        rows, best, mar = comparison.analyse(a.dir)
        failed = [r["run"] for r in rows if r["status"] != "ok"]
        print(f"comparison: {len(rows)} run(s), {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
              f"{len(best)} MQAR cell(s), {len(mar)} marathon model(s); wrote {os.path.join(a.dir, 'study.csv')}, "
              f"best.csv, {'marathon.csv, ' if mar else ''}comparison-*.png and index.html")
        return 0
    if a.command == "scaling":
        from . import study
        rows = study.analyse(a.dir)
        failed = [f"P{r['P']}-T{r['T']}" for r in rows if r["status"] != "ok"]
        print(f"scaling: {len(rows)} point(s), {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
              f"wrote {os.path.join(a.dir, 'study.csv')}, model.csv, model.md and study-*.png")
        return 0
    if a.command in ("marathon", "pilf-windows"):
        if a.command == "marathon":
            head, body = tables.marathon(a.runs)
            print(tables.format_table(head, body, "markdown" if a.markdown else "text"))
        else:
            head, body = tables.pilf_windows(a.run, a.windows)
            print(tables.format_table(head, body, "tsv"))
        return 0
    if a.command == "snapshot":
        from .snapshot import open_snapshot
        with open_snapshot(a.path) as s:
            print(f"snapshot {s.dir}")
            print(f"step {s.step}, format {s.format}, {s.shards} shard file(s), written by {s.code_version}")
            print(f"model {s.config.get('model', '?')} on {s.config.get('task', '?')}, {len(s.param_order)} tensors"
                  + (f" and {len(s.gating_order)} GatingTransformer tensors" if s.gating_order else ""))
            if a.tensors:
                for name, layer, expert, shape in s.structure():
                    where = ("" if layer is None else f"layer {layer}") + ("" if expert is None else f", expert {expert}")
                    print(f"  {name} {list(shape)} {where}".rstrip())
            print(f"verification: OK (format, manifest attributes, {s.shards} shard file(s) and their sha256)")
            print(f"theta_sha256: {s.theta_sha256()}")
        return 0
    runs = open_runs(a.runs)
    figures.require_metrics(runs)
    out = out_dir(a.out)
    w = getattr(a, "smooth", None)
    if a.command == "report":
        index, notes = report.build(runs, out, window=w, max_snapshots=a.max_snapshots)
        for n in notes:
            print(f"note: {n}")
        print(f"report: {index}")
        return 0
    if a.command == "compare":
        figs, notes, table = figures.compare(runs, w)
        head = list(table[0].keys())
        body = [[row[h] for h in head] for row in table]
        import csv
        with open(os.path.join(out, "compare.csv"), "w", newline="") as f:
            csv.writer(f).writerows([head] + body)
        with open(os.path.join(out, "compare.md"), "w") as f:
            f.write(tables.format_table(head, body, "markdown") + "\n")
        print(tables.format_table(head, body))
    else:
        build = {"curves": lambda: figures.curves(runs, w), "pi": lambda: figures.pi(runs, w),
                 "experts": lambda: figures.experts(runs, w),
                 "trajectory": lambda: figures.trajectory(runs, a.max_snapshots)}[a.command]
        figs, notes = build()
    for n in notes:
        print(f"note: {n}")
    for f in figs:
        print(f"wrote {f.save(out)}")
    return 0


def main(argv=None):
    ap = build_parser()
    try:
        a = ap.parse_args(argv)
        if not a.command:
            ap.print_help(sys.stderr)
            return 2
        return run_command(a)
    except AnalysisError as e:
        msg = str(e)
        print(msg if msg.startswith(PROG) else f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{PROG}: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
