"""analysis/marathon_summary.py on hand-made marathon.csv files: the table carries the last
validation's per-task accuracies and forgetting, the best mean and the mean forgetting over passes;
a missing file is a one-line error."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "analysis", "marathon_summary.py")


def write_run(d, rows):
    d.mkdir()
    with open(d / "marathon.csv", "w") as f:
        f.write("step,cycle,task,acc_task0,acc_task1,avg_acc,avg_forgetting\n")
        for r in rows:
            f.write(",".join(str(x) for x in r) + "\n")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


def test_summary_table(tmp_path):
    write_run(tmp_path / "pilf", [(10, 0, 0, 0.9, "nan", 0.9, 0), (20, 0, 1, 0.7, 0.8, 0.75, 0.2), (30, 1, 0, 0.95, 0.6, 0.775, 0.2)])
    r = run(str(tmp_path / "pilf"), "--markdown")
    assert r.returncode == 0, r.stderr
    line = [l for l in r.stdout.splitlines() if l.startswith("| pilf")][0]
    cells = [c.strip() for c in line.strip("|").split("|")]
    # run, steps, cycles, task0, task1, mean, forgetting, mean forgetting over passes
    assert cells == ["pilf", "30", "2", "0.950", "0.600", "0.775", "0.200", f"{(0 + 0.2 + 0.2) / 3:.3f}"]


def test_plot(tmp_path):
    write_run(tmp_path / "a", [(10, 0, 0, 0.9, "nan", 0.9, 0), (20, 0, 1, 0.7, 0.8, 0.75, 0.2)])
    out = tmp_path / "m.png"
    r = run(str(tmp_path / "a"), "--plot", str(out))
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 1000


def test_missing_run(tmp_path):
    r = run(str(tmp_path / "nope"))
    assert r.returncode != 0 and "not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
