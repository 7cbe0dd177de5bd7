"""On resume every CSV of the run is checked against the snapshot (docs/architecture.md): a torn or
altered row that the snapshot holds itself (metrics.csv at the snapshot's step) is restored and said
so in one line, and the continuation equals the uninterrupted run; rows after the snapshot's step
(the interrupted run's) are dropped; any other damage (header, missing, repeated or malformed rows,
the last evaluation's row, a missing file) stops the resume with exit 2 naming the file and line,
and changes nothing."""
import csv
import os
import shutil
import subprocess

import pytest

BIN = os.environ.get("HYPERRNN_BIN")
ARGS = ["--model", "gauss-moe", "--d-model", "16", "--layers", "1", "--heads", "2", "--experts", "4", "--top-k", "2",
        "--vocab", "40", "--seq-len", "16", "--kv-pairs", "2", "--batch", "8", "--steps", "10", "--warmup", "2",
        "--eval-every", "5", "--eval-samples", "16", "--threads", "1"]


def hyperrnn(*args):
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    return subprocess.run([BIN, "train", *ARGS, *args], capture_output=True, text=True, timeout=120)


def rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if not k.endswith(("_s", "_per_s"))} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume_csv")
    whole, stopped = base / "whole", base / "stopped"
    assert hyperrnn("--out", str(whole)).returncode == 0
    r = hyperrnn("--out", str(stopped), "--stop-after", "5")
    assert r.returncode == 0, r.stderr
    return whole, stopped


def damaged_copy(tmp_path, stopped, name, damage):
    """The stopped run copied, with `damage` done to its file `name`."""
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    damage(run / name)
    return run


def lines_of(p):
    return p.read_text().splitlines(keepends=True)


def tear_last(p):  # the snapshot step's row cut in the middle (no line end)
    ls = lines_of(p)
    p.write_text("".join(ls[:-1]) + ls[-1][: len(ls[-1]) // 2])


def alter_last(p):
    ls = lines_of(p)
    p.write_text("".join(ls[:-1]) + ls[-1].replace(",", ",9", 1))


def append_future(p):  # the interrupted run got further than its snapshot, and was cut mid-row
    ls = lines_of(p)
    p.write_text("".join(ls) + ls[-1].replace("5,", "6,", 1) + "7,0.1,0")


REPAIRED = {
    "torn last row": ("metrics.csv", tear_last, "restored from the snapshot"),
    "altered last row": ("metrics.csv", alter_last, "restored from the snapshot"),
    "rows after the snapshot": ("metrics.csv", append_future, None),
    "timing row after the snapshot torn": ("timing.csv", append_future, None),
}


@pytest.mark.parametrize("case", list(REPAIRED))
def test_repaired_or_dropped(tmp_path, runs, case):
    whole, stopped = runs
    name, damage, note = REPAIRED[case]
    run = damaged_copy(tmp_path, stopped, name, damage)
    r = hyperrnn("--out", str(run), "--resume", "auto")
    assert r.returncode == 0, r.stderr
    notes = [l for l in r.stdout.splitlines() if "restored from the snapshot" in l]
    assert len(notes) == (1 if note else 0), r.stdout
    if note:
        assert name in notes[0]
    assert rows(run / "metrics.csv") == rows(whole / "metrics.csv")
    assert (run / "eval.csv").read_text() == (whole / "eval.csv").read_text()
    assert [r["step"] for r in rows(run / "timing.csv")] == [str(s) for s in range(1, 11)]


def delete_line(k):
    def f(p):
        ls = lines_of(p)
        p.write_text("".join(ls[:k] + ls[k + 1:]))
    return f


def insert_line(k, text):
    def f(p):
        ls = lines_of(p)
        p.write_text("".join(ls[:k] + [text] + ls[k:]))
    return f


def change_header(p):
    ls = lines_of(p)
    p.write_text(ls[0].replace("loss", "los", 1) + "".join(ls[1:]))


REFUSED = {
    "header": ("metrics.csv", change_header, "metrics.csv line 1: the header is not this run's"),
    "deleted row": ("metrics.csv", delete_line(3), "metrics.csv line 4: rows for steps 3-3 are missing"),
    "garbage row": ("metrics.csv", insert_line(2, "\x00\x01garbage\n"), "metrics.csv line 3: a malformed row"),
    "duplicated row": ("metrics.csv", lambda p: insert_line(3, lines_of(p)[2])(p), "step 2 again (a duplicated row)"),
    "deleted timing row": ("timing.csv", delete_line(2), "timing.csv line 3: rows for steps 2-2 are missing"),
    "last evaluation missing": ("eval.csv", delete_line(1), "eval.csv"),
    "missing file": ("metrics.csv", lambda p: p.unlink(), "metrics.csv: missing"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_naming_file_and_line(tmp_path, runs, case):
    _, stopped = runs
    name, damage, message = REFUSED[case]
    run = damaged_copy(tmp_path, stopped, name, damage)
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = hyperrnn("--out", str(run), "--resume", "auto")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "option '--resume'" in lines[0] and message in lines[0], r.stderr
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing changed
