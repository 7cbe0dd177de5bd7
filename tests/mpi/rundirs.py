"""What the determinism tests compare in a run directory: theta (every dataset of the newest
snapshot, as raw bytes) and metrics.csv without its wall-clock columns (names ending in _s and
_per_s)."""
import csv
import glob

import h5py
import numpy as np


def theta(run_dir):
    manifest = sorted(glob.glob(str(run_dir / "snapshots" / "step_*" / "manifest.h5")))[-1]
    out = {}
    with h5py.File(manifest, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj[()]).tobytes())
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if not k.endswith(("_s", "_per_s"))} for row in csv.DictReader(f)]
