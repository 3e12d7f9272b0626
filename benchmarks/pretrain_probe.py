"""Linear-probe table: MAE-pretrained encoders vs random init, S² of a small one vs a larger one.

    python benchmarks/pretrain_probe.py [--out bench_out/probe] [--epochs 80] [--size 64]
        [--pretrain-episodes 40] [--scene-episodes 60] [--probe-episodes 150] [--archs t,s]

With the defaults (3814 pre-training frames + 418 held out, 80 epochs) on 2 CPU cores: ViT-Ti 37
min at 144 images/s on one thread; ViT-S 92 images/s on two threads (~56 min for a whole run at that
rate). ``--only t`` / ``--only s`` pre-train one arch (two processes at ``--threads 1`` use both
cores); a later run without ``--only`` finds both and probes.

1. collects a pre-training store (expert episodes, front + wrist cameras) and a separate probe
   store (``--probe-episodes`` short episodes at other seeds: the cube still on the table, the arm
   approaching; front camera), unless they exist under ``--out``;
2. pre-trains ViT-Ti and ViT-S (``robo_s2.pretraining.pretrainer``) on the pre-training store plus
   randomized-scene frames, ``--epochs`` epochs each at ``--size`` px (skipped when done);
3. probes the cube's (x, y) on held-out probe episodes (:mod:`robo_s2.pretraining.probe`) from: random-init and
   pretrained ViT-Ti and ViT-S, and S² (scales 1, 2) of the pretrained and random ViT-Ti,
   with CLS and mean-pooled features, and prints the table (R², RMSE in cm).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ARCHS = {"t": "vit_tiny_patch16_224", "s": "vit_small_patch16_224"}


# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"out": "bench_out/probe_smoke", "epochs": 1, "size": 32, "pretrain_episodes": 1,
         "scene_episodes": 1, "probe_episodes": 4, "archs": "t"}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir

    from robo_s2.data.collection import collect
    from robo_s2.data.store import DemoStore
    from robo_s2.encoders import create_encoder
    from robo_s2.paths import config_dir
    from robo_s2.pretraining.pretrainer import pretrain
    from robo_s2.pretraining.probe import probe_encoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_out/probe")
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pretrain-episodes", type=int, default=40)
    ap.add_argument("--scene-episodes", type=int, default=60)
    ap.add_argument("--probe-episodes", type=int, default=150)
    ap.add_argument("--archs", default="t,s")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="pretrain only this arch key (t or s), no probe")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        ap.set_defaults(**SMOKE)
        args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = args.size
    pre_store, probe_store = out / "pretrain.zarr", out / "probe.zarr"
    t0 = time.perf_counter()
    collect(pre_store, args.pretrain_episodes, dict(image_size=size, cameras=["front", "wrist"]),
            seed=1000)  # fmt: skip
    collect(probe_store, args.probe_episodes, dict(image_size=size, max_episode_steps=8),
            seed=2000, keep_failed=True)  # fmt: skip
    print(f"stores ready in {time.perf_counter() - t0:.0f} s")

    runs = {}
    keys = [args.only] if args.only else args.archs.split(",")
    for key in keys:
        run_dir = out / f"mae_{key}"
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose("pretrain", overrides=[
                f"images=[{pre_store}]", f"arch={ARCHS[key]}", f"image_size={size}",
                f"scenes.episodes={args.scene_episodes}", f"train.epochs={args.epochs}",
                "decoder.dim=128", "decoder.depth=2", "decoder.heads=4", "train.batch_size=64",
                "train.warmup_epochs=2", "val_fraction=0.1", "resume=auto",
            ])  # fmt: skip
        r = pretrain(cfg, run_dir, progress=True)
        speed = f"{r.images_per_s:.0f} images/s" if r.epoch > r.start_epoch else "trained before"
        print(
            f"pretrained {ARCHS[key]}: {r.epoch} epochs, held-out loss {r.val_loss:.4f} "
            f"(random init {r.val_loss_init:.4f}), {speed}"
        )
        runs[key] = run_dir / "encoder.pth"
    if args.only:
        return

    def timm(key: str, weights: Path | None, pooling: str):
        return create_encoder(
            {"name": "timm", "model": ARCHS[key], "pretrained": weights is not None,
             "weights": None if weights is None else str(weights), "image_size": size,
             "pooling": pooling}
        )  # fmt: skip

    def s2(key: str, weights: Path | None, pooling: str):
        return create_encoder(
            {"name": "s2", "weights": None if weights is None else str(weights), "pooling": pooling,
             "backbone": {"name": "timm", "model": ARCHS[key], "pretrained": weights is not None,
                          "image_size": size}, "scales": [1, 2]}
        )  # fmt: skip

    rows = []
    store = DemoStore.open(probe_store)
    for pooling in ("cls", "mean"):
        for name, build in [
            ("ViT-Ti random", lambda p: timm("t", None, p)),
            ("ViT-Ti MAE", lambda p: timm("t", runs["t"], p)),
            ("S2 ViT-Ti random", lambda p: s2("t", None, p)),
            ("S2 ViT-Ti MAE", lambda p: s2("t", runs["t"], p)),
            ("ViT-S random", lambda p: timm("s", None, p)),
            ("ViT-S MAE", lambda p: timm("s", runs.get("s"), p) if "s" in runs else None),
        ]:
            enc = build(pooling)
            if enc is None:
                continue
            res = probe_encoder(enc, store, "image", test_fraction=0.3, seed=0)
            rows.append({"encoder": name, "pooling": pooling, **res.as_dict()})
            print(f"{name:<18} {pooling:<5} width {res.feature_dim:>4}  R2 {res.r2:6.3f}  "
                  f"RMSE {res.rmse_cm:5.2f} cm (mean baseline {res.baseline_rmse_cm:.2f})")  # fmt: skip
    (out / "probe_table.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| encoder | pooling | width | held-out R² | RMSE (cm) |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['encoder']} | {r['pooling']} | {r['feature_dim']} | {r['r2']:.3f} | "
            f"{r['rmse_cm']:.2f} |"
        )
    print(
        f"(probe: {rows[0]['n_train']} train / {rows[0]['n_test']} held-out frames; "
        f"predicting the mean: {rows[0]['baseline_rmse_cm']:.2f} cm)"
    )


if __name__ == "__main__":
    main()
