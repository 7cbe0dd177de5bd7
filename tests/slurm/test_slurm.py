"""jobs/train.sbatch against a real single-node Slurm (cluster/slurm-up.sh, brought up by this
module and brought down after it): a job completes; a preempted job (scancel --signal) writes a
snapshot, requeues itself and ends with the same theta as an uninterrupted run; a job whose --time
runs out mid-run requeues from its snapshot and finishes; the requeue limit ends a job as FAILED;
bad input fails fast with one line and touches nothing; bring-up is idempotent and restartable
and no daemon is left behind."""
import csv
import hashlib
import os
import re
import shutil
import statistics
import sys
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "jobs" / "train.sbatch"
CLUSTER = ROOT / "cluster"
BIN = os.environ.get("HYPERRNN_BIN")
DAEMONS = ("slurmctld", "slurmd", "slurmstepd", "munged")

# A model small enough for ~500 steps/s on one core: runs of 10-50 s, long enough to be signalled.
TINY = """model = gauss-moe
d-model = 32
layers = 1
heads = 2
experts = 4
top-k = 2
vocab = 40
seq-len = 32
kv-pairs = 2
batch = 16
shards = 2
steps = {steps}
eval-every = 0
eval-samples = 16
snapshot-every = {every}
"""


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def daemons():
    # one name per pgrep: it matches nothing for a pattern over 15 characters (the comm length)
    return [l for d in DAEMONS for l in run(["pgrep", "-x", "-l", d]).stdout.splitlines()]


def settled_daemons(timeout=15):
    """daemons() once two reads a second apart agree (a daemon that has just been started may still
    show its forking parent)."""
    prev = sorted(daemons())
    for _ in range(timeout):
        time.sleep(1)
        cur = sorted(daemons())
        if cur == prev:
            return cur
        prev = cur
    return prev


def names(procs):
    return sorted({p.split()[1] for p in procs})


def status_ok():
    return run(["bash", str(CLUSTER / "slurm-status.sh")]).returncode == 0


@pytest.fixture(scope="module")
def slurm():
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    if os.geteuid() != 0:
        pytest.skip("bringing up Slurm needs root")
    for b in ("slurmctld", "slurmd", "munged", "sbatch"):
        if not shutil.which(b) and not Path("/usr/sbin", b).exists():
            pytest.skip(f"{b} not installed (cluster/setup.sh installs slurm-wlm and munge)")
    was_up = status_ok()  # a developer's running dev cluster is left running afterwards
    running_before = names(daemons())  # e.g. a system munged, not ours to stop
    r = run(["bash", str(CLUSTER / "slurm-up.sh")], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    yield
    if not was_up:
        r = run(["bash", str(CLUSTER / "slurm-down.sh")], timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert names(daemons()) == running_before, "daemons left running: %s" % daemons()


def job_env(**extra):
    e = dict(os.environ, HYPERRNN_BIN=BIN, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    e.update(extra)
    return {k: v for k, v in e.items() if v is not None}


def submit(tmp, sbatch_opts, *args, env=None):
    r = run(["sbatch", "--parsable", "-o", "job-%j.out", *sbatch_opts, str(SCRIPT), *args], cwd=tmp,
            env=env or job_env())
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def job(jid):
    out = run(["scontrol", "show", "job", "-o", jid]).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def wait(jid, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        j = job(jid)
        if j.get("JobState") in FINAL:
            return j
        time.sleep(0.5)
    run(["scancel", jid])
    raise AssertionError(f"job {jid} not finished after {timeout} s: {job(jid)}")


def wait_rows(path, rows, jid, timeout=120):
    t0 = time.time()
    while not path.exists() or len(path.read_text().splitlines()) < rows + 1:
        assert time.time() - t0 < timeout and job(jid).get("JobState") in ("PENDING", "RUNNING"), job(jid)
        time.sleep(0.2)


def theta_sha(run_dir):
    out = run([BIN, "inspect", str(run_dir)]).stdout
    m = re.search(r"^theta_sha256: ([0-9a-f]{64})$", out, re.M)
    assert m, out[-2000:]
    return m.group(1)


def steps_column(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if not k.endswith(("_s", "_per_s"))} for r in csv.DictReader(f)]


def events(run_dir):
    return list(csv.DictReader(open(run_dir / "logs" / "events.csv")))


def config(tmp, steps, every=0, name="tiny.ini"):
    p = tmp / name
    p.write_text(TINY.format(steps=steps, every=every))
    return p


def test_quick_start_config_is_the_embedded_default(tmp_path):
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--steps", "1", "--eval-every", "0", "--threads", "1"]
    assert run([BIN, "train", *common, "--out", str(a)]).returncode == 0
    assert run([BIN, "train", "--config", str(ROOT / "jobs/configs/quick-start.ini"), *common,
                "--out", str(b)]).returncode == 0
    assert (a / "config.ini").read_text() == (b / "config.ini").read_text()


def test_bring_up_twice_and_again_after_down(slurm):
    before = settled_daemons()
    r = run(["bash", str(CLUSTER / "slurm-up.sh")])
    assert r.returncode == 0 and "is up" in r.stdout, r.stdout + r.stderr
    after = settled_daemons()
    # the second bring-up started nothing new: every daemon is one of before's, none is missing;
    # before may also hold munged's exited forking parent (seen twice in CI, gone later)
    assert set(after) <= set(before) and names(after) == names(before), (before, after)
    assert status_ok()
    r = run(["bash", str(CLUSTER / "slurm-down.sh")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert daemons() == [] and not status_ok()
    r = run(["bash", str(CLUSTER / "slurm-down.sh")])  # down twice: nothing to do
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(["bash", str(CLUSTER / "slurm-up.sh")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert status_ok()


def test_job_completes(slurm, tmp_path):
    cfg = config(tmp_path, 300, every=100)
    jid = submit(tmp_path, [], str(cfg), "--threads", "1")
    j = wait(jid, 120)
    log = (tmp_path / f"job-{jid}.out").read_text()
    assert j["JobState"] == "COMPLETED" and j["ExitCode"] == "0:0" and j["Restarts"] == "0", log
    run_dir = tmp_path / "runs" / f"slurm-{jid}"  # named from the job id
    assert steps_column(run_dir) == list(range(1, 301))
    assert (run_dir / "snapshots" / "latest").read_text().strip() == "step_00000300"
    inv = list(csv.DictReader(open(run_dir / "logs" / "invocations.csv")))
    assert len(inv) == 1 and inv[0]["slurm_job_id"] == jid and inv[0]["host"], inv
    # what it ran on: ranks, threads, BLAS with its kernel, MPI, compiler, git revision
    i = inv[0]
    assert i["ranks"] == "1" and i["threads_per_rank"] == "1" and "OpenBLAS" in i["blas"] and i["mpi"], i
    assert i["compiler"].split()[0] in ("GCC", "Clang") and i["code_version"].startswith("hyperrnn "), i
    assert "train.sbatch: finished" in log, log


def test_array_tasks_are_named_runs_with_their_seeds(slurm, tmp_path):
    cfg = config(tmp_path, 50)
    jid = submit(tmp_path, ["--array=1-2", "-J", "sweep", "-o", "job-%A_%a.out"], str(cfg), "--threads", "1")
    for task in (1, 2):
        j = wait(f"{jid}_{task}", 120)
        assert j["JobState"] == "COMPLETED", (tmp_path / f"job-{jid}_{task}.out").read_text()
        ini = (tmp_path / "runs" / f"sweep-{task}" / "config.ini").read_text()
        assert f"\nseed = {task}\n" in ini
        inv = list(csv.DictReader(open(tmp_path / "runs" / f"sweep-{task}" / "logs" / "invocations.csv")))
        assert inv[0]["slurm_array_task_id"] == str(task)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The preemption tests' reference: the same run without Slurm, on one rank."""
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    tmp = tmp_path_factory.mktemp("whole")
    r = run([BIN, "train", "--config", str(config(tmp, 10000)), "--threads", "1", "--out", str(tmp / "run")],
            timeout=300)
    assert r.returncode == 0, r.stderr
    return tmp / "run"


@pytest.mark.parametrize("launcher,how", [("srun", []), ("mpirun", ["--batch"])])
def test_preemption_requeues_and_resumes_bitwise(slurm, uninterrupted, tmp_path, launcher, how):
    cfg = config(tmp_path, 10000)
    jid = submit(tmp_path, ["-n", "2"], str(cfg), "--threads", "1", "--out", str(tmp_path / "run"),
                 env=job_env(HYPERRNN_LAUNCHER=launcher))
    wait_rows(tmp_path / "run" / "metrics.csv", 1500, jid)
    # srun: the signal goes to the job's steps (the ranks); mpirun: to the batch script, which passes it on
    r = run(["scancel", "--signal=USR2", *how, jid])
    assert r.returncode == 0, r.stderr
    j = wait(jid, 240)
    log = (tmp_path / f"job-{jid}.out").read_text()
    assert j["JobState"] == "COMPLETED" and j["Restarts"] == "1", log
    assert "requeueing job" in log and f"via {launcher}" in log, log
    ev = events(tmp_path / "run")
    assert [e["event"] for e in ev] == ["start", "stop", "resume", "complete"], ev
    assert "SIGUSR2" in ev[1]["detail"] and ev[1]["step"] == ev[2]["step"] and 1500 <= int(ev[1]["step"]) < 10000
    assert theta_sha(tmp_path / "run") == theta_sha(uninterrupted)
    assert metrics(tmp_path / "run") == metrics(uninterrupted)
    inv = list(csv.DictReader(open(tmp_path / "run" / "logs" / "invocations.csv")))
    assert [r["slurm_job_id"] for r in inv] == [jid, jid] and [r["slurm_restart_count"] for r in inv] == ["-", "1"]


def test_cancel_writes_a_snapshot_and_is_not_requeued(slurm, tmp_path):
    cfg = config(tmp_path, 100000)
    jid = submit(tmp_path, [], str(cfg), "--threads", "1", "--out", str(tmp_path / "run"))
    wait_rows(tmp_path / "run" / "metrics.csv", 500, jid)
    assert run(["scancel", jid]).returncode == 0
    j = wait(jid, 120)
    time.sleep(2)  # the script's last line may follow the state change
    log = (tmp_path / f"job-{jid}.out").read_text()
    assert j["JobState"] == "CANCELLED" and j["Restarts"] == "0", log
    assert "not requeued" in log and (tmp_path / "run" / "snapshots" / "latest").exists(), log
    assert [e["event"] for e in events(tmp_path / "run")] == ["start", "stop"]


def test_time_limit_requeues_from_the_snapshot_and_finishes(slurm, tmp_path):
    # --time=1: each leg ends within its minute, by the time-limit signal (asked for 10 s before
    # the end; Slurm's 30 s timer sends it 10-60 s early) or by hyperrnn's own end-time budget,
    # whichever comes first. The step count is sized on this machine's measured speed to about
    # 80 s of compute, so that it needs at least two legs however fast the build (a fixed 25000
    # steps stopped needing two once the elementwise kernels were vectorised).
    calib = tmp_path / "calib"
    t0 = time.monotonic()
    assert run([BIN, "train", "--config", str(config(tmp_path, 3000, name="calib.ini")), "--threads", "1",
                "--eval-every", "0", "--snapshot-every", "0", "--out", str(calib)]).returncode == 0
    per_step = (time.monotonic() - t0) / 3000
    steps = max(25000, int(80.0 / per_step))
    cfg = config(tmp_path, steps)
    jid = submit(tmp_path, ["--time=1", "--signal=B:USR2@10"], str(cfg), "--threads", "1",
                 "--out", str(tmp_path / "run"))
    j = wait(jid, 600)
    log = (tmp_path / f"job-{jid}.out").read_text()
    assert j["JobState"] == "COMPLETED" and int(j["Restarts"]) >= 1, log
    ev = events(tmp_path / "run")
    stops = [e for e in ev if e["event"] == "stop"]
    assert len(stops) == int(j["Restarts"]) and ev[-1]["event"] == "complete", ev
    assert all("SIGUSR2" in e["detail"] or "time budget" in e["detail"] for e in stops), stops
    # every step once, in order, across the legs
    assert steps_column(tmp_path / "run") == list(range(1, steps + 1))


def test_requeue_limit_ends_the_job_as_failed(slurm, tmp_path):
    cfg = config(tmp_path, 100000)
    jid = submit(tmp_path, [], str(cfg), "--threads", "1", "--time-budget", "4", "--out", str(tmp_path / "run"),
                 env=job_env(HYPERRNN_MAX_REQUEUES="1"))
    j = wait(jid, 180)
    log = (tmp_path / f"job-{jid}.out").read_text()
    assert j["JobState"] == "FAILED" and j["Restarts"] == "1" and j["ExitCode"] == "1:0", log
    line = [l for l in log.splitlines() if "HYPERRNN_MAX_REQUEUES=1 is reached" in l]
    assert len(line) == 1 and "not requeued" in line[0], log
    time.sleep(15)  # longer than the requeue delay: nothing comes back
    assert job(jid)["JobState"] == "FAILED" and job(jid)["Restarts"] == "1"


def tree(d):
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["missing config", "unknown key", "ranks over shards", "another run's dir",
                                  "no binary", "bad binary"])
def test_bad_input_fails_fast_with_one_line(slurm, tmp_path, case):
    other = tmp_path / "other"  # an earlier run, of another configuration
    r = run([BIN, "train", "--config", str(config(tmp_path, 20, name="other.ini")), "--d-model", "16", "--threads", "1",
             "--out", str(other)])
    assert r.returncode == 0, r.stderr
    before = tree(tmp_path)
    cfg, opts, env, args, want = str(config(tmp_path, 20)), [], job_env(), ["--threads", "1"], ""
    if case == "missing config":
        cfg, want = "nothere.ini", "config file"
    elif case == "unknown key":
        Path(cfg).write_text(TINY.format(steps=20, every=0) + "no-such-key = 1\n")
        want = "unrecognised option 'no-such-key'"
    elif case == "ranks over shards":
        Path(cfg).write_text(TINY.format(steps=20, every=0).replace("shards = 2", "shards = 1"))
        opts, want = ["-n", "2"], "the 2 ranks must divide the 1 shards"
    elif case == "another run's dir":
        args, want = args + ["--out", str(other)], "already holds a different run"
    elif case == "no binary":
        env, want = job_env(HYPERRNN_BIN=None, PATH="/usr/bin:/bin"), "hyperrnn not found"
    else:
        env, want = job_env(HYPERRNN_BIN=str(tmp_path / "nothere")), "is not an executable file"
    before = tree(tmp_path)
    t0 = time.time()
    jid = submit(tmp_path, opts, cfg, *args, env=env)
    j = wait(jid, 60)
    lines = (tmp_path / f"job-{jid}.out").read_text().splitlines()
    assert j["JobState"] == "FAILED" and j["Restarts"] == "0", lines
    assert len(lines) == 1 and lines[0].startswith("train.sbatch: error: ") and want in lines[0], lines
    assert lines[0].endswith("not requeued"), lines
    assert time.time() - t0 < 30
    after = tree(tmp_path)
    del after[f"job-{jid}.out"]
    assert after == before  # no earlier run's file touched, nothing new written
    time.sleep(1)
    assert job(jid)["JobState"] == "FAILED" and job(jid)["Restarts"] == "0"


# --- scaling studies (jobs/submit-study.sh) --------------------------------------------------------
HELPER = ROOT / "jobs" / "submit-study.sh"
STUDY = """kind = weak
config = {config}
ranks = 1 2
steps = 60
warmup = 10
batch-per-rank = 16
shards-per-rank = 2
"""


def study_file(tmp, **kw):
    cfg = tmp / "model.ini"
    cfg.write_text("model = gauss-moe\nd-model = 32\nlayers = 1\nheads = 2\nexperts = 4\ntop-k = 2\nvocab = 40\n"
                   "seq-len = 32\nkv-pairs = 2\n" + kw.pop("model_extra", ""))
    text = STUDY.format(config=cfg)
    for k, v in kw.items():
        text = re.sub(rf"^{k} = .*$", f"{k} = {v}", text, flags=re.M) if re.search(rf"^{k} = ", text, re.M) \
            else text + f"{k} = {v}\n"
    p = tmp / "study.ini"
    p.write_text(text)
    return p


def submit_study(tmp, study, *extra, env_extra=None):
    r = run(["bash", str(HELPER), str(study), "--out", str(tmp / "study"), *extra], cwd=tmp, env=job_env(**(env_extra or {})))
    ids = dict(re.findall(r"^submit-study.sh: (?:point )?(\S+).*?: job (\d+)", r.stdout, re.M))
    return r, ids


def median_after(path, col, skip):
    with open(path) as f:
        vals = [float(row[col]) for row in csv.DictReader(f)][skip:]
    return statistics.median(vals)


def test_weak_study_through_the_helper(slurm, tmp_path):
    r, ids = submit_study(tmp_path, study_file(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(ids) >= {"P1-T1", "P2-T1", "analysis"}, r.stdout
    j = wait(ids["analysis"], 300)
    out = tmp_path / "study"
    assert j["JobState"] == "COMPLETED", (out / "logs").glob("analysis-*.out")
    rows = {row["P"]: row for row in csv.DictReader(open(out / "study.csv"))}
    assert set(rows) == {"1", "2"} and all(row["status"] == "ok" for row in rows.values())
    for P, row in rows.items():
        run_dir = out / "points" / f"P{P}-T1"
        # the CSV's figures are the runs' timing.csv and metrics.csv medians (after the warm-up rows)
        assert float(row["step_time_s"]) == pytest.approx(median_after(run_dir / "timing.csv", "step_time_s", 10), rel=1e-5)
        assert float(row["tokens_per_s"]) == pytest.approx(median_after(run_dir / "metrics.csv", "tokens_per_s", 10), rel=1e-5)
        assert float(row["dispatch_s"]) == pytest.approx(median_after(run_dir / "timing.csv", "dispatch_s", 10), rel=1e-5, abs=1e-12)
    eff = float(rows["1"]["step_time_s"]) / float(rows["2"]["step_time_s"])
    assert float(rows["2"]["efficiency"]) == pytest.approx(eff, rel=1e-4)
    assert rows["2"]["predicted_step_time_s"] and rows["2"]["prediction_error"]
    for png in ("study-scaling", "study-phases", "study-model"):
        assert (out / f"{png}.png").stat().st_size > 5000
    assert "efficiency >= 0.8 up to P =" in (out / "model.md").read_text()
    assert (out / "comm" / "P2.csv").read_text().startswith("op,ranks,bytes,seconds")


def test_a_failed_point_is_marked_and_the_analysis_completes(slurm, tmp_path):
    r, ids = submit_study(tmp_path, study_file(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert run(["scancel", ids["P2-T1"]]).returncode == 0  # it waits behind P1 (singleton): cancelled before it runs
    j = wait(ids["analysis"], 300)
    assert j["JobState"] == "COMPLETED"
    rows = {row["P"]: row for row in csv.DictReader(open(tmp_path / "study" / "study.csv"))}
    assert rows["1"]["status"] == "ok" and rows["2"]["status"] == "failed" and rows["2"]["step_time_s"] == ""
    sys.path.insert(0, str(ROOT / "analysis"))
    from hyperrnn_analysis import study
    _, figs = study.analyse(str(tmp_path / "study"), keep_figures=True)
    marks = [l.get_gid() for ax in figs["study-scaling"].axes for l in ax.get_lines() if (l.get_gid() or "").startswith("failed:")]
    assert "failed:P2-T1" in marks
    texts = [t.get_gid() for ax in figs["study-phases"].axes for t in ax.texts]
    assert "failed:P2 T1" in texts


@pytest.mark.parametrize("change,why", [
    ({"ranks": ""}, "'ranks' is empty"),
    ({"kind": "strong", "ranks": "1 3", "model_extra": "batch = 16\nshards = 2\n"}, "P = 3 does not divide the 2 shards"),
    ({"ranks": "1 8"}, "P = 8 exceeds the config's 4 experts"),
    ({"model_extra": "model = transformer\n"}, "unknown model 'transformer'"),
])
def test_study_bad_input_submits_nothing(slurm, tmp_path, change, why):
    refused_before_submitting(tmp_path, study_file(tmp_path, **change), why)


def refused_before_submitting(tmp_path, study, why):
    """The helper refuses the study with one line and exit 2, submitting nothing, writing nothing."""
    before = run(["squeue", "-h", "-o", "%i"]).stdout
    r, ids = submit_study(tmp_path, study)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and why in lines[0], r.stdout + r.stderr
    assert ids == {} and not (tmp_path / "study").exists()
    assert sorted(run(["squeue", "-h", "-o", "%i"]).stdout.split()) == sorted(before.split())


# --- the comparison study (kind = compare; issue 18) -----------------------------------------------
TOY_MQAR = {"gauss-moe": "model = gauss-moe\nd-model = 32\nlayers = 1\nheads = 2\nexperts = 4\ntop-k = 2\nd-ff = 32\n",
            "rwkv7": "model = rwkv7\nlayers = 1\nhead-size = 16\nchannel-mix = false\n"}
TOY_MARATHON = ("task = fmnist-marathon\nd-model = 16\nlayers = 1\npatch = 7\nbatch = 16\nsteps = 12\ntask-steps = 6\n"
                "classes-per-task = 5\nmarathon-head = task\neval-every = 0\neval-samples = 40\n")


def compare_study(tmp, **kw):
    """A toy comparison: two cells, two MQAR models, one learning rate; a two-seed marathon of both."""
    for name, text in TOY_MQAR.items():
        (tmp / f"compare-mqar-{name}.ini").write_text(text + "task = mqar\nvocab = 64\nbatch = 16\nwarmup = 0\n")
    (tmp / "compare-marathon-gauss-moe.ini").write_text("model = gauss-moe\nheads = 2\nexperts = 4\ntop-k = 2\nd-ff = 16\n"
                                                        + TOY_MARATHON)
    (tmp / "compare-marathon-rwkv7.ini").write_text("model = rwkv7\nhead-size = 16\nvit-pool = mean\n" + TOY_MARATHON)
    st = {"kind": "compare", "models": "gauss-moe rwkv7", "cells": "16:2 32:4", "d-models": "32", "lrs": "3e-3",
          "seeds": "1", "steps": "12", "eval-samples": "64", "marathon-models": "gauss-moe rwkv7", "marathon-seeds": "1 2"}
    st.update(kw)
    p = tmp / "study-compare-toy.ini"
    p.write_text("".join(f"{k} = {v}\n" for k, v in st.items()))
    return p


def test_comparison_study_through_the_helper(slurm, tmp_path):
    # every job is submitted held; one MQAR run is then cancelled before it starts, the rest released
    r, _ = submit_study(tmp_path, compare_study(tmp_path), env_extra={"HYPERRNN_SBATCH_OPTS": "--hold"})
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = dict(re.findall(r"^submit-study.sh: run (\S+): job (\d+)$", r.stdout, re.M))
    analysis = re.search(r"^submit-study.sh: analysis: job (\d+)", r.stdout, re.M).group(1)
    assert len(jobs) == 8, r.stdout  # 2 cells x 2 models + 2 models x 2 seeds
    doomed = "mqar/rwkv7-L32-D4-d32-lr0.003-s1"
    assert run(["scancel", jobs[doomed]]).returncode == 0
    for n, jid in jobs.items():
        if n != doomed:
            assert run(["scontrol", "release", jid]).returncode == 0
    assert run(["scontrol", "release", analysis]).returncode == 0
    j = wait(analysis, 400)
    out = tmp_path / "study"
    assert j["JobState"] == "COMPLETED", [p.read_text() for p in (out / "logs").glob("analysis-*.out")]
    rows = list(csv.DictReader(open(out / "study.csv")))
    assert len(rows) == 8  # a failed run is kept, not dropped
    by = {r["run"]: r for r in rows}
    assert by["runs/" + doomed]["status"] == "failed" and by["runs/" + doomed]["accuracy"] == ""
    for r in rows:
        if r["run"] == "runs/" + doomed:
            continue
        assert r["status"] == "ok", r
        d = out / r["run"]
        if r["part"] == "mqar":  # the CSV's figure is the run's final held-out evaluation, exactly
            ev = [e for e in csv.DictReader(open(d / "eval.csv")) if e["split"] == "heldout"]
            assert int(ev[-1]["step"]) == 12 and float(r["accuracy"]) == pytest.approx(float(ev[-1]["acc"]), rel=1e-5, abs=1e-9)
        else:
            mar = list(csv.DictReader(open(d / "marathon.csv")))
            assert float(r["avg_forgetting"]) == pytest.approx(float(mar[-1]["avg_forgetting"]), rel=1e-5, abs=1e-9)
        cost = next(csv.DictReader(open(d / "model.csv")))
        assert float(r["model_flops_per_token"]) == pytest.approx(float(cost["model_flops_per_token"]), rel=1e-5)
        assert float(r["parameters"]) == float(cost["parameters"]) > 0
    # memory per sequence: rwkv7's state (1 layer: 2 heads x 16^2 + the token shift 32) against the
    # MoE's KV cache (2 x 1 layer x seq-len x 32)
    mem = {(r["model"], r["seq_len"]): float(r["memory_floats_per_sequence"]) for r in rows if r["part"] == "mqar" and r["status"] == "ok"}
    assert mem[("rwkv7", "16")] == 2 * 16 * 16 + 32 and mem[("gauss-moe", "32")] == 2 * 1 * 32 * 32
    best = {(b["model"], b["seq_len"]): b for b in csv.DictReader(open(out / "best.csv"))}
    assert best[("rwkv7", "32")]["status"] == "failed" and best[("gauss-moe", "32")]["status"] == "ok"
    mar = {m["model"]: m for m in csv.DictReader(open(out / "marathon.csv"))}
    assert set(mar) == {"gauss-moe", "rwkv7"} and all(m["seeds"] == "2" and m["accuracy_ci95"] != "" for m in mar.values())
    for png in ("comparison-accuracy", "comparison-memory", "comparison-cost", "comparison-forgetting"):
        assert (out / f"{png}.png").stat().st_size > 5000
    page = (out / "index.html").read_text()
    assert "comparison-memory.png" in page and "failed" in page
    # one run again from its line in commands.sh: the same theta, bitwise
    line = next(l for l in (out / "commands.sh").read_text().splitlines() if "mqar/gauss-moe-L16-D2" in l)
    again = tmp_path / "again"
    cmd = line.replace(str(out / "runs" / "mqar" / "gauss-moe-L16-D2-d32-lr0.003-s1"), str(again))
    assert str(again) in cmd
    r2 = run(["bash", "-c", cmd], env=job_env(PATH=f"{Path(BIN).parent}:{os.environ['PATH']}"))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert theta_sha(again) == theta_sha(out / "runs" / "mqar" / "gauss-moe-L16-D2-d32-lr0.003-s1")


@pytest.mark.parametrize("change,why", [
    ({"cells": "16:2 16:8"}, "8 kv-pairs do not fit seq-len 16"),
    ({"models": "gauss-moe transformer"}, "unknown model 'transformer'"),
    ({"lrs": ""}, "the learning-rate sweep is empty"),
])
def test_comparison_bad_input_submits_nothing(slurm, tmp_path, change, why):
    refused_before_submitting(tmp_path, compare_study(tmp_path, **change), why)
