"""Reading a run directory's CSV files for the analysis scripts: RUN may be the run directory or the
file itself; a missing or empty file ends the script with a one-line message."""
import csv
import os
import sys


def read_rows(run, filename, script):
    path = run if run.endswith(".csv") else os.path.join(run, filename)
    if not os.path.exists(path):
        sys.exit(f"{script}: {path} not found (is {run} a hyperrnn run directory of the right kind?)")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{script}: {path} has no rows yet")
    return path, rows
