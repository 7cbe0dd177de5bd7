"""Sharded snapshots through the real binary under mpiexec: a run stopped and resumed (on the same,
fewer or more ranks) is bitwise the uninterrupted run (theta_sha256, metrics rows, eval rows); a
rank killed by SIGKILL in the middle of a snapshot write leaves the previous snapshot in charge and
`--resume auto` still reproduces the run; every corruption (truncated shard, flipped byte in a
dataset or elsewhere, missing shard, a snapshot of another run, another model shape) is detected
by `inspect` (exit 1), stops an explicit `--resume PATH` (exit 2, nothing written), and makes
`--resume auto` fall back to the previous snapshot and say so; h5py reads the manifest's virtual
datasets as the shards' arrays; --keep prunes."""
import csv
import math
import os
import re
import shutil
import subprocess

import h5py
import numpy as np
import pytest

BIN = os.environ.get("HYPERRNN_BIN")
MPIEXEC = os.environ.get("HYPERRNN_MPIEXEC", "mpiexec")
FMNIST = "/usr/share/datasets/fashion-mnist"

# pilf's reference profile (the default): one shared buffer, meta-training every step on a replay set
# cached per epoch (7 steps: a resume at step 12 needs the set drawn at step 7 from the snapshot),
# dropout, q's gradient through the GatingTransformer
RUN = ["--model", "pilf", "--experts", "4", "--top-k", "2", "--d-ff", "32", "--epoch-steps", "7",
       "--dynamic-top-k", "true", "--d-model", "16", "--heads", "2", "--layers", "2", "--vocab", "64", "--seq-len", "16",
       "--kv-pairs", "2", "--batch", "16", "--shards", "4", "--steps", "20", "--warmup", "2", "--eval-every", "10",
       "--eval-samples", "37", "--snapshot-every", "5"]
# our profile: per-layer buffers, PILR, fresh replay draws every 5 steps
RUN_HYPERRNN = ["--pilf-profile", "hyperrnn", "--meta-every", "5", "--meta-batch", "8",
                *[a for a in RUN if a not in ("--epoch-steps", "7")]]


def env(**extra):
    # no OPENBLAS_NUM_THREADS: the program makes BLAS single-threaded itself (tests/mpi/test_threads.py)
    e = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    e.pop("OPENBLAS_NUM_THREADS", None)
    e.update(extra)
    return e


def train(ranks, out, *extra, args=RUN, **env_extra):
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    cmd = [MPIEXEC, "--oversubscribe", "-n", str(ranks), BIN, "train", *args, "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(**env_extra))


def inspect(path):
    return subprocess.run([BIN, "inspect", str(path)], capture_output=True, text=True, timeout=120, env=env())


def theta(path):
    r = inspect(path)
    assert r.returncode == 0, r.stdout + r.stderr
    return re.search(r"^theta_sha256: ([0-9a-f]{64})$", r.stdout, re.M).group(1)


def rows(path, name="metrics.csv"):
    with open(path / name) as f:
        return [{k: v for k, v in row.items() if not k.endswith(("_s", "_per_s"))} for row in csv.DictReader(f)]


def snapshots(run):
    return sorted(p.name for p in (run / "snapshots").iterdir())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, on 2 ranks."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = train(2, out)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def reference_hyperrnn(tmp_path_factory):
    """The uninterrupted run of the hyperrnn profile, on 2 ranks."""
    out = tmp_path_factory.mktemp("ref_h") / "run"
    r = train(2, out, args=RUN_HYPERRNN)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def same_as_reference(run, reference):
    assert theta(run) == theta(reference)
    assert rows(run) == rows(reference)
    assert rows(run, "eval.csv") == rows(reference, "eval.csv")
    assert [r["step"] for r in rows(run, "timing.csv")] == [str(s) for s in range(1, 21)]


def test_theta_sha256_is_the_digest_of_the_parameters(reference):
    """inspect's theta_sha256 is sha256 over the float32 parameters in table order, then the
    GatingTransformer's: recomputed here from h5py through the manifest's virtual datasets."""
    import hashlib
    manifest = reference / "snapshots" / "step_00000020" / "manifest.h5"
    h = hashlib.sha256()
    with h5py.File(manifest, "r") as f:
        for name in f.attrs["param_order"].decode().split():
            h.update(np.ascontiguousarray(f["params/" + name][()], dtype="<f4").tobytes())
        for name in f.attrs["gating_order"].decode().split():
            h.update(np.ascontiguousarray(f["gating/" + name][()], dtype="<f4").tobytes())
    assert h.hexdigest() == theta(reference)


@pytest.mark.parametrize("first,second", [(2, 2), (4, 2), (4, 1), (1, 4)])
def test_stop_and_resume_is_the_uninterrupted_run(tmp_path, reference, first, second):
    out = tmp_path / "run"
    r = train(first, out, "--stop-after", "12")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stopping after step 12" in r.stdout
    assert snapshots(out) == ["latest", "step_00000005", "step_00000010", "step_00000012"]
    r = train(second, out, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"continuing from {out}/snapshots/step_00000012 (step 12, written by {first} rank(s), now {second})" in r.stdout
    same_as_reference(out, reference)


RUN_RWKV7 = ["--model", "rwkv7", "--head-size", "8", "--rwkv-chunk", "5", "--d-ff", "32", "--d-model", "16", "--layers", "2",
             "--vocab", "64", "--seq-len", "16", "--kv-pairs", "2", "--batch", "16", "--shards", "4", "--steps", "20",
             "--warmup", "2", "--eval-every", "10", "--eval-samples", "37", "--snapshot-every", "5"]


def test_rwkv7_stop_and_resume_on_other_ranks(tmp_path):
    """rwkv7 (its table, Adam state and w0's doubled rate) through the same snapshots: a run stopped
    on 4 ranks and resumed on 1 is bitwise the uninterrupted 2-rank run; inspect lists its tensors."""
    ref = tmp_path / "ref"
    r = train(2, ref, args=RUN_RWKV7)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "run"
    assert train(4, out, "--stop-after", "12", args=RUN_RWKV7).returncode == 0
    r = train(1, out, "--resume", "auto", args=RUN_RWKV7)
    assert r.returncode == 0, r.stderr[-2000:]
    assert theta(out) == theta(ref)
    assert rows(out) == rows(ref) and rows(out, "eval.csv") == rows(ref, "eval.csv")
    listing = inspect(ref).stdout
    assert "layers.1.att.v2" in listing and "layers.0.att.w0" in listing and "wpe" not in listing


def test_hyperrnn_profile_stop_and_resume_on_other_ranks(tmp_path, reference_hyperrnn):
    out = tmp_path / "run"
    r = train(4, out, "--stop-after", "12", args=RUN_HYPERRNN)
    assert r.returncode == 0, r.stderr[-2000:]
    r = train(2, out, "--resume", "auto", args=RUN_HYPERRNN)
    assert r.returncode == 0, r.stderr[-2000:]
    same_as_reference(out, reference_hyperrnn)


def test_replay_sets_are_part_of_the_snapshot(reference):
    """The reference profile's cached replay sets are in the snapshot: at step 10 (epoch 2 of 7
    steps) the set drawn at step 1 for (task 0, epoch 1), with as many items as the shared buffer
    then held (2 layers x floor(16 (1 - PI)) candidates), and the one drawn at step 8 for epoch 2 (the buffer full:
    128), each with their q, action over 2 layers x 4 experts and slots."""
    with h5py.File(reference / "snapshots" / "step_00000010" / "manifest.h5", "r") as f:
        assert int(f["replay/0/sets"][0]) == 2
        k1, k2 = f["replay/0/0/key"][()], f["replay/0/1/key"][()]
        pi1 = float(rows(reference)[0]["pi"])  # every sample's priority is 1 - the batch's PI
        assert list(k1) == [0, 1, 2 * math.floor(16 * (1 - pi1))] and list(k2) == [0, 2, 128]
        assert f["replay/0/1/q"].shape == (128, 16) and f["replay/0/1/action"].shape == (128, 8)
        idx = f["replay/0/0/idx"][()]
        assert idx.min() >= 0 and idx.max() < k1[2]
        assert f["buffer/shared/q"].shape == (128, 16) and f["buffer/shared/action"].shape == (128, 8)


def test_resume_an_explicit_snapshot_into_a_new_directory(tmp_path, reference):
    r = train(1, tmp_path / "new", "--resume", str(reference / "snapshots" / "step_00000010"))
    assert r.returncode == 0, r.stderr[-2000:]
    same_as_reference(tmp_path / "new", reference)  # rows up to step 10 come from the snapshot's run


def test_kill9_during_a_snapshot_write(tmp_path, reference):
    out = tmp_path / "run"
    r = train(2, out, HYPERRNN_FAULT="kill-in-snapshot:10:1")  # rank 1 dies halfway through its shard of step 10
    assert r.returncode != 0
    assert snapshots(out) == ["latest", "step_00000005", "step_00000010.tmp"]
    assert (out / "snapshots" / "latest").read_text().strip() == "step_00000005"
    r = train(2, out, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "continuing from" in r.stdout and "step_00000005" in r.stdout
    same_as_reference(out, reference)


def flip_in_dataset(path, dataset):
    with h5py.File(path, "r") as f:
        off = f[dataset].id.get_chunk_info(0).byte_offset + 10
    flip_at(path, off)


def flip_at(path, off):
    b = bytearray(path.read_bytes())
    b[off] ^= 0x04
    path.write_bytes(bytes(b))


def truncate(path):
    b = path.read_bytes()
    path.write_bytes(b[: len(b) // 2])


EXPERT = "params/layers.1.moe.experts.3.fc1.weight"
CORRUPTIONS = {
    "truncated shard": (lambda d: truncate(d / "shard-00001-of-00002.h5"),
                        "shard-00001-of-00002.h5: cannot open as an HDF5 file (truncated or not an HDF5 file)"),
    "flipped byte in a dataset": (lambda d: flip_in_dataset(d / "shard-00001-of-00002.h5", EXPERT),
                                  "shard-00001-of-00002.h5: dataset /" + EXPERT + ": cannot be read"),
    "flipped byte in the manifest's data": (lambda d: flip_in_dataset(d / "manifest.h5", "params/wte"),
                                            "manifest.h5: dataset /params/wte: cannot be read"),
    "flipped byte outside the datasets": (lambda d: flip_at(d / "shard-00000-of-00002.h5", 60),
                                          "shard-00000-of-00002.h5"),
    "missing shard": (lambda d: (d / "shard-00001-of-00002.h5").unlink(), "shard-00001-of-00002.h5: shard file is missing"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_is_detected(tmp_path, reference, case):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    damage, message = CORRUPTIONS[case]
    damage(run / "snapshots" / "step_00000020")
    # inspect: exit status 1 with the file (and dataset) named
    r = inspect(run)
    assert r.returncode == 1, r.stdout
    assert "verification: FAILED" in r.stdout and message in r.stderr, r.stderr
    # an explicit --resume PATH stops with exit 2 and writes nothing
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    r = train(2, tmp_path / "other", "--resume", str(run / "snapshots" / "step_00000020"))
    assert r.returncode == 2
    errors = [l for l in r.stderr.splitlines() if l.startswith("hyperrnn: error")]
    assert len(errors) == 1 and message in errors[0] and "option '--resume'" in errors[0], r.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    # --resume auto passes over it, says so, and reproduces the run from step 15
    r = train(2, run, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "passing over step_00000020" in r.stdout and message in r.stdout
    assert "continuing from" in r.stdout and "step_00000015" in r.stdout
    same_as_reference(run, reference)
    assert "step_00000020.superseded" in snapshots(run)  # the damaged one is kept aside, not deleted


def test_snapshot_of_another_run_or_shape(tmp_path, reference):
    other = tmp_path / "other"
    args = [a if a != "1" or RUN[i - 1] != "--seed" else "2" for i, a in enumerate(RUN)] + ["--seed", "2"]
    r = train(2, other, args=args)  # 2 ranks like the reference: the same shard file names
    assert r.returncode == 0, r.stderr[-2000:]
    # explicit: exit 2, naming why
    r = train(1, tmp_path / "x", "--resume", str(other / "snapshots" / "step_00000010"))
    assert r.returncode == 2 and "the snapshot belongs to another run (seed = 2 in the snapshot, 1 here)" in r.stderr, r.stderr
    shape = [a if a != "16" or RUN[i - 1] != "--d-model" else "32" for i, a in enumerate(RUN)]
    r = train(1, tmp_path / "y", "--resume", str(reference / "snapshots" / "step_00000010"), args=shape)
    assert r.returncode == 2
    assert "the snapshot's model shape does not match the options (d-model = 16 in the snapshot, 32 here)" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # auto: a foreign snapshot among this run's is passed over with the reason
    run = tmp_path / "run"
    r = train(2, run, "--stop-after", "12")
    assert r.returncode == 0, r.stderr[-2000:]
    shutil.copytree(other / "snapshots" / "step_00000015", run / "snapshots" / "step_00000015")
    r = train(2, run, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "passing over step_00000015" in r.stdout and "belongs to another run" in r.stdout
    same_as_reference(run, reference)
    # another run's manifest placed over this run's shards: inspect names the mismatch
    swapped = tmp_path / "swapped"
    shutil.copytree(reference, swapped)
    shutil.copy(other / "snapshots" / "step_00000020" / "manifest.h5", swapped / "snapshots" / "step_00000020" / "manifest.h5")
    r = inspect(swapped)
    assert r.returncode == 1 and "belongs to another snapshot or run" in r.stderr, r.stdout + r.stderr


def test_virtual_datasets_read_the_shards(reference):
    d = reference / "snapshots" / "step_00000020"
    with h5py.File(d / "manifest.h5", "r") as m:
        for group in ("params", "adam/m", "adam/v"):
            stacked = m[f"experts/{group}/layers.0.moe.experts.fc1.weight"][()]
            assert stacked.shape == (4, 32, 16)
            for e in range(4):
                with h5py.File(d / f"shard-0000{e // 2}-of-00002.h5", "r") as s:  # 2 ranks: experts 0-1, 2-3
                    one = s[f"{group}/layers.0.moe.experts.{e}.fc1.weight"][()]
                assert np.array_equal(stacked[e], one)
                assert np.array_equal(m[f"{group}/layers.0.moe.experts.{e}.fc1.weight"][()], one)
                assert np.any(one != 0)


def test_a_missing_shard_reads_as_fill_values_through_h5py_but_not_through_hyperrnn(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    d = run / "snapshots" / "step_00000020"
    (d / "shard-00001-of-00002.h5").unlink()
    with h5py.File(d / "manifest.h5", "r") as m:  # HDF5 itself does not complain
        assert np.all(m["params/layers.0.moe.experts.3.fc1.weight"][()] == 0)
    assert inspect(run).returncode == 1  # which is why the reader checks every shard file


def test_keep_prunes_only_after_a_new_snapshot_is_complete(tmp_path):
    out = tmp_path / "run"
    r = train(2, out, "--keep", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert snapshots(out) == ["latest", "step_00000015", "step_00000020"]


def test_out_with_snapshots_needs_resume(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    r = train(2, run)
    assert r.returncode == 2 and "already holds snapshots of this run (newest step_00000020)" in r.stderr
    r = train(2, run, "--resume", "auto")
    assert r.returncode == 0 and "already complete" in r.stdout


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Fashion-MNIST not installed")
def test_marathon_resume(tmp_path):
    # reference profile: replay sets cached per (task, epoch) are reused in the next cycle, also
    # after the resume (5 tasks of 2 classes x 2-step epochs)
    args = ["--model", "pilf", "--task", "fmnist-marathon", "--experts", "4", "--top-k", "2", "--d-ff", "16",
            "--d-model", "16", "--heads", "2", "--layers", "1", "--patch", "7", "--batch", "16",
            "--shards", "4", "--steps", "16", "--task-steps", "4", "--epoch-steps", "2", "--classes-per-task", "5",
            "--eval-samples", "30", "--eval-every", "0", "--snapshot-every", "3"]
    r = train(2, tmp_path / "a", args=args)
    assert r.returncode == 0, r.stderr[-2000:]
    r = train(4, tmp_path / "b", "--stop-after", "10", args=args)
    assert r.returncode == 0, r.stderr[-2000:]
    r = train(1, tmp_path / "b", "--resume", "auto", args=args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert theta(tmp_path / "a") == theta(tmp_path / "b")
    assert rows(tmp_path / "a", "marathon.csv") == rows(tmp_path / "b", "marathon.csv")
    assert rows(tmp_path / "a", "eval.csv") == rows(tmp_path / "b", "eval.csv")
