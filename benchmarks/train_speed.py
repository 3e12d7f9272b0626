"""Training throughput: samples/s of ``robo-s2 train``'s optimizer step, from cached features or
(``--e2e``) of the end-to-end ResNet-18 arm from images.

    python benchmarks/train_speed.py [--device auto] [--threads 1] [--batch-size 64]
                                     [--steps 20] [--warmup 3] [--frames 4800] [--ema 0.995]
    python benchmarks/train_speed.py --e2e [--e2e-demos 24] [--steps 60] [--repeats 2]

``--e2e``: the whole ``train()`` of table8_cpu_resnet_lr's recipe (ResNet-18 at 64² from 128²
demos, history 2, batch 32, encoder lr 1e-4) on freshly collected scripted demos, for ``--steps``
steps, under each variant of :data:`E2E_VARIANTS` (train overrides), rounds interleaved; prints
samples/s (the trainer's own, validation excluded) and the ratio to the first variant.

Measures the trainer's own step (:func:`robo_s2.training.trainer.train_step`: batch gather from in-memory
tensors, forward under autocast — bf16 on CUDA —, backward, gradient clipping, AdamW, LR schedule,
EMA update) for the policies of ``configs/policy/{chunk_transformer,mlp}.yaml`` at their default
sizes, with the feature as one vector per step (ViT-Ti S² CLS: 384 wide, 1 token) and as a grid
(ViT-Ti S² ``grid:4``: 16 tokens of 384, 6144 wide), on synthetic data the size of the paper's
120 demos x 40 steps. Prints a table of ms/step and samples/s (median over timed steps).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
import torch
from omegaconf import OmegaConf

from policies import create_policy
from robo_s2.device import resolve_device
from robo_s2.paths import config_dir
from robo_s2.training import EMA, BatchSampler, SequenceData, make_optimizer, warmup_cosine
from robo_s2.training.setup import BCModel
from robo_s2.training.trainer import train_step

FEATURES = {"vector": (1, 384), "grid 4x4": (16, 384)}
# table8_cpu_resnet_lr's recipe (configs/experiment/table8_cpu_resnet_lr.yaml)
E2E_RECIPE = [
    "encoder=resnet18_e2e", "encoder.image_size=64", "policy.d_model=64", "policy.n_layers=2",
    "policy.dropout=0.0", "policy.history=2", "train.batch_size=32", "train.lr=1e-3",
    "train.encoder_lr=1e-4", "train.warmup_steps=10",
]  # fmt: skip
# name -> train overrides; the first is the baseline of the ratios
E2E_VARIANTS = {
    "before": ["train.optimizer=loop"],
    "now": [],
}
POLICIES = ("chunk_transformer", "mlp")


# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"batch_size": 4, "steps": 1, "warmup": 1, "frames": 80}


def policy_config(name: str) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(config_dir() / "policy" / f"{name}.yaml"))
    cfg.pop("feature_tokens", None)
    return cfg


def bench(
    name: str,
    tokens: int,
    width: int,
    device: torch.device,
    batch_size: int,
    steps: int,
    warmup: int,
    n_frames: int,
    ema_decay: float,
) -> dict:
    rng = np.random.default_rng(0)
    ends = np.arange(40, n_frames + 1, 40)
    n = int(ends[-1])
    feature = rng.normal(size=(n, tokens * width)).astype(np.float32)
    proprio = rng.normal(size=(n, 11)).astype(np.float32)
    action = rng.normal(size=(n, 4)).astype(np.float32)
    cfg = policy_config(name)
    cfg.pop("name")
    torch.manual_seed(0)
    policy = create_policy(
        name, feature_dim=tokens * width, proprio_dim=11, action_dim=4, feature_tokens=tokens, **cfg
    )
    policy.fit_normalizer({"feature": feature, "proprio": proprio, "action": action})
    data = SequenceData(ends, action, proprio, policy.history, policy.chunk, feature, device)
    model = BCModel(policy).to(device).train()
    ema = EMA(model, ema_decay) if ema_decay else None
    opt = make_optimizer(model, lr=3e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, partial(warmup_cosine, warmup=10, total=warmup + steps)
    )
    sampler = BatchSampler(np.arange(n), batch_size, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        batch = data.batch(sampler.next())
        loss, _, _ = train_step(model, batch, opt, sched, params, 1.0, device)
        if ema is not None:
            ema.update(model)
        float(loss.detach())  # wait for the step (CUDA)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)
    return {
        "policy": name,
        "feature": f"{'vector' if tokens == 1 else 'grid'} {tokens}x{width}",
        "params_m": policy.num_parameters() / 1e6,
        "ms": ms,
        "sps": batch_size / (ms / 1000),
    }


def e2e(args: argparse.Namespace) -> None:
    import tempfile
    from pathlib import Path

    from robo_s2.core.config import load_config
    from robo_s2.data.collection import collect
    from robo_s2.training.trainer import train

    names = args.e2e_variants.split(",")
    rates: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "demos.zarr"
        collect(store, args.e2e_demos, {"image_size": 128}, {"noise_std": 0.05}, seed=0, workers=2)
        for r in range(args.repeats):
            for name in names:
                cfg = load_config("train", [
                    *E2E_RECIPE, f"data.store={store}", f"train.steps={args.steps}",
                    f"train.eval_every={args.steps}", f"train.save_every={args.steps}",
                    "device=cpu", *E2E_VARIANTS[name],
                ])  # fmt: skip
                res = train(cfg, Path(tmp) / f"{name}-{r}")
                rates[name].append(res.samples_per_s)
    base = statistics.median(rates[names[0]])
    print(
        f"end-to-end ResNet-18 training (table8_cpu_resnet_lr's recipe, {args.e2e_demos} demos, "
        f"{args.steps} steps, {torch.get_num_threads()} threads), median of {args.repeats}"
    )
    print(f"{'variant':<10} {'overrides':<60} {'samples/s':>10} {'vs ' + names[0]:>10}")
    for name in names:
        sps = statistics.median(rates[name])
        over = " ".join(E2E_VARIANTS[name]) or "(defaults)"
        print(f"{name:<10} {over:<60} {sps:>10.1f} {sps / base:>9.2f}x")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (bf16 autocast on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--frames", type=int, default=4800, help="frames of synthetic data")
    ap.add_argument("--ema", type=float, default=0.995, help="EMA decay (0 = off)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--e2e", action="store_true", help="the end-to-end ResNet-18 arm instead")
    ap.add_argument("--e2e-demos", type=int, default=24, help="--e2e: demos collected")
    ap.add_argument("--e2e-variants", default=",".join(E2E_VARIANTS), help="--e2e: first = base")
    ap.add_argument("--repeats", type=int, default=2, help="--e2e: rounds (median reported)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        ap.set_defaults(**SMOKE)
        args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.e2e:
        e2e(args)
        return
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"train step from cached features on {where} ({torch.get_num_threads()} threads), "
        f"batch {args.batch_size}, median of {args.steps} steps"
    )
    print(f"{'policy':<18} {'feature':<14} {'params':>8} {'ms/step':>9} {'samples/s':>10}")
    for name in args.policies.split(","):
        for tokens, width in FEATURES.values():
            r = bench(
                name, tokens, width, device, args.batch_size, args.steps, args.warmup,
                args.frames, args.ema,
            )  # fmt: skip
            print(
                f"{r['policy']:<18} {r['feature']:<14} {r['params_m']:>7.2f}M {r['ms']:>9.1f} "
                f"{r['sps']:>10.0f}"
            )


if __name__ == "__main__":
    main()
