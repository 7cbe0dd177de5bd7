"""`hyperrnn bench` and the peers (docs/performance.md): the report's fields and their
consistency, peak memory as the process's own, and the pilf peer running on a small model."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = os.environ.get("HYPERRNN_BIN")
ROOT = Path(__file__).resolve().parents[2]
PILF = ["--model", "pilf", "--d-model", "16", "--layers", "1", "--heads", "2", "--experts", "4", "--top-k", "2",
        "--min-k", "2", "--d-ff", "16", "--vocab", "40", "--seq-len", "16", "--kv-pairs", "2", "--batch", "8",
        "--buffer-capacity", "16", "--history", "3"]


def bench(*args, **kw):
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    r = subprocess.run([BIN, "bench", "--threads", "1", "--bench-steps", "2", "--repeats", "1", *args],
                       capture_output=True, text=True, timeout=120, **kw)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_bench_reports_every_phase_and_they_add_up():
    out = bench(*PILF)
    assert re.search(r"^sgemm_peak_gflops: [0-9.]+ \(OpenBLAS .*kernel \S+, 1 thread per call, attention (?:avx512|avx2|scalar); denormals flush\)$", out, re.M), out
    tps = float(re.search(r"^tokens_per_s: (\d+)", out, re.M).group(1))
    step = float(re.search(r"^step_time_s: median ([0-9.]+)", out, re.M).group(1))
    assert tps == pytest.approx(8 * 16 / step, rel=0.02), out  # tokens/s is batch x seq-len / step
    line = re.search(r"^phase_s_per_step: step ([0-9.]+) = (.*)$", out, re.M)
    parts = dict((n, float(v)) for n, v in re.findall(r"(\w+) (-?[0-9.]+) \(", line.group(2)))
    assert set(parts) == {"gemm", "attention", "routing_dispatch", "recurrence", "pilf", "optimizer", "exchanges",
                          "elementwise_other"}, line.group(0)
    # elementwise_other is the step's remainder clamped at zero, so a phase counted twice (nested
    # scopes of two phases, a GEMM charged to both) makes the sum exceed the step
    assert all(v >= 0 for v in parts.values()), line.group(0)
    assert sum(parts.values()) == pytest.approx(float(line.group(1)), abs=5e-5 * len(parts)), line.group(0)
    assert parts["pilf"] > 0 and parts["gemm"] > 0 and parts["recurrence"] == 0, line.group(0)
    # the GEMM column by phase: the model's, attention's, routing's and the recurrence's GEMMs add up
    # to the gemm column (PILF's GEMMs are inside its own phase); a pilf step has GEMMs in all but
    # the recurrence
    by = re.search(r"^gemm_by_phase_s_per_step: (.*)$", out, re.M).group(1)
    g = dict((n, float(v)) for n, v in re.findall(r"(\w+) ([0-9.]+) \(", by))
    assert set(g) == {"model", "attention", "routing", "recurrence", "pilf"}, by
    assert g["model"] + g["attention"] + g["routing"] + g["recurrence"] == pytest.approx(parts["gemm"], abs=5e-5), by
    assert g["model"] > 0 and g["attention"] > 0 and g["routing"] > 0 and g["pilf"] > 0 and g["recurrence"] == 0, by
    assert g["pilf"] <= parts["pilf"] + 5e-5, by
    flops = int(re.search(r"^model_flops_per_token: (\d+)", out, re.M).group(1))
    gflops = float(re.search(r"^model_gflops: ([0-9.]+)", out, re.M).group(1))
    assert gflops == pytest.approx(flops * tps / 1e9, rel=0.02), out


def test_bench_peak_memory_is_its_own_not_its_parents():
    """Linux carries getrusage's ru_maxrss over exec from the forked parent: a bench started by a
    process holding 600 MiB reported 600 MiB. It reads its own VmHWM now."""
    code = ("import subprocess, sys\n"
            "block = bytearray(600 * 2**20)\n"
            "for i in range(0, len(block), 4096): block[i] = 1\n"  # resident, not just reserved
            "sys.stdout.write(subprocess.run(sys.argv[1:], capture_output=True, text=True).stdout)\n")
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    r = subprocess.run([sys.executable, "-c", code, BIN, "bench", "--threads", "1", "--bench-steps", "2", "--repeats", "1",
                        *PILF], capture_output=True, text=True, timeout=120)
    peak = int(re.search(r"^peak_rss_mib: (\d+)", r.stdout, re.M).group(1))
    assert 1 <= peak < 300, r.stdout  # this tiny model needs a few tens of MiB


def test_pilf_peer_runs_the_reference_profile():
    if not BIN:
        pytest.skip("HYPERRNN_BIN not set: run through ctest")
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, str(ROOT / "analysis" / "bench_pilf_peer.py"), "--binary", BIN, "--steps", "1",
                        "--torch-only", "--", *PILF], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    f = r.stdout.split()
    assert f[0] == "torch_only" and float(f[2]) > 0 and float(f[4]) >= float(f[6]) > 0, r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "analysis" / "bench_pilf_peer.py"), "--binary", BIN, "--",
                        *PILF, "--pilf-profile", "hyperrnn"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "reference profile" in r.stderr, r.stderr
