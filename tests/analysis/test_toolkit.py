"""analysis/hyperrnn-analysis and its package on tiny real runs made here by build/bin/hyperrnn (pilf
on 2 ranks with 4 snapshots, the same on 1 rank, dense with one snapshot, a pilf marathon): arrays
read through the manifest equal the shard files' own; the Python digest equals `hyperrnn
inspect`'s theta_sha256; every subcommand writes PNGs whose plotted data (read back from the
figures' artists) equal the CSV files as the csv module reads them; a damaged, a missing shard and
an unknown format fail with one line; bad input gets one line and exit 2; the report opens in
headless Chromium with every image loaded."""
import csv
import fcntl
import glob
import hashlib
import html.parser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "analysis" / "hyperrnn-analysis"
sys.path.insert(0, str(ROOT / "analysis"))
from hyperrnn_analysis import figures, open_run, open_snapshot, plots  # noqa: E402
from hyperrnn_analysis.errors import AnalysisError  # noqa: E402

BIN = os.environ.get("HYPERRNN_BIN")
MPIEXEC = os.environ.get("HYPERRNN_MPIEXEC", "mpiexec")
PILF = ["--model", "pilf", "--d-model", "16", "--layers", "2", "--heads", "2", "--experts", "4", "--top-k", "2",
        "--vocab", "40", "--seq-len", "16", "--kv-pairs", "2", "--batch", "8", "--shards", "2", "--steps", "120",
        "--snapshot-every", "30", "--eval-every", "40", "--eval-samples", "16", "--threads", "1"]
DENSE = ["--model", "dense", "--d-model", "16", "--layers", "1", "--heads", "2", "--vocab", "40", "--seq-len", "16",
         "--kv-pairs", "2", "--batch", "8", "--steps", "60", "--snapshot-every", "0", "--eval-every", "30",
         "--eval-samples", "16", "--threads", "1"]
MARATHON = ["--model", "pilf", "--task", "fmnist-marathon", "--d-model", "16", "--layers", "1", "--heads", "2",
            "--experts", "4", "--top-k", "2", "--batch", "8", "--task-steps", "20", "--steps", "100",
            "--snapshot-every", "20", "--eval-samples", "32", "--threads", "1"]


def env():
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    d = tmp_path_factory.mktemp("runs")
    todo = {"pilf": [MPIEXEC, "--oversubscribe", "-n", "2", BIN, "train", *PILF],
            "pilf1": [BIN, "train", *PILF], "dense": [BIN, "train", *DENSE],
            "moe": [BIN, "train", *PILF[2:PILF.index("--steps")], "--model", "moe", "--steps", "60", "--snapshot-every", "30"],
            "gauss-moe": [BIN, "train", *PILF[2:PILF.index("--steps")], "--model", "gauss-moe", "--steps", "60"]}
    if os.path.isdir("/usr/share/datasets/fashion-mnist"):
        todo["mar"] = [BIN, "train", *MARATHON]
    for name, cmd in todo.items():
        r = subprocess.run([*cmd, "--out", str(d / name)], capture_output=True, text=True, timeout=300, env=env())
        assert r.returncode == 0, r.stderr
    return d


def tool(*args):
    r = subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def csv_column(path, name):
    with open(path) as f:
        return np.array([float(r[name]) for r in csv.DictReader(f)])


def same(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a[~np.isnan(a)], b[~np.isnan(b)])


def test_manifest_arrays_equal_the_shards_and_the_digest_equals_inspect(runs):
    for name in ("pilf", "pilf1", "dense"):
        snap = open_snapshot(str(runs / name))
        for r in range(snap.shards):  # the expert tensors, read through the manifest's virtual datasets
            with h5py.File(snap.shard_path(r), "r") as f:
                names = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                for n in names:
                    assert np.array_equal(snap.dataset(n), f[n][()]), n
        stacked = snap.experts("params")
        for (layer, fam), arr in stacked.items():
            for e in range(arr.shape[0]):
                assert np.array_equal(arr[e], snap.dataset(f"params/layers.{layer}.moe.experts.{e}.{fam}"))
        out = subprocess.run([BIN, "inspect", str(runs / name)], capture_output=True, text=True).stdout
        assert f"theta_sha256: {snap.theta_sha256()}" in out, (name, out[-500:])
    assert open_snapshot(str(runs / "pilf")).shards == 2 and open_snapshot(str(runs / "pilf1")).shards == 1
    # the layout comes from the manifest: 2 ranks and 1 rank read alike (and are bitwise one run)
    assert open_snapshot(str(runs / "pilf")).theta_sha256() == open_snapshot(str(runs / "pilf1")).theta_sha256()
    m = open_snapshot(str(runs / "pilf")).adam("m")
    assert set(m) == set(open_snapshot(str(runs / "pilf")).param_order)
    r = tool("snapshot", runs / "pilf", "--tensors")
    assert r.returncode == 0 and "2 shard file(s)" in r.stdout and "expert 3" in r.stdout, r.stderr


def test_run_snapshots_in_step_order_complete_ones_only(runs, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(runs / "pilf", run)
    shutil.copytree(run / "snapshots" / "step_00000120", run / "snapshots" / "step_00000150.tmp")  # being written
    steps = [s.step for s in open_run(str(run)).snapshots()]
    assert steps == [30, 60, 90, 120]


def test_curves_plot_the_csv_files(runs, tmp_path):
    rs = [open_run(str(runs / n)) for n in ("pilf", "dense")]
    (fig,), _ = figures.curves(rs, window=5)
    lines = plots.lines_by_gid(fig.fig)
    for n in ("pilf", "dense"):
        steps = csv_column(runs / n / "metrics.csv", "step")
        for col in ("loss", "acc"):
            x, y = lines[f"raw:{n}:{col}"]
            assert same(x, steps) and same(y, csv_column(runs / n / "metrics.csv", col))
            xs, ys = lines[f"smooth:{n}:{col}"]  # a trailing mean of 5: check one point by hand
            raw = csv_column(runs / n / "metrics.csv", col)
            assert abs(ys[20] - raw[16:21].mean()) < 1e-12
        with open(runs / n / "eval.csv") as f:
            ev = [r for r in csv.DictReader(f) if r["split"] == "heldout"]
        x, y = lines[f"eval:{n}:heldout"]
        assert same(x, [float(r["step"]) for r in ev]) and same(y, [float(r["acc"]) for r in ev])
    r = tool("curves", runs / "pilf", runs / "dense", "--out", tmp_path / "figs")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "figs" / "curves.png").stat().st_size > 5000


def test_pi_and_experts_plot_the_csv_files(runs, tmp_path):
    pilf = open_run(str(runs / "pilf"))
    figs, notes = figures.pi([pilf])
    lines = plots.lines_by_gid(figs[0].fig)
    for col in ("epsilon", "tau", "surprise", "pi", "gating_loss", "routing_acc"):
        assert same(lines[f"raw:pilf:{col}"][1], csv_column(runs / "pilf" / "metrics.csv", col)), col
    assert "raw:pilf:lr_mod_expert" not in lines and any("PILR off" in n for n in notes)  # constant 1: no panel
    figs, notes = figures.experts([pilf, open_run(str(runs / "dense"))])
    assert any("has no experts" in n for n in notes)  # dense: no empty expert figure
    lines = plots.lines_by_gid(figs[0].fig)
    for l in range(2):
        for e in range(4):
            c = f"tokens_l{l}_e{e}"
            assert same(lines[f"raw:pilf:{c}"][1], csv_column(runs / "pilf" / "metrics.csv", c))
    smk = [f for f in figs if f.name.startswith("smk-")]
    assert smk, [f.name for f in figs]
    images = {im.get_gid(): im.get_array() for ax in smk[0].fig.axes for im in ax.get_images()}
    mask = csv_column(runs / "pilf" / "metrics.csv", "smk_l0").astype(int)
    want = np.array([[(m >> e) & 1 for m in mask] for e in range(4)], float)  # 120 steps: one column each
    assert np.array_equal(np.asarray(images["smk:pilf:l0"]), want)
    for cmd in ("pi", "experts"):
        r = tool(cmd, runs / "pilf", runs / "dense", "--out", tmp_path / cmd)
        assert r.returncode == 0, r.stderr
        pngs = list((tmp_path / cmd).glob("*.png"))
        assert pngs and all(p.stat().st_size > 5000 for p in pngs)


def flat_from_shards(snapdir):
    """theta of a snapshot read without the toolkit: replicated tensors from the manifest file,
    expert tensors from the shard files themselves."""
    vals = {}
    with h5py.File(snapdir / "manifest.h5", "r") as f:
        order = f.attrs["param_order"]
        order = (order.decode() if isinstance(order, bytes) else str(order)).split()
        for n, ds in f["params"].items():
            if not ds.is_virtual:
                vals[n] = ds[()]
    for path in sorted(snapdir.glob("shard-*.h5")):
        with h5py.File(path, "r") as f:
            for n, ds in (f["params"].items() if "params" in f else []):
                vals[n] = ds[()]
    return np.concatenate([np.asarray(vals[n], np.float64).ravel() for n in order])


def test_trajectory_distances_and_pca(runs, tmp_path):
    figs, notes = figures.trajectory([open_run(str(runs / "pilf"))])
    names = [f.name for f in figs]
    assert names == ["trajectory-distance-pilf", "trajectory-experts-pilf", "trajectory-pca-pilf", "trajectory-cosine-pilf"]
    snaps = sorted((runs / "pilf" / "snapshots").glob("step_*"))
    X = [flat_from_shards(s) for s in snaps]
    lines = plots.lines_by_gid(figs[0].fig)
    x, y = lines["dist:pilf:total"]
    gating = [k for k in lines if k == "dist:pilf:GatingTransformer"]
    assert gating  # pilf's GatingTransformer is part of theta_t
    assert same(x, [30 * (i + 1) for i in range(1, len(snaps))])
    # the total includes the GatingTransformer: the model part alone is a lower bound
    model_only = [np.linalg.norm(b - a) for a, b in zip(X, X[1:])]
    assert all(t >= m * (1 - 1e-9) for t, m in zip(y, model_only))
    layer_parts = [lines[k][1] for k in lines if k.startswith("dist:pilf:") and k != "dist:pilf:total"]
    assert np.allclose(np.sqrt(np.sum(np.square(layer_parts), axis=0)), y, rtol=1e-6)
    cos = [im.get_array() for ax in figs[3].fig.axes for im in ax.get_images()][0]
    assert np.allclose(np.diag(cos), 1.0)
    r = tool("trajectory", runs / "pilf", runs / "dense", "--out", tmp_path / "t")
    assert r.returncode == 0 and "a trajectory needs 2" in r.stdout, r.stdout + r.stderr  # dense: one snapshot
    assert len(list((tmp_path / "t").glob("*.png"))) == 4


def test_marathon_runs_mark_tasks(runs, tmp_path):
    if not (runs / "mar").exists():
        pytest.skip("no Fashion-MNIST (dataset-fashion-mnist)")
    r = open_run(str(runs / "mar"))
    figs, _ = figures.trajectory([r])
    ax = [f for f in figs if f.name.startswith("trajectory-experts")][0].fig.axes[0]
    assert [t.get_text().split("\n")[1] for t in ax.get_xticklabels()] == ["task 1", "task 2", "task 3", "task 4"]  # steps 20-39 train task 1
    (fig,), _ = figures.curves([r])
    lines = plots.lines_by_gid(fig.fig)
    assert same(lines["marathon:mar:avg_acc"][1], csv_column(runs / "mar" / "marathon.csv", "avg_acc"))
    bounds = [l.get_xdata()[0] for a in fig.fig.axes for l in a.get_lines() if l.get_gid() == "task-boundary"]
    assert sorted(set(bounds)) == [20, 40, 60, 80, 100]
    res = tool("marathon", runs / "mar", "--markdown")
    assert res.returncode == 0 and res.stdout.startswith("| run | steps | cycles | task0"), res.stdout + res.stderr


def test_compare_table(runs, tmp_path):
    r = tool("compare", runs / "pilf", runs / "dense", "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "c" / "compare.csv")))
    assert [x["run"] for x in rows] == ["pilf", "dense"] and rows[0]["steps"] == "120 of 120"
    with open(runs / "dense" / "eval.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert rows[1]["held-out acc"].startswith(f"{float(last['acc']):.4g}")
    assert rows[0]["ranks x threads"] == "2 x 1 1" and rows[1]["ranks x threads"] == "1 x 1"
    assert all((tmp_path / "c" / f"compare-{k}.png").stat().st_size > 3000 for k in ("loss", "heldout", "throughput"))


class Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_report_opens_in_a_real_browser(runs, tmp_path):
    out = tmp_path / "report"
    names = [n for n in ("pilf", "dense", "moe", "gauss-moe", "mar") if (runs / n).exists()]  # every model
    r = tool("report", *[runs / n for n in names], "--out", out)
    assert r.returncode == 0, r.stderr
    page = (out / "index.html").read_text()
    p = Refs()
    p.feed(page)
    assert len([x for x in p.refs if x.endswith(".png")]) >= 10
    for ref in p.refs:  # every referenced file is there
        assert (out / ref).is_file(), ref
    for n in names:
        assert f"<td>{n}</td>" in page and "invocations" in page
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.skip("chromium not installed (cluster/setup.sh installs it)")
    probe = ('<script>window.addEventListener("load",function(){var r=[];for(var i of document.images)'
             'r.push(i.getAttribute("src")+" "+i.naturalWidth+" "+i.naturalHeight);var p=document.createElement("pre");'
             'p.id="imgcheck";p.textContent=r.join("\\n");document.body.appendChild(p);});</script>')
    (out / "_probe.html").write_text(page.replace("</body>", probe + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           (out / "_probe.html").as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="imgcheck">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stdout[-2000:] + res.stderr[-2000:]
    loaded = [l.split() for l in m.group(1).strip().splitlines()]
    assert len(loaded) == len([x for x in p.refs if x.endswith(".png")])
    assert all(int(w) > 0 and int(h) > 0 for _, w, h in loaded), loaded


def test_damaged_missing_and_unknown_snapshots_fail_with_one_line(runs, tmp_path):
    def copy(name):
        d = tmp_path / name
        shutil.copytree(runs / "pilf", d)
        return d, d / "snapshots" / "step_00000120"
    d, s = copy("damaged")
    shard = s / "shard-00001-of-00002.h5"
    b = bytearray(shard.read_bytes())
    b[len(b) // 2] ^= 0xFF
    shard.write_bytes(bytes(b))
    d2, s2 = copy("missing")
    (s2 / "shard-00000-of-00002.h5").unlink()
    d3, s3 = copy("unknown")
    with h5py.File(s3 / "manifest.h5", "a") as f:
        f.attrs["format"] = np.bytes_("hyperrnn-snapshot-v9")
    for path, why in ((d, "does not match the manifest"), (d2, "missing"), (d3, "unknown snapshot format")):
        with pytest.raises(AnalysisError, match=why):
            open_snapshot(str(path))
        for args in (["snapshot", path], ["trajectory", path, "--out", tmp_path / "t"]):
            r = tool(*args)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and why in lines[0], r.stderr


def test_bad_input_one_line_exit_2(runs, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(runs / "dense", empty)
    (empty / "metrics.csv").write_text("")
    torn = tmp_path / "torn"
    shutil.copytree(runs / "dense", torn)
    text = (torn / "metrics.csv").read_text()
    (torn / "metrics.csv").write_text(text[: len(text) // 2])  # cut mid-line
    cases = [
        (["curves", tmp_path, "--out", tmp_path / "o"], "not a hyperrnn run directory"),
        (["curves", tmp_path / "nope", "--out", tmp_path / "o"], "not a directory"),
        (["curves", empty, "--out", tmp_path / "o"], "is empty"),
        (["curves", torn, "--out", tmp_path / "o"], "a torn or truncated file"),
        (["curves", runs / "dense", "--out", tmp_path / "no" / "such"], "parent directory"),
        (["curves", runs / "dense"], "required: --out"),
        (["curves", runs / "dense", "--out", tmp_path / "o", "--smooth", "abc"], "not an integer"),
        (["trajectory", runs / "dense", "--out", tmp_path / "o", "--max-snapshots", "-3"], "at least 1"),
        (["pilf-windows", runs / "dense", "--windows", "0"], "at least 1"),
        (["snapshot", tmp_path], "not a snapshot"),
        (["frobnicate"], "invalid choice"),
    ]
    for args, why in cases:
        r = tool(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and why in lines[0], (args, r.stderr)
    assert tool("--help").returncode == 0 and "report" in tool("--help").stdout
    for cmd in ("curves", "pi", "experts", "trajectory", "compare", "report", "snapshot", "marathon", "pilf-windows"):
        h = tool(cmd, "--help")
        desc = re.split(r"\n(?:positional arguments|options):", h.stdout)[0].split("\n\n", 1)[1]
        assert h.returncode == 0 and desc.rstrip().endswith("."), (cmd, h.stdout)  # whole sentences, none cut


def test_a_run_in_progress_reads_its_finished_rows(runs, tmp_path):
    run = tmp_path / "going"
    shutil.copytree(runs / "dense", run)
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text + "61,3.1")  # a row being written
    assert tool("curves", run, "--out", tmp_path / "o").returncode == 2  # no writer: a torn file
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what hyperrnn's RunLock holds (in another process here)
    try:
        r = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                            "from hyperrnn_analysis import open_run; r = open_run(sys.argv[2]);"
                            "print(r.writing, len(r.metrics))", str(ROOT / "analysis"), str(run)],
                           capture_output=True, text=True)
        assert r.stdout.split() == ["True", "60"], r.stdout + r.stderr
    finally:
        os.close(fd)


def test_pilf_windows_and_smk_coverage(tmp_path):
    head = "step,loss,skipped,pi,lr_mod_expert,gating_loss,tokens_l0_e0,tokens_l0_e1,tokens_l0_e2,smk_l0\n"
    rows = ["1,4.0,0,0.1,0.5,nan,10,30,0,1\n",      # keeps expert 0: 10 of 40 tokens
            "2,2.0,0,0.3,0.7,1.5,20,20,0,3\n",      # keeps 0 and 1: all 40
            "3,9.9,1,0.0,0.0,nan,40,0,0,1\n",       # skipped: ignored
            "4,1.0,0,0.5,0.9,0.5,0,10,30,4\n"]      # keeps 2: 30 of 40
    (tmp_path / "metrics.csv").write_text(head + "".join(rows))
    r = tool("pilf-windows", tmp_path, "--windows", "1")
    assert r.returncode == 0, r.stderr
    header, line = r.stdout.strip().splitlines()
    vals = dict(zip(header.split("\t"), line.split("\t")))
    assert vals["steps"] == "1-4"
    assert abs(float(vals["loss"]) - (4.0 + 2.0 + 1.0) / 3) < 1e-3  # printed to 4 significant digits
    assert float(vals["gating_loss"]) == 1.0  # nan rows are left out of the mean
    assert abs(float(vals["smk_coverage_l0"]) - (0.25 + 1.0 + 0.75) / 3) < 1e-4


def test_marathon_table(tmp_path):
    (tmp_path / "pilf").mkdir()
    rows = [(10, 0, 0, 0.9, "nan", 0.9, 0), (20, 0, 1, 0.7, 0.8, 0.75, 0.2), (30, 1, 0, 0.95, 0.6, 0.775, 0.2)]
    (tmp_path / "pilf" / "marathon.csv").write_text("step,cycle,task,acc_task0,acc_task1,avg_acc,avg_forgetting\n" +
                                                    "".join(",".join(map(str, r)) + "\n" for r in rows))
    r = tool("marathon", tmp_path / "pilf", "--markdown")
    assert r.returncode == 0, r.stderr
    line = [l for l in r.stdout.splitlines() if l.startswith("| pilf")][0]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["pilf", "30", "2", "0.950", "0.600", "0.775", "0.200", f"{(0 + 0.2 + 0.2) / 3:.3f}"]
    r = tool("marathon", tmp_path / "nope")
    assert r.returncode == 2 and "not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_comparison_tokens_budget_sets_steps_per_cell(tmp_path):
    """`tokens = N`: every MQAR run of a cell runs ceil(N / (batch x seq-len)) steps, batch from the
    study's options (which override the configuration's); `steps` and `tokens` together are refused."""
    (tmp_path / "compare-mqar-dense.ini").write_text("model = dense\ntask = mqar\nvocab = 300\nbatch = 32\n")
    (tmp_path / "compare-mqar-rwkv7.ini").write_text("model = rwkv7\ntask = mqar\nvocab = 300\nhead-size = 16\n")
    study = tmp_path / "study-compare-t.ini"
    base = "kind = compare\nmodels = dense rwkv7\ncells = 64:4 100:8 256:16\nd-models = 32\nlrs = 1e-3 1e-2\n"
    for opts, batch in (("", {"dense": 32, "rwkv7": 64}), ("options = --batch 48\n", {"dense": 48, "rwkv7": 48})):
        study.write_text(base + "tokens = 100000\n" + opts)
        r = tool("study-plan", study, "--out", tmp_path / "o")
        assert r.returncode == 0, r.stderr
        runs = [l.split() for l in r.stdout.splitlines() if l and not l.startswith("#")]
        assert len(runs) == 2 * 3 * 2
        for w in runs:
            L, m = int(w[w.index("--seq-len") + 1]), w[0].split("/")[1].split("-L")[0]
            steps = int(w[w.index("--steps") + 1])
            assert steps == -(-100000 // (batch[m] * L)), (w, batch[m])  # the rwkv7 config leaves batch at 64
            assert steps * batch[m] * L >= 100000 > (steps - 1) * batch[m] * L
    study.write_text(base + "tokens = 100000\nsteps = 10\n")
    r = tool("study-plan", study, "--out", tmp_path / "o")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "'steps' or 'tokens', not both" in lines[0], r.stderr
