"""A run directory: its configuration (config.ini), its CSV files (metrics, timing, eval, marathon,
logs/invocations, logs/events) as tables of numpy columns, and its snapshots.

A table's rows must all have the header's number of fields; a row that does not is a torn file
(AnalysisError naming the line), except a last line without its newline while the run is still
in progress (its lock is held), which is a row being written and is left out.
Leaves out: the snapshot format (snapshot.py), plotting (plots.py and the commands).
"""
import csv
import fcntl
import io
import math
import os

import numpy as np

from .errors import AnalysisError

LOCK = ".lock"  # RunLock's file: a write lock (fcntl) while a run is going on


def in_progress(run_dir):
    """True when a hyperrnn process holds the run directory's lock (the run is going on)."""
    path = os.path.join(run_dir, LOCK)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while the writer holds its write lock
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


class Table:
    """A CSV file as columns: numeric columns are float64 arrays (nan where empty or 'nan'),
    others lists of strings. `len(t)` is the row count; `t["loss"]`, `"loss" in t`, `t.header`."""

    def __init__(self, path, header, rows):
        self.path, self.header = path, header
        self.columns = {}
        for i, name in enumerate(header):
            vals = [r[i] for r in rows]
            try:
                self.columns[name] = np.array([float(v) if v not in ("", "-") else math.nan for v in vals], dtype=float)
            except ValueError:
                self.columns[name] = vals
        self.rows = len(rows)

    def __len__(self):
        return self.rows

    def __contains__(self, name):
        return name in self.columns

    def __getitem__(self, name):
        if name not in self.columns:
            raise AnalysisError(f"{self.path}: no column '{name}'")
        return self.columns[name]

    def has_data(self, name):
        """The column exists and is not all nan (a quantity this model does not have)."""
        c = self.columns.get(name)
        return isinstance(c, np.ndarray) and len(c) > 0 and not np.all(np.isnan(c))



def read_table(path, writing=False, need_rows=True):
    """Reads a CSV written by hyperrnn. writing: the run is in progress (a last line without its
    newline is a row being written, not damage)."""
    if not os.path.exists(path):
        raise AnalysisError(f"{path} not found")
    try:
        with open(path, newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise AnalysisError(f"{path}: cannot be read ({e})")
    if not text.strip():
        raise AnalysisError(f"{path} is empty (no header)")
    lines = text.split("\n")
    tail_open = not text.endswith("\n")
    if tail_open and writing:
        lines = lines[:-1]
    body = "\n".join(lines)
    rows = list(csv.reader(io.StringIO(body)))
    rows = [r for r in rows if r]
    header = rows[0]
    for n, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise AnalysisError(f"{path} line {n}: {len(r)} fields, its header has {len(header)} (a torn or truncated file)")
    if need_rows and len(rows) < 2:
        raise AnalysisError(f"{path} has no rows yet")
    t = Table(path, header, rows[1:])
    if "step" in t and isinstance(t["step"], np.ndarray) and np.any(np.isnan(t["step"])):
        raise AnalysisError(f"{path}: a row without a step number (a damaged file)")
    return t


def parse_ini(text):
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out[k.strip()] = v.strip()
    return out


class Run:
    """A hyperrnn run directory (it holds config.ini). Tables load on first use."""

    def __init__(self, path, label=None):
        self.path = os.path.abspath(path)
        self.label = label or os.path.basename(self.path.rstrip("/"))
        with open(os.path.join(self.path, "config.ini")) as f:
            self.config_text = f.read()
        self.config = parse_ini(self.config_text)
        self.writing = in_progress(self.path)
        self._tables = {}

    def file(self, name):
        return os.path.join(self.path, name)

    def table(self, name, need_rows=True):
        """metrics.csv, timing.csv, eval.csv, marathon.csv, logs/invocations.csv, logs/events.csv."""
        key = (name, need_rows)
        if key not in self._tables:
            self._tables[key] = read_table(self.file(name), writing=self.writing, need_rows=need_rows)
        return self._tables[key]

    def optional(self, name):
        """The table, or None when the file is absent or has no rows (eval.csv of a run without
        evaluations, marathon.csv of an MQAR run)."""
        if not os.path.exists(self.file(name)):
            return None
        t = self.table(name, need_rows=False)
        return t if len(t) else None

    @property
    def metrics(self):
        return self.table("metrics.csv")

    @property
    def timing(self):
        return self.optional("timing.csv")

    @property
    def evals(self):
        return self.optional("eval.csv")

    @property
    def marathon(self):
        return self.optional("marathon.csv")

    @property
    def model(self):
        return self.config.get("model", "?")

    @property
    def task(self):
        return self.config.get("task", "?")

    def is_marathon(self):
        return self.task == "fmnist-marathon"

    def task_boundaries(self, last_step):
        """Steps at which a marathon task ends (every task-steps), up to last_step; [] otherwise."""
        if not self.is_marathon():
            return []
        ts = int(self.config.get("task-steps", "0") or 0)
        return list(range(ts, int(last_step) + 1, ts)) if ts > 0 else []

    def snapshots(self, verify=True):
        """The run's complete snapshots in step order (snapshot.Snapshot), each verified."""
        from .snapshot import list_snapshots, open_snapshot
        return [open_snapshot(p, verify=verify) for p in list_snapshots(self.path)]


def open_run(path, label=None):
    if not os.path.isdir(path):
        raise AnalysisError(f"{path}: not a directory (expected a hyperrnn run directory)")
    if not os.path.exists(os.path.join(path, "config.ini")):
        raise AnalysisError(f"{path}: not a hyperrnn run directory (no config.ini)")
    return Run(path, label)


def open_runs(paths):
    """Runs with distinct labels: the directory name, or parent/name where two names collide."""
    runs = [open_run(p) for p in paths]
    names = [r.label for r in runs]
    for r in runs:
        if names.count(r.label) > 1:
            r.label = os.path.join(os.path.basename(os.path.dirname(r.path)), r.label)
    return runs
