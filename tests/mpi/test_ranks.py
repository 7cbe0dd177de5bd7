"""The determinism contract across rank counts, through the real binary under mpiexec: for every
model, theta (every dataset of the final snapshot, pilf's GatingTransformer and buffers included),
metrics.csv (all but its wall-clock columns) and eval.csv are bitwise the same on 1, 2 and 4 ranks
(and 8 for one configuration); the same run twice is bitwise the same; bad layouts and options that
differ between ranks end every rank with exit status 2, one line on rank 0, no run directory and no
hang."""
import csv
import os
import subprocess

import pytest

from rundirs import metrics, theta

BIN = os.environ.get("HYPERRNN_BIN")
MPIEXEC = os.environ.get("HYPERRNN_MPIEXEC", "mpiexec")
FMNIST = "/usr/share/datasets/fashion-mnist"

TOKENS = ["--d-model", "16", "--heads", "2", "--layers", "2", "--vocab", "64", "--seq-len", "16",
          "--kv-pairs", "2", "--batch", "16", "--shards", "4", "--steps", "20", "--warmup", "2",
          "--eval-every", "10", "--eval-samples", "37"]  # 37: the last evaluation batch splits unevenly
MODELS = {
    "dense": ["--model", "dense"],
    "moe": ["--model", "moe", "--experts", "5", "--top-k", "2"],  # 5 experts: uneven over 2 and 4 ranks
    "gauss-moe": ["--model", "gauss-moe", "--experts", "4", "--top-k", "2"],
    # the reference profile (the default): SMK zeroes and still steps dropped experts, dropout in the
    # model and the GatingTransformer, q's gradient through the GatingTransformer, one shared
    # buffer, meta-training every step on a replay set cached per epoch (7 steps here, so it is
    # redrawn twice); narrow experts to keep it quick
    "pilf": ["--model", "pilf", "--experts", "4", "--top-k", "2", "--d-ff", "32", "--epoch-steps", "7",
             "--dynamic-top-k", "true", "--k-min", "1"],
    # our profile: PILR, SMK freezing dropped experts, per-layer buffers, fresh replay draws every 5 steps
    "pilf-hyperrnn": ["--model", "pilf", "--pilf-profile", "hyperrnn", "--experts", "4", "--top-k", "2",
                      "--meta-every", "5", "--meta-batch", "8", "--dynamic-top-k", "true", "--k-min", "1"],
    # the RWKV-7 baseline: data parallel over the shards; a checkpoint interval that does not divide 16
    "rwkv7": ["--model", "rwkv7", "--head-size", "8", "--rwkv-chunk", "5", "--d-ff", "32"],
}


def run(ranks, args, out, timeout=300):
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    # no OPENBLAS_NUM_THREADS: the program makes BLAS single-threaded itself (tests/mpi/test_threads.py)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.pop("OPENBLAS_NUM_THREADS", None)
    cmd = [MPIEXEC, "--oversubscribe", "-n", str(ranks), BIN, "train", *args]
    if out is not None:
        cmd += ["--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def same_run(a, b):
    ta, tb = theta(a), theta(b)
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if ta[k] != tb[k]]
    assert not differ, f"{len(differ)} datasets differ, e.g. {differ[:3]}"
    assert metrics(a) == metrics(b)
    assert (a / "eval.csv").read_text() == (b / "eval.csv").read_text()


@pytest.mark.parametrize("model", list(MODELS))
def test_bitwise_identical_on_1_2_4_ranks(tmp_path, model):
    runs = {}
    for p in (1, 2, 4):
        r = run(p, [*TOKENS, *MODELS[model]], tmp_path / f"p{p}")
        assert r.returncode == 0, r.stderr[-2000:]
        runs[p] = tmp_path / f"p{p}"
    same_run(runs[1], runs[2])
    same_run(runs[1], runs[4])
    rows = metrics(runs[1])
    assert len(rows) == 20 and all(r["skipped"] == "0" for r in rows)
    # the comparison is not vacuous: the model trained, and the exchange moved tokens
    assert len({r["loss"] for r in rows}) == 20
    timing = {p: list(csv.DictReader(open(runs[p] / "timing.csv"))) for p in runs}
    assert all(int(t["ranks"]) == p for p in timing for t in timing[p])
    if model not in ("dense", "rwkv7"):
        assert all(int(t["xfer_bytes_l0"]) == 0 for t in timing[1])
        assert all(int(t["xfer_bytes_l0"]) > 0 for t in timing[2])
    if model == "pilf":  # SMK dropped experts, no PILR, the shared buffer filled, meta-training every step
        assert any(int(r["smk_l0"]) != 0b1111 for r in rows)
        assert all(float(r["lr_mod_expert"]) == 1.0 for r in rows)
        assert int(rows[-1]["buffer_size"]) > 0
        assert sum(r["gating_loss"] != "nan" for r in rows) == 20
        assert any(float(r["k_mean"]) < 2.0 for r in rows)
        assert "dropout = 0.1" in (runs[1] / "config.ini").read_text()
    if model == "pilf-hyperrnn":  # SMK dropped experts, PILR modulated, buffers filled, meta-training ran
        assert any(int(r["smk_l0"]) != 0b1111 for r in rows)
        assert any(float(r["lr_mod_expert"]) != 1.0 for r in rows)
        assert int(rows[-1]["buffer_size_l0"]) > 0
        assert sum(r["gating_loss"] != "nan" for r in rows) == 4
        assert any(float(r["k_mean"]) < 2.0 for r in rows)


def test_same_configuration_twice_is_bitwise_identical(tmp_path):
    for name in ("a", "b"):
        r = run(2, [*TOKENS, *MODELS["pilf"]], tmp_path / name)
        assert r.returncode == 0, r.stderr[-2000:]
    same_run(tmp_path / "a", tmp_path / "b")


def test_eight_ranks_oversubscribed(tmp_path):
    tokens = [a if a != "4" or TOKENS[i - 1] != "--shards" else "8" for i, a in enumerate(TOKENS)]  # S = 8
    # 16 experts: two per rank on 8 ranks, so the owners' reordering of received rows is exercised
    args = [*tokens, "--model", "pilf", "--experts", "16", "--top-k", "2", "--d-ff", "32", "--epoch-steps", "7"]
    for p in (1, 8):
        r = run(p, args, tmp_path / f"p{p}")
        assert r.returncode == 0, r.stderr[-2000:]
    same_run(tmp_path / "p1", tmp_path / "p8")


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Fashion-MNIST not installed")
def test_image_marathon_on_1_and_4_ranks(tmp_path):
    # the reference profile: class token, dropout, shared buffer over 2 layers, replay sets cached per
    # (task, epoch) and reused in the second cycle (epochs of 2 steps, 3 tasks of 4 steps, 2 cycles)
    # 8 experts: two per rank on 4 ranks (the owners reorder rows from several senders per expert)
    args = ["--model", "pilf", "--task", "fmnist-marathon", "--experts", "8", "--top-k", "2", "--d-ff", "16",
            "--d-model", "16", "--heads", "2", "--layers", "2", "--patch", "7", "--batch", "16", "--classes-per-task", "5",
            "--shards", "4", "--steps", "16", "--task-steps", "4", "--epoch-steps", "2", "--eval-samples", "30",
            "--eval-every", "0"]
    for p in (1, 4):
        r = run(p, args, tmp_path / f"p{p}")
        assert r.returncode == 0, r.stderr[-2000:]
    same_run(tmp_path / "p1", tmp_path / "p4")
    assert (tmp_path / "p1" / "marathon.csv").read_text() == (tmp_path / "p4" / "marathon.csv").read_text()


SMALL = ["--d-model", "16", "--heads", "2", "--layers", "1", "--vocab", "64", "--seq-len", "16", "--kv-pairs", "2",
         "--steps", "2"]
BAD = [
    (3, ["--batch", "16", "--shards", "4"], "option '--shards': the 3 ranks must divide the 4 shards"),
    (2, ["--batch", "16", "--shards", "3"], "option '--shards': shards 3 must divide batch 16"),
    (4, ["--model", "moe", "--experts", "2", "--top-k", "1", "--batch", "16", "--shards", "4"],
     "option '--experts': every rank must own at least one expert"),
    (2, ["--reduction", "fast"], "option '--reduction': must be exact or plain"),
]


@pytest.mark.parametrize("ranks,args,message", BAD)
def test_bad_layout_exits_2_on_every_rank(tmp_path, ranks, args, message):
    r = run(ranks, [*SMALL, *args], tmp_path / "run", timeout=60)  # a hang fails by timeout
    assert r.returncode == 2, r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("hyperrnn: error")]
    assert len(errors) == 1 and message in errors[0], r.stderr  # once, from rank 0
    assert not (tmp_path / "run").exists()


def mpmd(tmp_path, first, second):
    """Rank 0 and rank 1 started with different arguments (MPMD syntax)."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    out = ["--out", str(tmp_path / "run")]
    cmd = [MPIEXEC, "--oversubscribe", "-n", "1", BIN, "train", *SMALL, *first, *out, ":",
           "-n", "1", BIN, "train", *SMALL, *second, *out]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("second,message", [
    (["--lr", "0.002"], "ranks: the options differ between ranks (rank 1's effective configuration"),
    (["--lr", "-1"], "option '--lr': must be a positive number, got -1 (on rank 1)"),
    (["--no-such-option", "1"], "(on rank 1)"),
])
def test_options_that_differ_between_ranks(tmp_path, second, message):
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    r = mpmd(tmp_path, [], second)
    assert r.returncode == 2, r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("hyperrnn: error")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_eval_on_other_rank_counts_reproduces_the_runs_evaluation(tmp_path):
    r = run(4, [*TOKENS, *MODELS["pilf"]], tmp_path / "p4")
    assert r.returncode == 0, r.stderr[-2000:]
    last = list(csv.DictReader(open(tmp_path / "p4" / "eval.csv")))[-1]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    for p in (1, 2):
        e = subprocess.run([MPIEXEC, "--oversubscribe", "-n", str(p), BIN, "eval", "--snapshot", str(tmp_path / "p4"),
                            "--eval-samples", "37"], capture_output=True, text=True, timeout=120, env=env)
        assert e.returncode == 0, e.stderr
        # printed round-trip exact: the same numbers as the run's own final evaluation
        assert f"loss {last['loss']} acc {last['acc']} (37 samples)" in e.stdout, e.stdout
