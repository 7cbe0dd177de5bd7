"""A latency-bandwidth model of the expert-parallel training step (docs/scaling.md).

Measured inputs (`Inputs`): at P = 1, per step, the compute of the dense parts (attention,
embeddings, routers, head: one work item per canonical shard), of the experts (expert_s), PILF's
own work (pilf_s: routing, curation, meta-training; replicated on every rank) and the optimizer
(its replicated share by parameter count); the step's sizes (tokens per step, d_model, top-k, MoE
layers, experts, replicated parameters, global batch); and the network (`Network`: latency alpha
in seconds and bandwidth beta in bytes/s per collective kind, fitted from `hyperrnn bench --comm`
or given).

The step on P ranks, per rank (strong: fixed global batch; weak: fixed batch, shards and experts
per rank, so E and the global batch grow with P):
  dense     strong t_dense / P                    weak t_dense
  experts   strong t_expert / P                   weak t_expert
  optimizer t_opt * (r + (1 - r) / P)             (r = replicated share of the parameters; weak: the
                                                   expert share stays per rank: t_opt)
  pilf      t_pilf + g_pilf * (B(P) / B(1) - 1)   (replicated: every rank curates the whole global
                                                   batch; g_pilf = the part that grows with it)
  exchange  per MoE layer: allgather of the P x E counts, then 4 personalised all-to-alls (forward
            and backward, there and back) of the rows that leave the rank: (P - 1) alpha_a2a +
            bytes / beta_a2a, bytes = rows x (P - 1) / P x d_model x 4, rows = tokens per rank x top-k
  reduce    the shard sum's local part (constant per rank), then the exact shard sum: an int64 allreduce of the replicated gradient (8 bytes per
            parameter), ring/recursive-doubling: 2 log2(P) alpha_ar + 2 (P - 1) / P x bytes / beta_ar;
            plus `small_allreduces` 8-byte ones per step; pilf adds per MoE layer an allgather of the
            rank's q rows (B/P x d_model x 4 bytes) and one of its samples' (loss, entropy):
            log2(P) alpha_ag + (P - 1) x bytes / beta_ag
Leaves out: overlap of communication with compute (there is none in the step), contention between
ranks on one node's memory bandwidth, load imbalance between experts, several ranks per node
sharing a link (a `Network` is per rank).
"""
import math
from dataclasses import dataclass, field

from .errors import AnalysisError

MODELS = ("dense", "moe", "gauss-moe", "pilf")


@dataclass
class Network:
    name: str
    alpha: dict = field(default_factory=dict)  # op -> seconds per message
    beta: dict = field(default_factory=dict)   # op -> bytes per second

    def check(self):
        for op in ("alltoallv", "allreduce_int64", "allgather"):
            a, b = self.alpha.get(op), self.beta.get(op)
            if a is None or b is None or not (a >= 0 and math.isfinite(a)) or not (b > 0 and math.isfinite(b)):
                raise AnalysisError(f"network '{self.name}': {op} needs a latency >= 0 and a bandwidth > 0 "
                                    f"(got alpha={a}, beta={b})")


def uniform_network(name, bandwidth, latency):
    """The same latency (s) and bandwidth (bytes/s) for every collective (a documented network)."""
    ops = ("alltoallv", "allreduce_int64", "allgather")
    return Network(name, {o: latency for o in ops}, {o: bandwidth for o in ops})


def fit_network(rows, name="measured"):
    """alpha, beta per op from bench --comm rows [(op, ranks, bytes, seconds)], at the largest P > 1
    measured: time = alpha_eff + bytes / beta, alpha_eff the per-call latency (the smallest
    message's time) turned into a per-message alpha by the op's message count at that P, beta
    from the slope between the two largest messages (a least-squares line is ruled by the large
    messages and puts the latency at ~0)."""
    ops = ("alltoallv", "allreduce_int64", "allgather")
    Ps = [int(p) for _, p, _, _ in rows if int(p) > 1]
    if not Ps:
        raise AnalysisError("the communication benchmark has no rows at P > 1 (run the study with a P > 1)")
    P = max(Ps)
    net = Network(f"{name}, P = {P}")
    lg = max(1, math.ceil(math.log2(P)))
    volume = {"alltoallv": P - 1, "allgather": P - 1, "allreduce_int64": 2 * (P - 1) / P}  # -> one link's bytes
    messages = {"alltoallv": P - 1, "allgather": lg, "allreduce_int64": 2 * lg}
    for op in ops:
        pts = sorted((float(b), float(s)) for o, p, b, s in rows if o == op and int(p) == P)
        if len(pts) < 2:
            raise AnalysisError(f"the communication benchmark has fewer than 2 {op} sizes at P = {P}")
        (b0, s0), (b1, s1) = pts[-2], pts[-1]
        slope = (s1 - s0) / (b1 - b0) if b1 > b0 and s1 > s0 else 0.0
        net.alpha[op] = pts[0][1] / messages[op]
        net.beta[op] = volume[op] / slope if slope > 0 else 1e12  # 1e12: no measurable bandwidth term
    return net


@dataclass
class Inputs:
    model: str
    kind: str            # strong | weak
    t_dense: float       # s per step at P = 1: compute outside the experts
    t_expert: float      # s: the experts' FFNs
    t_opt: float         # s: optimizer
    t_local_sum: float = 0.0  # s: the shard sum's local part (every rank, whatever P: reduce_s at P = 1)
    t_pilf: float = 0.0  # s: PILF's replicated work
    g_pilf: float = 0.0  # s: the part of t_pilf that grows with the global batch (per B(1))
    tokens: int = 0      # tokens per step at P = 1 (global batch x positions)
    batch: int = 1       # global batch at P = 1
    d_model: int = 0
    top_k: int = 1
    moe_layers: int = 0
    experts: int = 1     # at P = 1
    shards: int = 1      # at P = 1
    replicated_params: int = 0
    expert_params: int = 0
    small_allreduces: int = 4

    def check(self, P):
        if self.model not in MODELS:
            raise AnalysisError(f"the performance model knows the models {', '.join(MODELS)}, not '{self.model}'")
        if self.kind not in ("strong", "weak"):
            raise AnalysisError(f"scaling kind must be strong or weak, not '{self.kind}'")
        if not isinstance(P, int) or P < 1:
            raise AnalysisError(f"rank count must be a positive integer, got {P!r}")
        for n in ("t_dense", "t_expert", "t_opt", "t_local_sum", "t_pilf", "g_pilf"):
            v = getattr(self, n)
            if not (v >= 0 and math.isfinite(v)):
                raise AnalysisError(f"{n} must be a finite time >= 0, got {v}")
        if self.kind == "strong":
            if self.shards % P:
                raise AnalysisError(f"strong scaling: {P} ranks do not divide the {self.shards} shards")
            if self.moe_layers and P > self.experts:
                raise AnalysisError(f"strong scaling: {P} ranks exceed the {self.experts} experts (one expert per rank at least)")


def predict(inp: Inputs, P: int, net: Network):
    """Per-rank seconds per step on P ranks by component, and bytes sent per rank per step."""
    inp.check(P)
    net.check()
    strong = inp.kind == "strong"
    grow = 1 if strong else P                      # global batch relative to P = 1
    comp = {"dense": inp.t_dense / P if strong else inp.t_dense,
            "experts": inp.t_expert / P if strong else inp.t_expert}
    total = inp.replicated_params + inp.expert_params
    r = inp.replicated_params / total if total else 1.0
    comp["optimizer"] = inp.t_opt * (r + (1 - r) / P) if strong else inp.t_opt
    comp["pilf"] = inp.t_pilf + inp.g_pilf * (grow - 1)
    a, b = net.alpha, net.beta
    lg = math.ceil(math.log2(P)) if P > 1 else 0
    exch, red = 0.0, inp.t_local_sum
    sent = 0.0
    if P > 1:
        tokens_rank = inp.tokens * grow / P
        E = inp.experts * grow
        for _ in range(inp.moe_layers):
            cb = E * 4  # the counts of this rank, gathered by all
            exch += lg * a["allgather"] + (P - 1) * cb / b["allgather"]
            rows_out = tokens_rank * inp.top_k * (P - 1) / P
            by = rows_out * inp.d_model * 4
            exch += 4 * ((P - 1) * a["alltoallv"] + by / b["alltoallv"])
            sent += 4 * by + cb
        gb = 8.0 * inp.replicated_params
        red += 2 * lg * a["allreduce_int64"] + 2 * (P - 1) / P * gb / b["allreduce_int64"]
        red += inp.small_allreduces * (2 * lg * a["allreduce_int64"] + 2 * (P - 1) / P * 8 / b["allreduce_int64"])
        sent += 2 * (P - 1) / P * gb
        if inp.model == "pilf":
            local = inp.batch * grow / P
            for _ in range(inp.moe_layers):
                for by in (local * inp.d_model * 4, local * 16):
                    red += lg * a["allgather"] + (P - 1) * by / b["allgather"]
                    sent += (P - 1) * by
    comp["exchange"] = exch
    comp["reduce"] = red
    comp["step"] = sum(v for k, v in comp.items() if k != "step")
    comp["bytes_sent"] = sent
    return comp


def efficiency(inp, P, net):
    t1 = predict(inp, 1, net)["step"]
    tp = predict(inp, P, net)["step"]
    return t1 / tp if inp.kind == "weak" else t1 / (P * tp)


def largest_efficient(inp, net, threshold=0.8, top=1024):
    """The largest power of two P <= top whose predicted efficiency is >= threshold, and the
    component that grew most from P = 1 to the first P below it (what bounds the scaling)."""
    best, P = 1, 1
    while P <= top:
        try:
            e = efficiency(inp, P, net)
        except AnalysisError:
            break
        if e < threshold:
            break
        best, P = P, P * 2
    first_bad = P if P <= top else None
    base = predict(inp, 1, net)
    bound = None
    if first_bad:
        try:
            at = predict(inp, first_bad, net)
            ideal = first_bad if inp.kind == "strong" else 1  # perfect scaling: strong 1/P, weak constant
            grew = {k: at[k] - base[k] / ideal for k in ("dense", "experts", "optimizer", "pilf", "exchange", "reduce")}
            bound = max(grew, key=grew.get)
        except AnalysisError as e:
            bound = str(e)
    return best, first_bad, bound
