"""Results independent of threads, launcher and environment (docs/architecture.md, determinism
contract): for dense, gauss-moe, pilf and rwkv7, theta (every dataset of the final snapshot),
metrics.csv less its wall-clock columns, and eval.csv are bitwise the same for every (ranks P,
threads T) in {1, 2, 4} x {1, 2, 4}, under the launcher's default binding (--oversubscribe only
where P exceeds the cores, as OpenMPI requires) and with OPENBLAS_NUM_THREADS unset, 1 or 4 (a
Latin square over the grid: every P and every T meets every environment); also across a resume
that changes P and T, and for a pilf marathon on (1, 1) and (2, 2). Nothing here sets
OPENBLAS_NUM_THREADS for the program: the program makes BLAS single-threaded itself."""
import csv
import os
import subprocess

import pytest

from rundirs import metrics, theta

BIN = os.environ.get("HYPERRNN_BIN")
MPIEXEC = os.environ.get("HYPERRNN_MPIEXEC", "mpiexec")
FMNIST = "/usr/share/datasets/fashion-mnist"
CORES = len(os.sched_getaffinity(0))

TOKENS = ["--d-model", "16", "--heads", "2", "--layers", "2", "--vocab", "64", "--seq-len", "16",
          "--kv-pairs", "2", "--batch", "16", "--shards", "4", "--steps", "12", "--warmup", "2",
          "--eval-every", "6", "--eval-samples", "37", "--snapshot-every", "6"]
MODELS = {
    "dense": ["--model", "dense", "--dropout", "0.1"],
    "gauss-moe": ["--model", "gauss-moe", "--experts", "4", "--top-k", "2"],
    # the reference profile: dropout, q's gradient through the GatingTransformer (routing per shard
    # on per-thread copies), the shared buffer, meta-training every step; dynamic top-k on
    "pilf": ["--model", "pilf", "--experts", "4", "--top-k", "2", "--d-ff", "32", "--epoch-steps", "5",
             "--dynamic-top-k", "true", "--k-min", "1"],
    "rwkv7": ["--model", "rwkv7", "--head-size", "8", "--rwkv-chunk", "5", "--d-ff", "32"],
}
ENVS = {"unset": None, "1": "1", "4": "4"}


def environment(openblas):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.pop("OPENBLAS_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)
    if openblas is not None:
        env["OPENBLAS_NUM_THREADS"] = openblas
        env["OMP_NUM_THREADS"] = openblas
    return env


def run(ranks, threads, args, out, openblas=None, timeout=300):
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    launch = [MPIEXEC, "-n", str(ranks)] + (["--oversubscribe"] if ranks > CORES else [])
    cmd = [*launch, BIN, "train", *args, "--threads", str(threads), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environment(openblas))
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def same_run(a, b, files=("eval.csv",)):
    ta, tb = theta(a), theta(b)
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if ta[k] != tb[k]]
    assert not differ, f"{a.name} vs {b.name}: {len(differ)} datasets differ, e.g. {differ[:3]}"
    assert metrics(a) == metrics(b), f"{a.name} vs {b.name}: metrics.csv differs"
    for name in files:
        assert (a / name).read_text() == (b / name).read_text(), f"{a.name} vs {b.name}: {name} differs"


GRID = [(p, t, list(ENVS)[(i + j) % 3]) for i, p in enumerate((1, 2, 4)) for j, t in enumerate((1, 2, 4))]


@pytest.mark.parametrize("model", list(MODELS))
def test_bitwise_identical_over_ranks_threads_and_blas_environment(tmp_path, model):
    runs = []
    for p, t, e in GRID:
        out = tmp_path / f"p{p}t{t}-{e}"
        run(p, t, [*TOKENS, *MODELS[model]], out, ENVS[e])
        runs.append(out)
        # the run directory records the invocation's ranks and threads
        inv = list(csv.DictReader(open(out / "logs" / "invocations.csv")))
        assert inv[-1]["ranks"] == str(p) and inv[-1]["threads_per_rank"] == " ".join([str(t)] * p)
        timing = list(csv.DictReader(open(out / "timing.csv")))
        assert all(r["threads"] == str(t) and r["ranks"] == str(p) for r in timing)
        assert f"on {p} rank(s) x {t} thread(s)" in (out / "logs" / "train.log").read_text()
    for other in runs[1:]:
        same_run(runs[0], other)
    rows = metrics(runs[0])
    assert len(rows) == 12 and len({r["loss"] for r in rows}) == 12  # it trained: not vacuous


def test_default_threads_follow_the_affinity_mask(tmp_path):
    # auto: the cores the launcher left this rank; one rank under taskset keeps one core
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    args = [*TOKENS, *MODELS["gauss-moe"]]
    r = subprocess.run(["taskset", "-c", "0", BIN, "train", *args, "--out", str(tmp_path / "one")],
                       capture_output=True, text=True, timeout=300, env=environment(None))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "on 1 rank(s) x 1 thread(s)" in r.stdout
    r = subprocess.run([BIN, "train", *args, "--out", str(tmp_path / "all")], capture_output=True, text=True,
                       timeout=300, env=environment(None))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"on 1 rank(s) x {CORES} thread(s)" in r.stdout
    same_run(tmp_path / "one", tmp_path / "all")


def test_resume_changing_ranks_and_threads(tmp_path):
    # (P, T) = (4, 1) stops after 6 steps; (1, 2) resumes it; the same as one uninterrupted (2, 2) run
    args = [*TOKENS, *MODELS["pilf"]]
    run(2, 2, args, tmp_path / "whole", "4")
    run(4, 1, [*args, "--stop-after", "6"], tmp_path / "split")
    run(1, 2, [*args, "--resume", "auto"], tmp_path / "split")
    same_run(tmp_path / "whole", tmp_path / "split")
    inv = list(csv.DictReader(open(tmp_path / "split" / "logs" / "invocations.csv")))
    assert [(r["start_step"], r["ranks"], r["threads_per_rank"]) for r in inv] == [("0", "4", "1 1 1 1"), ("6", "1", "2")]


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Fashion-MNIST not installed")
def test_pilf_marathon_on_1x1_and_2x2(tmp_path):
    args = ["--model", "pilf", "--task", "fmnist-marathon", "--experts", "4", "--top-k", "2", "--d-ff", "16",
            "--d-model", "16", "--heads", "2", "--layers", "2", "--patch", "7", "--batch", "16", "--classes-per-task", "5",
            "--shards", "4", "--steps", "16", "--task-steps", "4", "--epoch-steps", "2", "--eval-samples", "30",
            "--eval-every", "0", "--vit-pool", "cls"]
    run(1, 1, args, tmp_path / "p1t1")
    run(2, 2, args, tmp_path / "p2t2", "4")
    same_run(tmp_path / "p1t1", tmp_path / "p2t2", files=("eval.csv", "marathon.csv"))
