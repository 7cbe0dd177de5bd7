"""hyperrnn's `pilf` (reference profile) against the reference's own PILF-2 code, run side by side.

Not part of the test suite: the reference's code is not in this repository (read, never copied).
Fetch it and point this script at a checkout:

    git clone https://github.com/anmoa/PILF /tmp/pilf-ref        # or any copy of the PILF-2 code
    /usr/bin/python3 tests/ref/compare_reference_pilf.py --reference /tmp/pilf-ref \
        --refdump build/bin/hyperrnn_refdump [--steps 6] [--batch 8] [--dtype float]

What runs: the reference's own VisionTransformer with its memory-Gaussian MoE layers and
GatingTransformers, its PrototypingExperienceBuffer, PICalculator, SurpriseMinKStrategy,
torch.optim.Adam and PILFTrainLoop.train_one_epoch, on a tiny configuration (28x28 one-channel
Fashion-MNIST images, patch 7, embed 16, depth 2, 4 heads, 4 experts of mlp_dim 32, top-2, SMK
min_k 2, buffer 128, lr 1e-3). What is changed, because the two sides cannot share it:
- initial weights: the reference's (torch's initialisation, seed 0) are converted to hyperrnn's
  layout and given to hyperrnn (hyperrnn_refdump's INIT.h5);
- data: hyperrnn's training batches (its counter RNG draws them) are fed to the reference's loop
  in its DataLoader's place;
- dropout: set to 0 on both sides (torch's dropout RNG cannot be reproduced);
- ties: torch.topk is replaced by a stable topk (equal values: lower index first, as hyperrnn;
  torch leaves that order open, and the batch PI gives every candidate the same priority);
- the replay draw: torch.multinomial is replaced by hyperrnn's draw (the same items, found in the
  reference's buffer by their q);
- missing third-party modules (tqdm, tensorboard, torchvision) are stubbed; they only log or load
  data; on torch 1.x, Optimizer.zero_grad gets torch 2.x's default set_to_none=True (the reference
  pins torch 2.5.1). No line of the reference's code is modified.
Compared per step: loss, tau, surprise, PI, the SMK sets and the gating loss.
"""
import argparse
import hashlib
import math
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import h5py
import numpy as np
import torch


def stub_modules():
    class Tqdm:
        def __init__(self, it=None, **kw):
            self.it = it

        def __iter__(self):
            return iter(self.it)

        def set_description_str(self, *a, **k):
            pass

        def set_postfix(self, *a, **k):
            pass

        def close(self):
            pass

    tq = types.ModuleType("tqdm")
    tq.tqdm = Tqdm
    sys.modules["tqdm"] = tq
    tb = types.ModuleType("torch.utils.tensorboard")

    class Writer:
        def __getattr__(self, name):
            return lambda *a, **k: None

    tb.SummaryWriter = Writer
    sys.modules["torch.utils.tensorboard"] = tb
    tv = types.ModuleType("torchvision")
    tv.datasets = types.ModuleType("torchvision.datasets")
    tv.transforms = types.ModuleType("torchvision.transforms")
    sys.modules.update({"torchvision": tv, "torchvision.datasets": tv.datasets, "torchvision.transforms": tv.transforms})
    # The reference pins torch 2.5.1, whose Optimizer.zero_grad() sets gradients to None (an
    # expert without tokens then has no gradient: SMK ranks it last and Adam skips it); torch 1.13
    # (this machine's) zeroes them in place by default. Give 1.13 the 2.x default.
    if torch.__version__.split(".")[0] == "1":
        zero_grad = torch.optim.Optimizer.zero_grad
        torch.optim.Optimizer.zero_grad = lambda self, set_to_none=True: zero_grad(self, set_to_none=set_to_none)
    # torch.topk leaves the order of equal values open (and the reference's batch PI makes every
    # candidate's priority equal: budget floor(B (1 - PI)) < B picks some of them); hyperrnn takes
    # the lower index first. A stable topk gives the reference's code the same choice.
    topk = torch.topk

    def stable_topk(x, k, dim=-1, largest=True, sorted=True):
        values, order = torch.sort(x, dim=dim, descending=largest, stable=True)
        return torch.return_types.topk((values.narrow(dim, 0, k), order.narrow(dim, 0, k)))

    torch.topk = stable_topk
    assert topk is not None
    import builtins
    import typing
    builtins.Tuple = typing.Tuple  # pilf_train_loop.py annotates with Tuple without importing it


def convert(model, C, E):
    """The reference's state_dict in hyperrnn's tensor names and layouts."""
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    out = {"patch.weight": sd["patch_embed.proj.weight"].reshape(C, -1), "patch.bias": sd["patch_embed.proj.bias"],
           "cls": sd["cls_token"].reshape(C), "wpe": sd["pos_embed"][0], "lnf.weight": sd["norm.weight"],
           "lnf.bias": sd["norm.bias"], "head.weight": sd["head.weight"], "head.bias": sd["head.bias"]}
    gating = {}
    for l in range(len(model.blocks)):
        b, o = f"blocks.{l}.", f"layers.{l}."
        for ref, ours in (("norm1", "ln1"), ("norm2", "ln2")):
            out[o + ours + ".weight"], out[o + ours + ".bias"] = sd[b + ref + ".weight"], sd[b + ref + ".bias"]
        out[o + "attn.qkv.weight"], out[o + "attn.qkv.bias"] = sd[b + "attn.in_proj_weight"], sd[b + "attn.in_proj_bias"]
        out[o + "attn.proj.weight"], out[o + "attn.proj.bias"] = sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"]
        for e in range(E):
            for ref, ours in (("0", "fc1"), ("2", "fc2")):
                for t in ("weight", "bias"):
                    out[f"{o}moe.experts.{e}.{ours}.{t}"] = sd[f"{b}mlp.experts.{e}.{ref}.{t}"]
        g = b + "mlp.gating_transformer."
        j = 0
        while f"{g}decoder.layers.{j}.norm1.weight" in sd:
            d, go = f"{g}decoder.layers.{j}.", f"{o}gating.dec.{j}."
            gating[go + "self_attn.v.weight"] = sd[d + "self_attn.in_proj_weight"][2 * C:]
            gating[go + "self_attn.v.bias"] = sd[d + "self_attn.in_proj_bias"][2 * C:]
            gating[go + "self_attn.out.weight"] = sd[d + "self_attn.out_proj.weight"]
            gating[go + "self_attn.out.bias"] = sd[d + "self_attn.out_proj.bias"]
            gating[go + "cross_attn.q.weight"] = sd[d + "multihead_attn.in_proj_weight"][:C]
            gating[go + "cross_attn.q.bias"] = sd[d + "multihead_attn.in_proj_bias"][:C]
            gating[go + "cross_attn.kv.weight"] = sd[d + "multihead_attn.in_proj_weight"][C:]
            gating[go + "cross_attn.kv.bias"] = sd[d + "multihead_attn.in_proj_bias"][C:]
            gating[go + "cross_attn.out.weight"] = sd[d + "multihead_attn.out_proj.weight"]
            gating[go + "cross_attn.out.bias"] = sd[d + "multihead_attn.out_proj.bias"]
            for ref, ours in (("linear1", "ff1"), ("linear2", "ff2"), ("norm1", "norm1"), ("norm2", "norm2"), ("norm3", "norm3")):
                gating[go + ours + ".weight"], gating[go + ours + ".bias"] = sd[d + ref + ".weight"], sd[d + ref + ".bias"]
            j += 1
        # the reference's out_proj rows are (expert, mu|log_sigma, channel); hyperrnn's (mu|log_sigma, expert, channel)
        w, bias = sd[g + "out_proj.weight"], sd[g + "out_proj.bias"]
        gating[o + "gating.head.weight"] = w.reshape(E, 2, C, C).transpose(1, 0, 2, 3).reshape(2 * E * C, C)
        gating[o + "gating.head.bias"] = bias.reshape(E, 2, C).transpose(1, 0, 2).reshape(2 * E * C)
    return out, gating


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, help="checkout of the reference's PILF code (PILF-2)")
    ap.add_argument("--refdump", required=True, help="hyperrnn's hyperrnn_refdump binary")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", choices=["float", "double"], default="float", help="hyperrnn's precision")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    stub_modules()
    sys.path.insert(0, args.reference)
    from models import VisionTransformer  # the reference's code
    from utils.experience_buffer import PrototypingExperienceBuffer
    from utils.pi_calculator import PICalculator
    from utils.strategies.backpropagation_strategies import SurpriseMinKStrategy
    from utils.train_loops.pilf_train_loop import PILFTrainLoop
    from utils.trainer import Trainer

    C, L, H, E, K, F, P, MIN_K, CAP, LR = 16, 2, 4, 4, 2, 32, 7, 2, 128, 1e-3
    torch.manual_seed(args.seed)
    gating_config = {"total_buffer_size": CAP, "priority_decay": 0.99}
    model = VisionTransformer(img_size=28, patch_size=P, in_channels=1, num_classes=10, embed_dim=C, depth=L,
                              num_heads=H, mlp_dim=F, dropout=0.0, router_type="memory_gaussian_moe", num_experts=E,
                              top_k=K, gating_config=dict(gating_config))
    for m in model.modules():  # the GatingTransformer's dropout 0.1 is not a constructor argument
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0
    params, gating = convert(model, C, E)
    work = Path(tempfile.mkdtemp())
    with h5py.File(work / "init.h5", "w") as f:  # hyperrnn's reader checks each dataset's sha256
        for group, tensors in (("params0/", params), ("gating0/", gating)):
            for k, v in tensors.items():
                v = np.ascontiguousarray(v, dtype="<f8")
                f[group + k] = v
                f[group + k].attrs["sha256"] = np.bytes_(hashlib.sha256(v.tobytes()).hexdigest())  # fixed-length
    extra = (f"model = pilf\ntask = fmnist\nd-model = {C}\nlayers = {L}\nheads = {H}\nexperts = {E}\ntop-k = {K}\n"
             f"d-ff = {F}\npatch = {P}\nbatch = {args.batch}\nsteps = {args.steps}\nlr = {LR}\nmeta-lr = {LR}\n"
             f"min-k = {MIN_K}\nbuffer-capacity = {CAP}\nhistory = 10\ngating-heads = 4\ngating-layers = 2\n"
             f"dropout = 0\ngating-dropout = 0\nepoch-steps = 1000000\nseed = {args.seed + 1}\n")
    subprocess.run([args.refdump, "pilf", args.dtype, "false", str(work / "ours.h5"), extra, str(work / "init.h5")],
                   check=True)
    ours = h5py.File(work / "ours.h5", "r")
    print(f"hyperrnn's dump: {work / 'ours.h5'}")

    # the reference's loop, as main.py builds it
    main_params = [p for n, p in model.named_parameters() if "gating_transformer" not in n]
    gating_params = [p for n, p in model.named_parameters() if "gating_transformer" in n]
    trainer = Trainer(model=model, optimizer=torch.optim.Adam(main_params, lr=LR),
                      gating_optimizer=torch.optim.Adam(gating_params, lr=LR), loss_fn=torch.nn.CrossEntropyLoss(),
                      strategy_components=[SurpriseMinKStrategy(min_k=MIN_K)], device=torch.device("cpu"),
                      writer=sys.modules["torch.utils.tensorboard"].SummaryWriter(),
                      pi_calculator=PICalculator(alpha=1.0, gamma=0.5, device=torch.device("cpu")))
    buffer = PrototypingExperienceBuffer(capacity=CAP, embed_dim=C, num_experts=L * E, device=torch.device("cpu"))
    draws = iter(ours[f"step/{s}/buffer0/replay0_q"][()] for s in range(args.steps))

    def sample(n):  # hyperrnn's draw: the same items, located in the reference's buffer by q
        q = torch.tensor(next(draws))
        stored = buffer.q_buffer[:buffer.current_size]
        idx = torch.cdist(q, stored).argmin(dim=1)
        assert len(idx) == n, (len(idx), n)
        return buffer.q_buffer[idx], buffer.action_buffer[idx], idx

    buffer.sample = sample
    loop = PILFTrainLoop(trainer, buffer, gating_config)
    batches = []
    for s in range(args.steps):
        images = torch.tensor(ours[f"batch/{s}/images"][()], dtype=torch.float32).unsqueeze(1)
        T = ours[f"batch/{s}/targets"].shape[1]
        labels = torch.tensor(ours[f"batch/{s}/targets"][()][:, 0], dtype=torch.long)
        batches.append((images, labels))
    loop.train_one_epoch(batches, epoch=1, task_name="fmnist")

    names = ["loss", "tau", "surprise", "pi"]
    worst = {n: 0.0 for n in names + ["gating_loss"]}
    print(f"step | {'loss':>22} | {'PI':>22} | rel. err loss, tau, surprise, PI, gating loss | SMK sets")
    for s, r in enumerate(trainer.epoch_results):
        st = ours[f"step/{s}/stats"][()]
        mine = {"loss": st[0], "tau": st[1], "surprise": st[2], "pi": st[5], "gating_loss": st[8]}
        theirs = {"loss": r["loss"], "tau": r["tau"], "surprise": r["surprise"], "pi": r["pi_score"],
                  "gating_loss": r["gating_loss"]}
        errs = {n: abs(mine[n] - theirs[n]) / max(abs(theirs[n]), 1e-300) for n in mine}
        for n in errs:
            worst[n] = max(worst[n], errs[n])
        smk_ref = [sum(1 << e for e in r["surprise_min_k_expert_indices"][l]) for l in range(L)]
        smk_ours = list(ours[f"step/{s}/smk"][()])
        print(f"{s + 1:4d} | {mine['loss']:.6e} {theirs['loss']:.6e} | {mine['pi']:.4e} {theirs['pi']:.4e} | "
              + " ".join(f"{errs[n]:.1e}" for n in ("loss", "tau", "surprise", "pi", "gating_loss"))
              + f" | {smk_ours} {smk_ref}{'' if smk_ours == smk_ref else ' DIFFER'}")
    print("worst relative error: " + ", ".join(f"{n} {v:.2e}" for n, v in worst.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
