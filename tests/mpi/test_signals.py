"""Stop signals (SIGTERM, SIGINT, --stop-signal) to a bare `hyperrnn train`, on 1 and 2 ranks: the
run finishes its step, writes a snapshot and exits 75 ("stopped early, resumable"); a signal to
one rank of two stops both after the same step; `--resume auto` then reproduces the uninterrupted
run bit for bit."""
import csv
import os
import signal
import subprocess
import time

import pytest

BIN = os.environ.get("HYPERRNN_BIN")
MPIEXEC = os.environ.get("HYPERRNN_MPIEXEC", "mpiexec")
ARGS = ["--model", "gauss-moe", "--d-model", "16", "--layers", "1", "--heads", "2", "--experts", "4", "--top-k", "2",
        "--vocab", "40", "--seq-len", "16", "--kv-pairs", "2", "--batch", "8", "--shards", "2", "--steps", "6000",
        "--eval-every", "0", "--eval-samples", "16", "--threads", "1"]


def env():
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def cmd(ranks, out, *extra):
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    launch = [MPIEXEC, "--oversubscribe", "-n", str(ranks)] if ranks > 1 else []
    base = ARGS
    if "--steps" in extra:  # the caller's step count replaces ARGS'
        i = ARGS.index("--steps")
        base = ARGS[:i] + ARGS[i + 2:]
    return [*launch, BIN, "train", *base, "--out", str(out), *extra]


def metrics(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if not k.endswith(("_s", "_per_s"))} for r in csv.DictReader(f)]


def rank_pids(parent):
    """The hyperrnn processes below mpiexec (or the process itself)."""
    out = subprocess.run(["pgrep", "-f", "-P", str(parent), "hyperrnn"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


@pytest.mark.parametrize("ranks,sig,to", [(1, signal.SIGTERM, "rank"), (1, signal.SIGINT, "rank"),
                                         (2, signal.SIGTERM, "rank"), (2, signal.SIGINT, "rank"),
                                         (2, signal.SIGUSR2, "rank"), (2, signal.SIGUSR2, "mpiexec")])
def test_stop_signal_snapshot_and_bitwise_resume(tmp_path, ranks, sig, to):
    """`to`: one rank, or mpiexec itself (OpenMPI passes SIGUSR1/2 on to every rank; SIGTERM and
    SIGINT it answers by killing the ranks a few seconds later, so only the stop signal is sent
    to it: what jobs/train.sbatch does)."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    r = subprocess.run(cmd(ranks, whole), capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 0, r.stderr[-2000:]
    p = subprocess.Popen(cmd(ranks, stopped), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    t0 = time.time()
    while not (stopped / "metrics.csv").exists() or len((stopped / "metrics.csv").read_text().splitlines()) < 50:
        assert time.time() - t0 < 60 and p.poll() is None
        time.sleep(0.05)
    if ranks == 1 or to == "mpiexec":
        p.send_signal(sig)
    else:  # one rank only: the other learns it from the agreement after the step
        pids = rank_pids(p.pid)
        assert len(pids) == 2, pids
        os.kill(pids[-1], sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 75, (p.returncode, err[-2000:])
    line = [l for l in out.splitlines() if l.startswith("stopping after step")]
    assert len(line) == 1 and "with snapshot" in line[0] and "--resume auto" in line[0], out[-2000:]
    assert (stopped / "snapshots" / "latest").exists()
    r = subprocess.run(cmd(ranks, stopped, "--resume", "auto"), capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert metrics(stopped / "metrics.csv") == metrics(whole / "metrics.csv")
    # provenance: each start, stop (with its reason) and resume, and what each invocation ran on
    events = list(csv.DictReader(open(stopped / "logs" / "events.csv")))
    assert [e["event"] for e in events] == ["start", "stop", "resume", "complete"]
    assert signal.Signals(sig).name in events[1]["detail"] and events[1]["step"] == events[2]["step"]
    inv = list(csv.DictReader(open(stopped / "logs" / "invocations.csv")))
    assert len(inv) == 2 and all(r["ranks"] == str(ranks) and "OpenBLAS" in r["blas"] and r["mpi"] and r["code_version"]
                                 for r in inv)


@pytest.mark.parametrize("how", ["--time-budget", "SLURM_JOB_END_TIME"])
def test_time_budget_stops_with_a_snapshot_in_time(tmp_path, how):
    stopped = tmp_path / "stopped"
    budget = 3.0
    # the uninterrupted run must outlast the budget (SLURM_JOB_END_TIME is in whole seconds: up to
    # budget + 1) with room to spare, whatever the machine's speed: double its steps until it does
    # (a fixed count once finished inside the budget on a faster CPU, so that nothing was stopped)
    steps = 20000
    while True:
        whole = tmp_path / f"whole-{steps}"
        long = ["--steps", str(steps)]
        t0 = time.time()
        r = subprocess.run(cmd(1, whole, *long), capture_output=True, text=True, timeout=300, env=env())
        assert r.returncode == 0, r.stderr[-2000:]
        if time.time() - t0 > budget + 2.5:
            break
        assert steps < 640000, "the machine is too fast for this test's budget"
        steps *= 2
    e = env()
    extra = list(long)
    if how == "--time-budget":
        extra += ["--time-budget", str(budget)]
    else:
        e["SLURM_JOB_END_TIME"] = str(int(time.time() + budget + 1))
    t0 = time.time()
    r = subprocess.run(cmd(1, stopped, *extra), capture_output=True, text=True, timeout=300, env=e)
    took = time.time() - t0
    assert r.returncode == 75, (r.returncode, r.stderr[-2000:])
    assert "on the time budget with snapshot" in r.stdout
    assert took < budget + 2.0, took  # it stopped in time (start-up included)
    r = subprocess.run(cmd(1, stopped, *long, "--resume", "auto"), capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert metrics(stopped / "metrics.csv") == metrics(whole / "metrics.csv")
