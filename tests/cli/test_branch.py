"""`hyperrnn train --init-from SNAPSHOT --out NEW`: a new run whose theta starts from the snapshot's
(its digest recorded in NEW/provenance.ini and equal to `hyperrnn inspect`'s theta_sha256 of the
parent), with another schedule, task settings or PILF knobs as long as the model shape fits; the
GatingTransformer and buffers come along for pilf; a shape that does not fit, or a missing snapshot,
is exit 2 with one line and no run directory."""
import os
import re
import subprocess

import pytest

BIN = os.environ.get("HYPERRNN_BIN")
SMALL = ["--d-model", "16", "--layers", "1", "--heads", "2", "--experts", "4", "--top-k", "2", "--vocab", "40",
         "--seq-len", "16", "--kv-pairs", "2", "--batch", "8", "--eval-every", "0", "--eval-samples", "16", "--threads", "1"]


def hyperrnn(*args):
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120)


def theta(path):
    r = hyperrnn("inspect", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    return re.search(r"^theta_sha256: ([0-9a-f]{64})$", r.stdout, re.M).group(1)


def provenance(run):
    return dict(l.split(" = ", 1) for l in (run / "provenance.ini").read_text().splitlines() if " = " in l)


@pytest.mark.parametrize("model,extra,branch_extra", [
    ("gauss-moe", [], ["--steps", "12", "--lr", "0.001"]),                      # a longer, slower schedule
    ("pilf", ["--d-ff", "16"], ["--steps", "9", "--meta-every", "2", "--init-optimizer", "true"]),  # other PILF knobs
])
def test_branch_starts_from_the_parents_theta(tmp_path, model, extra, branch_extra):
    parent, child = tmp_path / "parent", tmp_path / "child"
    r = hyperrnn("train", *SMALL, "--model", model, *extra, "--steps", "6", "--out", str(parent))
    assert r.returncode == 0, r.stderr
    r = hyperrnn("train", *SMALL, "--model", model, *extra, *branch_extra, "--init-from", str(parent), "--out", str(child))
    assert r.returncode == 0, r.stderr
    assert "init: theta from" in r.stdout
    p = provenance(child)
    assert p["parent_step"] == "6"
    assert p["parent_theta_sha256"] == theta(parent) == p["start_theta_sha256"]
    if model == "pilf":
        assert "GatingTransformer and the experience buffers from the snapshot" in r.stdout
        assert p["init_optimizer"] == "true"
    # the branch is a run of its own: it trained on, and config.ini names its parent
    assert theta(child) != theta(parent)
    assert "init-from = " + str(parent) in (child / "config.ini").read_text()


def test_branch_that_does_not_fit(tmp_path):
    parent = tmp_path / "parent"
    assert hyperrnn("train", *SMALL, "--steps", "3", "--out", str(parent)).returncode == 0
    wider = [a if a != "16" or SMALL[i - 1] != "--d-model" else "32" for i, a in enumerate(SMALL)]
    for base, args, message in ((wider, [], "does not fit this run's"),
                                (SMALL, ["--model", "dense"], "does not fit this run's")):
        child = tmp_path / "child"
        r = hyperrnn("train", *base, "--steps", "3", *args, "--init-from", str(parent), "--out", str(child))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "option '--init-from'" in lines[0] and message in lines[0], r.stderr
        assert not child.exists()
    r = hyperrnn("train", *SMALL, "--steps", "3", "--init-from", str(tmp_path / "nothing"), "--out", str(tmp_path / "c2"))
    assert r.returncode == 2 and "option '--init-from'" in r.stderr
    assert not (tmp_path / "c2").exists()
