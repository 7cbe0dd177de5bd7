"""hyperrnn_analysis: read hyperrnn run directories and snapshots, and plot them.

    from hyperrnn_analysis import open_run, open_snapshot
    run = open_run("runs/my-run")
    run.metrics["loss"]                 # numpy column of metrics.csv
    for snap in run.snapshots():        # complete snapshots in step order, each verified
        theta = snap.params()           # name -> array (experts read through the manifest)

The command line is analysis/hyperrnn-analysis (cli.py). Needs numpy, h5py and matplotlib
(Debian: python3-numpy python3-h5py python3-matplotlib).
"""
from .errors import AnalysisError
from .runs import Run, Table, open_run, read_table
from .snapshot import Snapshot, list_snapshots, open_snapshot

__all__ = ["AnalysisError", "Run", "Table", "open_run", "read_table", "Snapshot", "list_snapshots", "open_snapshot"]
