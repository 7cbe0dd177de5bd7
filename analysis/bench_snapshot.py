#!/usr/bin/env python3
"""Snapshot write throughput against `dd conv=fsync` in the same directory, and the snapshot
overhead at a given interval. Runs `hyperrnn train` (on --ranks ranks) writing a snapshot every
--every steps, reads each snapshot's size and write time from the run's log and timing.csv, runs dd
with the same byte count REPEATS times, and prints medians:

    /usr/bin/python3 analysis/bench_snapshot.py --dir /scratch/bench [--ranks 2] [--steps 20] [--every 5] \
        [--interval 1000] -- --config jobs/configs/mqar-pilf.ini [hyperrnn options]

The overhead is snapshot_time / (interval x median step time + snapshot_time): the share of a run's
time that snapshots every `interval` steps cost. Each rank runs one thread (--threads 1); the binary is
$HYPERRNN_BIN or build/bin/hyperrnn.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hyperrnn_analysis import read_table  # noqa: E402


def dd_mbps(directory, mb):
    out = subprocess.run(["dd", "if=/dev/zero", f"of={directory}/dd.bin", "bs=1M", f"count={mb}", "conv=fsync"],
                         capture_output=True, text=True, check=True).stderr
    os.remove(f"{directory}/dd.bin")
    m = re.search(r"copied, ([0-9.]+) s", out)
    return mb * 1048576 / 1e6 / float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--interval", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    opts = [o for o in a.opts if o != "--"]
    binary = os.environ.get("HYPERRNN_BIN", "build/bin/hyperrnn")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    os.makedirs(a.dir, exist_ok=True)
    sizes, times, steps, dd = [], [], [], []
    for rep in range(a.repeats):
        out = os.path.join(a.dir, f"run{rep}")
        shutil.rmtree(out, ignore_errors=True)
        log = subprocess.run(["mpiexec", "--oversubscribe", "-n", str(a.ranks), binary, "train", "--threads", "1", *opts, "--steps",
                              str(a.steps), "--snapshot-every", str(a.every), "--eval-every", "0", "--out", out],
                             capture_output=True, text=True, env=env, check=True).stdout
        for mb, s in re.findall(r"snapshot step_\d+: ([0-9.]+) MB in ([0-9.]+) s", log):
            sizes.append(float(mb))
            times.append(float(s))
        steps += list(read_table(os.path.join(out, "timing.csv"))["step_time_s"])
        shutil.rmtree(out)
        dd.append(dd_mbps(a.dir, max(1, round(statistics.median(sizes)))))
    mb, t, st = statistics.median(sizes), statistics.median(times), statistics.median(steps)
    print(f"snapshot: {mb:.2f} MB, write {t * 1e3:.1f} ms median of {len(times)} -> {mb / t:.1f} MB/s")
    print(f"dd conv=fsync, {max(1, round(mb))} MiB: {statistics.median(dd):.1f} MB/s median of {len(dd)} "
          f"(snapshot / dd = {mb / t / statistics.median(dd):.2f})")
    print(f"step time {st * 1e3:.2f} ms median; snapshot every {a.interval} steps costs "
          f"{100 * t / (a.interval * st + t):.3f}% of the run")


if __name__ == "__main__":
    sys.exit(main())
