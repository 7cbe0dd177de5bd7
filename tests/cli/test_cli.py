"""`hyperrnn` command line: every bad input of the foundation issue gets exit status 2, one line
naming the option and the reason, and no run directory; good input writes the documented run
directory; `eval` reads the snapshot back."""
import csv
import os
import subprocess

import pytest

BIN = os.environ.get("HYPERRNN_BIN")
# A tiny valid run: a few seconds on one core.
TINY_OPTS = {"model": "gauss-moe", "d-model": "16", "layers": "1", "heads": "2", "experts": "4", "top-k": "2",
             "vocab": "40", "seq-len": "16", "kv-pairs": "2", "batch": "8", "steps": "6", "warmup": "2",
             "eval-every": "3", "eval-samples": "16"}
TINY = [a for k, v in TINY_OPTS.items() for a in ("--" + k, v)]


def tiny_except(*names):
    """TINY without the named options (so a test can pass them itself, or through --config)."""
    return [a for k, v in TINY_OPTS.items() if k not in names for a in ("--" + k, v)]


def hyperrnn(*args, cwd=None):
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    return subprocess.run([BIN, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def bad(tmp_path, args, option, reason):
    out = tmp_path / "run"
    given = [a[2:] for a in args if a.startswith("--")]
    r = hyperrnn("train", *tiny_except(*given, option), "--out", str(out), *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr + r.stdout
    assert len(lines) == 1, r.stderr
    assert option in lines[0] and reason in lines[0], lines[0]
    assert not out.exists(), "a run directory was written for bad input"
    return lines[0]


CASES = [
    (["--no-such-option", "1"], "no-such-option", "unrecognised"),
    (["--d-model"], "d-model", "missing"),
    (["--d-model", "abc"], "d-model", "invalid"),
    (["--steps", "2.5"], "steps", "invalid"),
    (["--d-model", "-8"], "d-model", "positive"),
    (["--layers", "0"], "layers", "positive"),
    (["--batch", "0"], "batch", "positive"),
    (["--experts", "-1"], "experts", "positive"),
    (["--top-k", "5"], "top-k", "exceeds the number of experts"),
    (["--heads", "3"], "heads", "not divisible"),
    (["--kv-pairs", "5"], "kv-pairs", "4 * kv-pairs <= seq-len"),
    (["--vocab", "16"], "vocab", "vocab > seq-len"),
    (["--model", "transformer"], "model", "unknown model"),
    (["--lr", "-1"], "lr", "positive"),
    (["--shards", "3"], "shards", "must divide batch"),
    (["--seed", "1", "--seed", "2"], "seed", "more than once"),
    (["--max-bad-steps", "0"], "max-bad-steps", "positive"),
    (["--threads", "0"], "threads", "positive thread count"),
    (["--threads", "-2"], "threads", "positive thread count"),
    (["--threads", "two"], "threads", "positive thread count"),
    (["--shards", "many"], "shards", "auto or a positive integer"),
    (["--ste", "3"], "ste", "unrecognised"),               # no prefix guessing (--steps)
    (["--seed", "-1"], "seed", "non-negative"),             # would wrap to 2^64 - 1
    (["--lr", "inf"], "lr", "finite"),
    (["--pi-alpha", "nan"], "pi-alpha", "finite"),
    (["my.ini"], "my.ini", "did you mean --config my.ini"),  # a stray word
    (["--config", ""], "config", "empty"),
    (["--model", "pilf", "--dynamic-top-k", "true", "--k-min", "0"], "k-min", "must be in [1, top-k"),
    (["--stop-signal", "SIGFOO"], "stop-signal", "signal name"),
    (["--stop-signal", "9"], "stop-signal", "catchable"),  # SIGKILL cannot be handled
    (["--denormals", "ieee"], "denormals", "must be flush or keep"),
]


def test_out_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for out, reason in ((blocker / "run", "is not a directory"), (blocker, "exists and is not a directory")):
        r = hyperrnn("train", *TINY, "--out", str(out))
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "option '--out'" in lines[0] and reason in lines[0], r.stderr
    r = hyperrnn("train", *TINY, "--out", "", cwd=tmp_path)
    assert r.returncode == 2 and "option '--out': needs a directory path" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,option,reason", CASES, ids=[c[1] + ":" + c[2] for c in CASES])
def test_bad_option(tmp_path, args, option, reason):
    bad(tmp_path, args, option, reason)


def test_unreadable_config(tmp_path):
    bad(tmp_path, ["--config", str(tmp_path / "missing.ini")], "config", "does not exist")
    bad(tmp_path, ["--config", str(tmp_path)], "config", "not a regular file")


def test_denormals_mode_is_in_the_banner_and_config_ini(tmp_path):
    """--denormals is part of the run's identity: named in the banner, recorded in config.ini, and
    the default is flush."""
    for mode, args in (("flush", []), ("keep", ["--denormals", "keep"])):
        out = tmp_path / mode
        r = hyperrnn("train", *TINY, *args, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert f"; denormals {mode})" in r.stdout.splitlines()[0], r.stdout
        assert f"\ndenormals = {mode}\n" in (out / "config.ini").read_text()


def test_threads_above_the_cores_warn_and_run(tmp_path):
    r = hyperrnn("train", *TINY, "--threads", "64", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    warnings = [l for l in r.stderr.splitlines() if "warning" in l]
    assert len(warnings) == 1 and "--threads 64 exceeds" in warnings[0], r.stderr
    assert "x 64 thread(s)" in r.stdout


def test_stop_after_is_the_absolute_step(tmp_path):
    out = tmp_path / "run"
    r = hyperrnn("train", *tiny_except("steps"), "--steps", "6", "--stop-after", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = hyperrnn("train", *tiny_except("steps"), "--steps", "6", "--stop-after", "3", "--resume", "auto", "--out", str(out))
    assert r.returncode == 2 and "option '--stop-after': 3 is at or before the snapshot's step 4" in r.stderr, r.stderr
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 4  # nothing ran


def test_sizes_that_cannot_fit_are_refused_up_front(tmp_path):
    # d-model 8192 with 4 experts of 4 x 8192: the estimate (about 550 GiB) exceeds any test machine
    out = tmp_path / "run"
    r = hyperrnn("train", "--d-model", "8192", "--steps", "2", "--out", str(out))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "sizes: the run needs about" in lines[0] and "GiB per rank" in lines[0] and "available:" in lines[0]
    assert not out.exists()


def test_version_and_help():
    v = hyperrnn("--version")
    assert v.returncode == 0 and v.stdout.startswith("hyperrnn ")
    h = hyperrnn("help")
    assert h.returncode == 0 and "train" in h.stdout and "eval" in h.stdout


CONFIG_CASES = [
    ("d-model = 16\nthis line has no equals sign\n", "config", "malformed"),
    ("d-modle = 16\n", "config", "d-modle"),     # unknown key
    ("top-k = 9\n", "top-k", "exceeds"),          # valid syntax, bad value
    ("vocab = lots\n", "vocab", "invalid"),       # non-numeric value
]


@pytest.mark.parametrize("text,option,reason", CONFIG_CASES, ids=["syntax", "unknown-key", "top-k", "non-numeric"])
def test_bad_config_file(tmp_path, text, option, reason):
    cfg = tmp_path / "bad.ini"
    cfg.write_text(text)
    bad(tmp_path, ["--config", str(cfg)], option, reason)


def test_out_holds_a_different_run(tmp_path):
    out = tmp_path / "run"
    assert hyperrnn("train", *TINY, "--out", str(out)).returncode == 0
    before = sorted(p.name for p in out.rglob("*"))
    r = hyperrnn("train", *TINY, "--lr", "0.01", "--out", str(out))
    assert r.returncode == 2
    assert "--out" in r.stderr and "different run" in r.stderr and "lr" in r.stderr
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing written


def test_out_is_a_foreign_directory(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    r = hyperrnn("train", *TINY, "--out", str(out))
    assert r.returncode == 2 and "--out" in r.stderr and "no config.ini" in r.stderr
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


def test_help_lists_options_with_defaults():
    r = hyperrnn("train", "--help")
    assert r.returncode == 0
    for opt in ["--model", "--d-model", "--experts", "--top-k", "--vocab", "--seq-len", "--kv-pairs", "--batch",
                "--shards", "--steps", "--lr", "--weight-decay", "--seed", "--eval-every", "--eval-samples", "--out",
                "--config"]:
        assert opt in r.stdout, opt
    assert "(=64)" in r.stdout  # defaults are shown


def test_run_directory_and_eval(tmp_path):
    out = tmp_path / "run"
    r = hyperrnn("train", *TINY, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "final held-out accuracy" in r.stdout
    assert (out / "config.ini").is_file() and (out / "logs" / "train.log").is_file()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    for col in ["loss", "acc", "lr", "tokens_per_s", "grad_norm", "tokens_l0_e0", "tokens_l0_e3"]:
        assert col in rows[0], col
    for row in rows:  # tokens per expert add up to tokens x top-k
        assert sum(int(row[f"tokens_l0_e{e}"]) for e in range(4)) == 8 * 16 * 2
        # floats are printed shortest round-trip exact: Python's repr gives the same text back
        assert repr(float(row["loss"])) == row["loss"], row["loss"]
    evals = list(csv.DictReader(open(out / "eval.csv")))
    assert [(int(e["step"]), e["split"]) for e in evals] == [(3, "heldout"), (6, "heldout")]
    # the effective configuration reproduces the run
    again = tmp_path / "again"
    r2 = hyperrnn("train", "--config", str(out / "config.ini"), "--out", str(again))
    assert r2.returncode == 0, r2.stderr
    strip = lambda p: [{k: v for k, v in row.items() if not k.endswith(("_s", "_per_s"))} for row in csv.DictReader(open(p))]
    assert strip(out / "metrics.csv") == strip(again / "metrics.csv")
    # eval on the final snapshot reproduces the final held-out numbers with no options (the run's own
    # evaluation settings), also given the run's own config.ini, and appends them to a CSV
    for extra in ([], ["--config", str(out / "config.ini")]):
        e = hyperrnn("eval", "--snapshot", str(out), *extra)
        assert e.returncode == 0, e.stderr
        acc = float(e.stdout.split(" acc ")[1].split()[0])
        loss = float(e.stdout.split(" loss ")[1].split()[0])
        assert acc == float(evals[-1]["acc"]) and loss == float(evals[-1]["loss"])  # printed round-trip exact
    rows = list(csv.DictReader(open(out / "eval-snapshots.csv")))
    assert len(rows) == 2 and all(r["loss"] == evals[-1]["loss"] and r["step"] == "6" for r in rows)
    # a config file with a key that is neither an eval option nor a run option is refused
    junk = tmp_path / "junk.ini"
    junk.write_text("no-such-key = 1\n")
    e = hyperrnn("eval", "--snapshot", str(out), "--config", str(junk))
    assert e.returncode == 2 and "unknown key 'no-such-key'" in e.stderr, e.stderr


def test_eval_bad_snapshot(tmp_path):
    r = hyperrnn("eval", "--snapshot", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "--snapshot" in r.stderr
    junk = tmp_path / "manifest.h5"
    junk.write_bytes(b"not hdf5")
    r = hyperrnn("eval", "--snapshot", str(junk))
    assert r.returncode == 2 and "--snapshot" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path):
    # lr 1e30 without clipping blows the parameters up after the first update: every later step
    # has a NaN loss, is skipped, and the third in a row stops the run (a runtime failure: exit 1).
    out = tmp_path / "run"
    r = hyperrnn("train", *tiny_except("steps", "warmup"), "--steps", "20", "--warmup", "0", "--lr", "1e30",
                 "--grad-clip", "0", "--max-bad-steps", "3", "--out", str(out))
    assert r.returncode == 1, r.stderr
    assert "3 steps in a row had NaN or Inf" in r.stderr and "--max-bad-steps 3" in r.stderr
    assert "step skipped, nothing updated" in r.stdout
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(row["skipped"]) for row in rows] == [0, 1, 1, 1]


def test_dry_run_checks_without_writing(tmp_path):
    out = tmp_path / "run"
    r = hyperrnn("train", *TINY, "--out", str(out), "--dry-run", "--ranks", "2")
    assert r.returncode == 0 and "--dry-run: ok: gauss-moe on mqar, 6 steps on 2 rank(s), a new run" in r.stdout, r.stderr
    assert not out.exists()
    # the layout is checked for --ranks, not for this launch's one rank
    r = hyperrnn("train", *TINY, "--out", str(out), "--dry-run", "--ranks", "3")
    assert r.returncode == 2 and "the 3 ranks must divide the 8 shards" in r.stderr and not out.exists(), r.stderr
    # an existing run: its directory is checked and left as it was
    assert hyperrnn("train", *TINY, "--out", str(out)).returncode == 0
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    r = hyperrnn("train", *TINY, "--out", str(out), "--dry-run", "--resume", "auto")
    assert r.returncode == 0 and "continues from step_00000006" in r.stdout, r.stderr
    r = hyperrnn("train", *tiny_except("d-model"), "--d-model", "8", "--out", str(out), "--dry-run", "--resume", "auto")
    assert r.returncode == 2 and "already holds a different run" in r.stderr, r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == files
    # --ranks belongs to --dry-run
    (tmp_path / "b").mkdir()
    bad(tmp_path / "b", ["--ranks", "2"], "--ranks", "only with --dry-run")


def test_timing_split_adds_up(tmp_path):
    """timing.csv: step_time_s = compute + dispatch + reduce + optimizer + pilf; expert_s is part of
    compute_s; pilf_s is pilf's own (zero for the other models)."""
    for model, extra in (("pilf", []), ("gauss-moe", [])):
        out = tmp_path / model
        r = hyperrnn("train", *tiny_except("model", "steps"), "--model", model, "--steps", "20", "--threads", "1",
                     "--out", str(out), *extra)
        assert r.returncode == 0, r.stderr
        with open(out / "timing.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 20
        for row in rows:
            v = {k: float(x) for k, x in row.items() if k.endswith("_s")}
            parts = v["compute_s"] + v["dispatch_s"] + v["reduce_s"] + v["optimizer_s"] + v["pilf_s"]
            # the CSV holds round-trip doubles: the sum is exact to a few ulps (compute_s is clamped at 0)
            assert abs(parts - v["step_time_s"]) <= 1e-15 or v["compute_s"] == 0.0, row
            assert 0.0 < v["expert_s"] <= v["compute_s"] + 1e-12, row
            assert (v["pilf_s"] > 0.0) == (model == "pilf"), row


# Model rwkv7: its own options, and the other models' options it has no use for
RWKV_OPTS = {"model": "rwkv7", "d-model": "16", "layers": "1", "head-size": "8", "vocab": "40", "seq-len": "16",
             "kv-pairs": "2", "batch": "8", "steps": "4", "warmup": "2", "eval-every": "2", "eval-samples": "16",
             "d-ff": "16"}
RWKV_CASES = [
    (["--head-size", "6"], "head-size", "does not divide d-model 16"),
    (["--head-size", "0"], "head-size", "positive"),
    (["--heads", "4"], "heads", "takes its heads from --head-size"),
    (["--experts", "4"], "experts", "applies only to the MoE models"),
    (["--top-k", "2"], "top-k", "applies only to the MoE models"),
    (["--tie-embeddings", "true"], "tie-embeddings", "never tied"),
    (["--dropout", "0.1"], "dropout", "not rwkv7"),
    (["--init-scale", "0.5"], "init-scale", "reference's initialisation"),
    (["--embed-init-std", "0.02"], "embed-init-std", "reference's initialisation"),
    (["--rwkv-decay-rank", "17"], "rwkv-decay-rank", "must be in [1, d-model 16]"),
    (["--rwkv-gate-rank", "-1"], "rwkv-gate-rank", "must be in [1, d-model 16]"),
    (["--rwkv-chunk", "0"], "rwkv-chunk", "must be in [1, 16]"),
    (["--rwkv-chunk", "17"], "rwkv-chunk", "must be in [1, 16]"),
    (["--l2wrap", "-1"], "l2wrap", "must be in [0, 1)"),
    (["--smk", "smk"], "smk", "needs an MoE model"),
    (["--model", "dense", "--head-size", "8"], "head-size", "applies only to model rwkv7"),
    (["--model", "gauss-moe", "--experts", "4", "--top-k", "2", "--heads", "2", "--head-size", "64", "--channel-mix", "false"],
     "channel-mix", "applies only to model rwkv7"),
    (["--model", "pilf", "--experts", "4", "--top-k", "2", "--heads", "2", "--head-size", "64", "--rwkv-chunk", "4"],
     "rwkv-chunk", "applies only to model rwkv7"),
    (["--task", "fmnist", "--patch", "7", "--vit-pool", "cls"], "vit-pool", "mean over the patch tokens"),
]


@pytest.mark.parametrize("args,option,reason", RWKV_CASES, ids=[c[1] + ":" + c[2] for c in RWKV_CASES])
def test_bad_rwkv7_option(tmp_path, args, option, reason):
    given = {a[2:] for a in args if a.startswith("--")}
    base = [a for k, v in RWKV_OPTS.items() if k not in given for a in ("--" + k, v)]
    out = tmp_path / "run"
    r = hyperrnn("train", *base, "--out", str(out), *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr + r.stdout
    assert len(lines) == 1 and f"'--{option}'" in lines[0] and reason in lines[0], r.stderr
    assert not out.exists()


def test_rwkv7_run_and_its_config_ini(tmp_path):
    """An rwkv7 run's config.ini records the neutral values it took (heads from head-size, no
    experts, an untied head) and reproduces the run through --config."""
    base = [a for k, v in RWKV_OPTS.items() for a in ("--" + k, v)]
    a, b = tmp_path / "a", tmp_path / "b"
    r = hyperrnn("train", *base, "--out", str(a))
    assert r.returncode == 0, r.stderr
    ini = (a / "config.ini").read_text()
    for line in ("heads = 2", "experts = 0", "top-k = 0", "tie-embeddings = false", "head-size = 8", "model = rwkv7"):
        assert line + "\n" in ini, line
    r = hyperrnn("train", "--config", str(a / "config.ini"), "--out", str(b))
    assert r.returncode == 0, r.stderr
    assert (a / "metrics.csv").read_text().splitlines()[1].split(",")[:3] == (b / "metrics.csv").read_text().splitlines()[1].split(",")[:3]


def test_eval_recurrent(tmp_path):
    """eval --recurrent (rwkv7, one token at a time) reproduces the parallel evaluation: the loss to
    float rounding through the recurrence (GEMM row blocking differs: ~1e-7 relative per op, bound
    1e-5), the accuracy to one flipped query at most; it prints the fixed state size. The attention
    models have no recurrent form: exit 2, with their KV cache printed by plain eval."""
    base = [a for k, v in RWKV_OPTS.items() for a in ("--" + k, v)]
    run = tmp_path / "r"
    assert hyperrnn("train", *base, "--out", str(run)).returncode == 0
    par = hyperrnn("eval", "--snapshot", str(run), "--csv", "-")
    rec = hyperrnn("eval", "--snapshot", str(run), "--csv", "-", "--recurrent")
    assert par.returncode == 0 and rec.returncode == 0, par.stderr + rec.stderr
    import re
    pat = r"heldout loss (\S+) acc (\S+) \((\d+) samples"
    (lp, ap, n), (lr, ar, _) = re.search(pat, par.stdout).groups(), re.search(pat, rec.stdout).groups()
    assert abs(float(lp) - float(lr)) <= 1e-5 * abs(float(lp))
    assert abs(float(ap) - float(ar)) <= 1.0 / (int(n) * 2) + 1e-12  # 2 queries per sample
    assert "recurrent: one token at a time" in rec.stdout
    # 1 layer: the time mix's shift row (16) + the channel mix's (16) + 2 heads x 8 x 8
    assert "recurrent state per sequence: 160 floats (640 bytes fp32), fixed" in rec.stdout
    dense = tmp_path / "d"
    assert hyperrnn("train", *TINY, "--out", str(dense)).returncode == 0
    r = hyperrnn("eval", "--snapshot", str(dense), "--csv", "-", "--recurrent")
    assert r.returncode == 2 and "option '--recurrent': needs model rwkv7" in r.stderr, r.stderr
    r = hyperrnn("eval", "--snapshot", str(dense), "--csv", "-")
    assert "KV cache per sequence at 16 positions: 512 floats (2048 bytes fp32), growing by 32 floats per position" in r.stdout


def test_banner_and_run_directory_name_blas_kernel_and_threads(tmp_path):
    """The banner (stdout and logs/train.log) and logs/invocations.csv name the BLAS, the kernel it
    chose and the thread count; with OPENBLAS_CORETYPE set, the kernel is the one it forces."""
    import re
    out = tmp_path / "run"
    r = hyperrnn("train", *TINY, "--threads", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    banner = r.stdout.splitlines()[0]
    m = re.search(r"on 1 rank\(s\) x 2 thread\(s\) -> \S+ \(OpenBLAS ([0-9.]+), kernel (\S+), 1 thread per call, attention (?:avx512|avx2|scalar); denormals flush\)$", banner)
    assert m, banner
    assert (out / "logs" / "train.log").read_text().splitlines()[0] == banner
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        assert m.group(2).lower() == forced.lower(), (banner, forced)
    inv = list(csv.DictReader(open(out / "logs" / "invocations.csv")))[-1]
    assert f"kernel {m.group(2)}" in inv["blas"] and m.group(1) in inv["blas"] and inv["threads_per_rank"] == "2"
