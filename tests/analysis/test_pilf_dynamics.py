"""analysis/pilf_dynamics.py: window means and the SMK coverage on a hand-made metrics.csv."""
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "analysis", "pilf_dynamics.py")


def test_windows_and_coverage(tmp_path):
    head = "step,loss,skipped,pi,lr_mod_expert,gating_loss,tokens_l0_e0,tokens_l0_e1,tokens_l0_e2,smk_l0\n"
    rows = ["1,4.0,0,0.1,0.5,nan,10,30,0,1\n",      # keeps expert 0: 10 of 40 tokens
            "2,2.0,0,0.3,0.7,1.5,20,20,0,3\n",      # keeps 0 and 1: all 40
            "3,9.9,1,0.0,0.0,nan,40,0,0,1\n",       # skipped: ignored
            "4,1.0,0,0.5,0.9,0.5,0,10,30,4\n"]      # keeps 2: 30 of 40
    (tmp_path / "metrics.csv").write_text(head + "".join(rows))
    r = subprocess.run([sys.executable, SCRIPT, str(tmp_path), "--windows", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    header, line = r.stdout.strip().splitlines()
    vals = dict(zip(header.split("\t"), line.split("\t")))
    assert vals["steps"] == "1-4"
    assert abs(float(vals["loss"]) - (4.0 + 2.0 + 1.0) / 3) < 1e-3  # printed to 4 significant digits
    assert float(vals["gating_loss"]) == 1.0  # nan rows are left out of the mean
    assert abs(float(vals["smk_coverage_l0"]) - (0.25 + 1.0 + 0.75) / 3) < 1e-4


def test_missing(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "not found" in r.stderr
