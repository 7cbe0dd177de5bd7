"""The performance model (analysis/hyperrnn_analysis/perfmodel.py) against a prediction computed by
hand for a small configuration, and its refusals of inputs it cannot model."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "analysis"))
from hyperrnn_analysis import perfmodel  # noqa: E402
from hyperrnn_analysis.errors import AnalysisError  # noqa: E402

NET = perfmodel.uniform_network("test", 1e9, 1e-6)  # 1 GB/s, 1 us per message


def inputs(**kw):
    base = dict(model="gauss-moe", kind="weak", t_dense=0.010, t_expert=0.004, t_opt=0.001, t_local_sum=0.0005,
                tokens=1024, batch=32, d_model=64, top_k=2, moe_layers=2, experts=4, shards=4,
                replicated_params=10000, expert_params=20000, small_allreduces=4)
    base.update(kw)
    return perfmodel.Inputs(**base)


def test_weak_prediction_by_hand():
    p = perfmodel.predict(inputs(), 2, NET)
    a, b = 1e-6, 1e9
    # per MoE layer: counts allgather, 1 message of 4 experts x 2 (E grows with P in weak) x 4 B;
    # 4 all-to-alls of the rows leaving the rank: 1024 tokens x top-2 x 1/2 leave = 1024 rows of 64 floats
    counts = 1 * a + 1 * (8 * 4) / b
    rows = 4 * (1 * a + 1024 * 64 * 4 / b)
    assert p["exchange"] == pytest.approx(2 * (counts + rows), rel=1e-12)
    # the local shard sum, then the int64 allreduce of 10000 replicated gradients (2 log2 2 = 2
    # messages, 2 (P-1)/P = 1 of the 80000 bytes), and 4 small ones of 8 bytes
    red = 0.0005 + (2 * a + 80000 / b) + 4 * (2 * a + 8 / b)
    assert p["reduce"] == pytest.approx(red, rel=1e-12)
    assert p["dense"] == 0.010 and p["experts"] == 0.004 and p["optimizer"] == 0.001 and p["pilf"] == 0.0
    assert p["step"] == pytest.approx(0.015 + 2 * (counts + rows) + red, rel=1e-12)
    t1 = 0.010 + 0.004 + 0.001 + 0.0005
    assert perfmodel.efficiency(inputs(), 2, NET) == pytest.approx(t1 / p["step"], rel=1e-12)


def test_strong_prediction_by_hand():
    inp = inputs(kind="strong", model="pilf", t_pilf=0.004)
    p = perfmodel.predict(inp, 4, NET)
    assert p["dense"] == pytest.approx(0.010 / 4) and p["experts"] == pytest.approx(0.004 / 4)
    # a third of the parameters is replicated: 0.001 x (1/3 + 2/3 / 4)
    assert p["optimizer"] == pytest.approx(0.001 * (1 / 3 + (2 / 3) / 4))
    assert p["pilf"] == 0.004  # replicated: an Amdahl term
    # pilf's curation allgathers per layer: the rank's 8 samples' q (8 x 64 x 4 B) and (loss, entropy) (8 x 16 B)
    lg = 2
    gathers = 2 * sum(lg * 1e-6 + 3 * by / 1e9 for by in (8 * 64 * 4, 8 * 16))
    red = 0.0005 + (2 * lg * 1e-6 + 1.5 * 80000 / 1e9) + 4 * (2 * lg * 1e-6 + 1.5 * 8 / 1e9) + gathers
    assert p["reduce"] == pytest.approx(red, rel=1e-12)
    best, bad, bound = perfmodel.largest_efficient(inp, NET)
    assert best == 1 and bad == 2 and bound == "pilf"  # the replicated PILF work bounds strong scaling


@pytest.mark.parametrize("change,P,why", [
    ({"model": "rwkv"}, 2, "knows the models"),
    ({"kind": "sideways"}, 2, "strong or weak"),
    ({"kind": "strong", "shards": 4}, 3, "do not divide the 4 shards"),
    ({"kind": "strong", "shards": 8}, 8, "exceed the 4 experts"),
    ({"t_dense": -1.0}, 2, "finite time"),
    ({"t_expert": math.nan}, 2, "finite time"),
    ({}, 0, "positive integer"),
])
def test_refuses_what_it_cannot_model(change, P, why):
    with pytest.raises(AnalysisError, match=why):
        perfmodel.predict(inputs(**change), P, NET)


def test_refuses_a_network_without_bandwidth():
    with pytest.raises(AnalysisError, match="bandwidth > 0"):
        perfmodel.predict(inputs(), 2, perfmodel.uniform_network("bad", 0.0, 1e-6))


def test_network_fit_from_the_comm_benchmark():
    # synthetic rows at P = 2 and P = 4: time = per-call latency + link bytes / bandwidth; the fit uses P = 4
    P, alpha, beta = 4, 2e-6, 5e9
    rows = [("alltoallv", 2, 8, 1.0), ("alltoallv", 2, 64, 2.0)]  # another P: ignored
    for b in (8, 64, 512, 4096, 32768, 262144, 2097152):
        rows.append(("alltoallv", P, b, (P - 1) * alpha + (P - 1) * b / beta))
        rows.append(("allgather", P, b, 2 * alpha + (P - 1) * b / beta))
        rows.append(("allreduce_int64", P, b, 4 * alpha + 2 * (P - 1) / P * b / beta))
    net = perfmodel.fit_network(rows)
    for op in ("alltoallv", "allgather", "allreduce_int64"):
        assert net.beta[op] == pytest.approx(beta, rel=1e-9)
        # the smallest message's time includes its (tiny) bandwidth term
        assert net.alpha[op] == pytest.approx(alpha, rel=1e-2)
    with pytest.raises(AnalysisError, match="no rows at P > 1"):
        perfmodel.fit_network([("alltoallv", 1, 8, 1e-8)])
