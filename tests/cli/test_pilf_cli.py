"""PILF through the real binary: bad PILF and image-task input exits 2 with one line and no run
directory; a tiny `pilf` run writes the documented metrics columns with self-consistent values; the
Fashion-MNIST marathon writes per-task validation and an average forgetting that the rows imply."""
import csv
import gzip
import math
import os
import shutil
import struct

import pytest

from test_cli import BIN, bad, hyperrnn, tiny_except

FMNIST = "/usr/share/datasets/fashion-mnist"

PILF_CASES = [
    (["--model", "pilf", "--min-k", "5"], "min-k", "exceeds the number of experts"),
    (["--model", "gauss-moe", "--min-k", "9"], "min-k", "exceeds the number of experts"),
    (["--pi-alpha", "0"], "pi-alpha", "must be > 0"),
    (["--pi-alpha", "-1"], "pi-alpha", "must be > 0"),
    (["--pi-gamma", "1.5"], "pi-gamma", "[0, 1]"),
    (["--pi-gamma", "-0.1"], "pi-gamma", "[0, 1]"),
    (["--pilr-beta", "0"], "pilr-beta", "(0, 1]"),
    (["--pilr-beta", "1.01"], "pilr-beta", "(0, 1]"),
    (["--model", "pilf", "--buffer-capacity", "0"], "buffer-capacity", "must be >= 1 with model pilf"),
    (["--pilr", "triple"], "pilr", "off, single, dual or auto"),
    (["--smk", "max"], "smk", "off, smk, asmk or auto"),
    (["--model", "dense", "--smk", "smk"], "smk", "needs an MoE model"),
    (["--model", "gauss-moe", "--dynamic-top-k", "true"], "dynamic-top-k", "needs model pilf"),
    (["--model", "pilf", "--dynamic-top-k", "true", "--k-min", "3"], "k-min", "[1, top-k"),
    (["--model", "pilf", "--gating-heads", "3"], "gating-heads", "not divisible"),
    (["--meta-every", "0"], "meta-every", "positive"),
    (["--task", "cifar"], "task", "unknown task"),
    (["--task", "fmnist", "--patch", "5"], "patch", "must divide"),
    (["--task", "fmnist-marathon", "--classes-per-task", "3"], "classes-per-task", "must divide"),
    (["--task", "fmnist-marathon", "--marathon-head", "both"], "marathon-head", "task or class"),
    (["--model", "pilf", "--pilf-profile", "torch"], "pilf-profile", "must be reference or hyperrnn, got 'torch'"),
    (["--pilf-profile", "torch"], "pilf-profile", "must be reference or hyperrnn"),
    (["--pi-form", "ipwt"], "pi-form", "published, reference-code or reference-loop"),
    (["--smk-dropped", "zero"], "smk-dropped", "must be step or freeze"),
    (["--buffer", "global"], "buffer", "must be shared or per-layer"),
    (["--curation-pi", "mean"], "curation-pi", "must be batch or sample"),
    (["--curation", "never"], "curation", "must be smk or always"),
    (["--meta-replay", "cached"], "meta-replay", "must be task-epoch, epoch or fresh"),
    (["--meta-loss", "max"], "meta-loss", "must be mean or sum"),
    (["--meta-batch", "-1"], "meta-batch", "must be >= 0"),
    (["--epoch-steps", "-3"], "epoch-steps", "must be >= 0"),
    (["--dropout", "1"], "dropout", "[0, 1)"),
    (["--gating-dropout", "-0.1"], "gating-dropout", "[0, 1)"),
    (["--vit-pool", "max"], "vit-pool", "must be mean or cls"),
    (["--surprise-routing", "maybe"], "surprise-routing", ""),
]


@pytest.mark.parametrize("args,option,reason", PILF_CASES, ids=[c[1] + ":" + c[2] for c in PILF_CASES])
def test_bad_pilf_option(tmp_path, args, option, reason):
    bad(tmp_path, args, option, reason)


IMG = ["--d-model", "16", "--layers", "1", "--heads", "2", "--experts", "4", "--top-k", "2", "--batch", "8",
       "--steps", "4", "--warmup", "1", "--eval-every", "0", "--eval-samples", "16", "--patch", "7"]


def idx_files(d, n_train=40, n_test=20, images_bytes=None, label_count=None):
    """Writes a small Fashion-MNIST-shaped IDX set (gzip) into d."""
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        px = bytes((i * 7) % 256 for i in range(n * 784))
        img = struct.pack(">IIII", 0x803, n, 28, 28) + (px if images_bytes is None else px[:images_bytes])
        nl = n if label_count is None else label_count
        lab = struct.pack(">II", 0x801, nl) + bytes(i % 10 for i in range(nl))
        with gzip.open(d / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(img)
        with gzip.open(d / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(lab)


def bad_data(tmp_path, fmnist_dir, *words):
    out = tmp_path / "run"
    r = hyperrnn("train", "--task", "fmnist", "--model", "dense", *IMG, "--fmnist-dir", str(fmnist_dir), "--out", str(out))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr + r.stdout
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists(), "a run directory was written for bad input"


def test_missing_idx_files_name_the_file_and_the_package(tmp_path):
    bad_data(tmp_path, tmp_path / "nowhere", "train-images-idx3-ubyte", "dataset-fashion-mnist")


def test_truncated_idx_file(tmp_path):
    idx_files(tmp_path / "d", images_bytes=1000)
    bad_data(tmp_path, tmp_path / "d", "train-images-idx3-ubyte", "truncated")


def test_label_image_count_mismatch(tmp_path):
    idx_files(tmp_path / "d", label_count=39)
    bad_data(tmp_path, tmp_path / "d", "40", "39")


def read_csv(p):
    with open(p) as f:
        return list(csv.DictReader(f))


def test_tiny_pilf_run_logs_the_hyper_step(tmp_path):
    """The hyperrnn profile: published PI over the surprise that includes the routing gradient,
    PILR single, per-layer buffers, meta-training every 3 steps."""
    out = tmp_path / "run"
    r = hyperrnn("train", *tiny_except("model", "steps", "batch"), "--model", "pilf", "--pilf-profile", "hyperrnn",
                 "--steps", "12", "--batch", "8",
                 "--meta-every", "3", "--meta-batch", "6", "--buffer-capacity", "10", "--min-k", "2",
                 "--dynamic-top-k", "true", "--k-min", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr + r.stdout
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 12
    cols = rows[0].keys()
    for c in ("epsilon", "tau", "surprise", "expert_surprise", "gating_surprise", "pi", "lr_mod_expert", "lr_mod_gating",
              "gating_loss", "routing_acc", "k_mean", "smk_l0", "buffer_size_l0", "prototypes_l0"):
        assert c in cols, c
    for i, row in enumerate(rows):
        f = {k: float(v) for k, v in row.items()}
        assert f["epsilon"] == f["loss"]
        assert math.isclose(f["surprise"], math.hypot(f["expert_surprise"], f["gating_surprise"]), rel_tol=1e-12)
        # published PI with alpha 1, gamma 0.5, recomputed from the logged parts (tau guard 1e-9)
        pi = math.exp(-(0.5 * f["epsilon"] / (f["tau"] + 1e-9) + 0.5 * f["surprise"]))
        assert math.isclose(f["pi"], pi, rel_tol=1e-9, abs_tol=1e-300)
        assert 0 < f["lr_mod_expert"] <= 1 and f["lr_mod_expert"] == f["lr_mod_gating"]  # single mode
        assert bin(int(f["smk_l0"])).count("1") == 2  # SMK keeps min-k = 2 experts
        assert 0 < f["buffer_size_l0"] <= 10 and 0 < f["prototypes_l0"] <= f["buffer_size_l0"]
        assert 1 <= f["k_mean"] <= 2
        meta = (i + 1) % 3 == 0
        assert math.isnan(f["gating_loss"]) != meta
        if meta:
            assert f["gating_loss"] > 0 and 0 <= f["routing_acc"] <= 1
    # dynamic top-k uses fewer experts per token than top-k on some step
    assert min(float(r["k_mean"]) for r in rows) < 2


def test_tiny_pilf_run_reference_profile(tmp_path):
    """The reference profile (the default): PI as the PILF-2 loop calls it (eps/tau + surprise,
    gamma unused) over the parameter gradients only, no PILR, one shared buffer, meta-training
    every step from the first; explicit options win over the profile and the run says so."""
    out = tmp_path / "run"
    r = hyperrnn("train", *tiny_except("model", "steps", "batch", "warmup"), "--model", "pilf", "--steps", "8", "--batch", "8",
                 "--d-ff", "32", "--buffer-capacity", "10", "--min-k", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr + r.stdout
    assert "pilf profile reference; explicit options win over it: d-ff = 32 (profile: 256)" in r.stdout
    ini = (out / "config.ini").read_text()
    for line in ("pilf-profile = reference", "pilr = off", "weight-decay = 0", "grad-clip = 0", "dropout = 0.1",
                 "buffer = shared", "meta-every = 1", "meta-replay = task-epoch", "gating-backprop = true"):
        assert line + "\n" in ini, line
    rows = read_csv(out / "metrics.csv")
    assert "buffer_size" in rows[0] and "buffer_size_l0" not in rows[0]
    for row in rows:
        f = {k: float(v) for k, v in row.items()}
        # parameter gradients only: the same norm computed two ways, sqrt(dense^2 + expert^2) and
        # hypot(|dense|, |expert|), which differ by their roundings (a few ulp); a routing term would
        # add far more than 1e-15 of it
        assert math.isclose(f["surprise"], f["expert_surprise"], rel_tol=1e-15)
        pi = math.exp(-(f["epsilon"] / (f["tau"] + 1e-9) + f["surprise"]))
        assert math.isclose(f["pi"], pi, rel_tol=1e-9, abs_tol=1e-300)
        assert f["lr_mod_expert"] == 1.0 and f["lr_mod_gating"] == 1.0 and f["lr"] == 0.003  # constant rate
        assert bin(int(f["smk_l0"])).count("1") == 2
        assert 0 < f["buffer_size"] <= 10
        assert f["gating_loss"] > 0  # every step
    # the profile's choice loses to an explicit option, and is named
    out2 = tmp_path / "run2"
    r = hyperrnn("train", *tiny_except("model", "steps"), "--model", "pilf", "--steps", "2", "--pilr", "single",
                 "--out", str(out2))
    assert r.returncode == 0, r.stderr
    assert "pilr = single (profile: off)" in r.stdout and "pilr = single\n" in (out2 / "config.ini").read_text()
    assert float(read_csv(out2 / "metrics.csv")[-1]["lr_mod_expert"]) != 1.0


def test_pilf_snapshot_evaluates_to_the_runs_final_numbers(tmp_path):
    out = tmp_path / "run"
    r = hyperrnn("train", *tiny_except("model"), "--model", "pilf", "--dynamic-top-k", "true", "--out", str(out))
    assert r.returncode == 0, r.stderr
    final = list(csv.DictReader(open(out / "eval.csv")))[-1]
    # eval rebuilds the model, the GatingTransformer and the buffers from the snapshot alone
    e = hyperrnn("eval", "--snapshot", str(out), "--eval-samples", "16")
    assert e.returncode == 0, e.stderr
    acc = float(e.stdout.split(" acc ")[1].split()[0])
    loss = float(e.stdout.split(" loss ")[1].split()[0])
    assert acc == float(final["acc"]) and loss == float(final["loss"])  # both printed round-trip exact
    # a snapshot without a buffer's data is refused, naming the dataset
    import h5py
    snap = out / "snapshots" / (out / "snapshots" / "latest").read_text().strip() / "manifest.h5"
    with h5py.File(snap, "a") as f:
        del f["buffer/shared/q"]
    e = hyperrnn("eval", "--snapshot", str(out))
    assert e.returncode != 0 and "buffer/shared/q" in e.stderr, e.stderr


@pytest.mark.skipif(not os.path.exists(FMNIST + "/train-images-idx3-ubyte.gz"), reason="dataset-fashion-mnist not installed")
def test_marathon_reports_tasks_and_forgetting(tmp_path):
    out = tmp_path / "run"
    r = hyperrnn("train", "--task", "fmnist-marathon", "--model", "gauss-moe", *IMG[:-10], "--steps", "20", "--warmup", "1",
                 "--task-steps", "2", "--eval-every", "0", "--eval-samples", "40", "--patch", "7", "--out", str(out))
    assert r.returncode == 0, r.stderr + r.stdout
    rows = read_csv(out / "marathon.csv")
    assert len(rows) == 10  # 5 tasks x 2 cycles
    best = {}
    for k, row in enumerate(rows):
        cur = int(row["task"])
        assert cur == k % 5 and int(row["cycle"]) == k // 5
        acc = {j: float(row[f"acc_task{j}"]) for j in range(5)}
        seen = [j for j in range(5) if not math.isnan(acc[j])]
        assert seen == list(range(min(k + 1, 5)))
        assert math.isclose(float(row["avg_acc"]), sum(acc[j] for j in seen) / len(seen), rel_tol=1e-12)
        drops = [best[j] - acc[j] for j in seen if j != cur and j in best]
        expect = sum(drops) / len(drops) if drops else 0.0
        assert math.isclose(float(row["avg_forgetting"]), expect, rel_tol=1e-9, abs_tol=1e-12)
        for j in seen:
            best[j] = max(best.get(j, -1.0), acc[j])
    evals = read_csv(out / "eval.csv")
    assert {e["split"] for e in evals} >= {f"task{j}" for j in range(5)}
    assert "average forgetting" in r.stdout


# What each profile sets (docs/pilf.md): the reference's PILF-2 loop as its code runs, and ours.
PROFILES = {
    "reference": {"pilr": "off", "smk-dropped": "step", "weight-decay": "0", "grad-clip": "0", "warmup": "0",
                  "lr-min-ratio": "1", "pi-form": "reference-loop", "surprise-routing": "false", "gating-backprop": "true",
                  "buffer": "shared", "curation-pi": "batch", "curation": "smk", "meta-every": "1",
                  "meta-replay": "task-epoch", "meta-batch": "0", "meta-loss": "mean", "d-ff": "256", "dropout": "0.1",
                  "gating-dropout": "0.1", "vit-pool": "cls"},
    "hyperrnn": {"pilr": "single", "smk-dropped": "freeze", "weight-decay": "0.1", "grad-clip": "1", "warmup": "100",
                 "lr-min-ratio": "0.1", "pi-form": "published", "surprise-routing": "true", "gating-backprop": "false",
                 "buffer": "per-layer", "curation-pi": "sample", "curation": "always", "meta-every": "10",
                 "meta-replay": "fresh", "meta-batch": "64", "meta-loss": "sum", "d-ff": "0", "dropout": "0",
                 "gating-dropout": "0", "vit-pool": "mean"},
}


def effective(tmp_path, *args):
    out = tmp_path / "run"
    r = hyperrnn("train", *tiny_except("model", "steps", "warmup", "d-ff"), "--steps", "1", *args, "--out", str(out))
    assert r.returncode == 0, r.stderr + r.stdout
    ini = dict(line.split(" = ", 1) for line in (out / "config.ini").read_text().splitlines() if " = " in line)
    shutil.rmtree(out)
    return ini, r.stdout


@pytest.mark.parametrize("profile", list(PROFILES))
def test_profile_sets_every_knob_and_explicit_options_win(tmp_path, profile):
    ini, _ = effective(tmp_path, "--model", "pilf", "--pilf-profile", profile)
    for k, v in PROFILES[profile].items():
        assert ini[k] == v, k
    # another model keeps the general defaults, which are the hyperrnn profile's values
    ini, _ = effective(tmp_path, "--model", "gauss-moe", "--pilf-profile", profile)
    for k, v in PROFILES["hyperrnn"].items():
        if k != "pilr":
            assert ini[k] == v, k
    assert ini["pilr"] == "auto"
    # explicit options (command line or --config) win and are named
    cfg = tmp_path / "x.ini"
    cfg.write_text("meta-every = 7\n")
    ini, out = effective(tmp_path, "--model", "pilf", "--pilf-profile", profile, "--config", str(cfg), "--dropout", "0.25")
    assert ini["meta-every"] == "7" and ini["dropout"] == "0.25"
    assert f"meta-every = 7 (profile: {PROFILES[profile]['meta-every']})" in out
    assert f"dropout = 0.25 (profile: {PROFILES[profile]['dropout']})" in out
