"""Scale-selective S² against full S²: cost per frame and the cube-position probe, one run.

    python benchmarks/s2_select.py [--store bench_out/probe/probe.zarr] [--base 64]
        [--rules salient,cls_attention,learned] [--ks 4,2,1]
        [--weights bench_out/probe/mae_t/encoder.pth] [--batch 8] [--min-time 1.0] [--threads 2]

Rows: S² (1,2), S² (1,2,4) and, per rule, s2_select on (1,2,4) with k = 4, 2, 1 of the 16
top-scale tiles (the middle scale in full) and a budget of 5 tiles shared over both larger scales
(1 + 4), all over the same ViT-Ti/16 (random init, or ``--weights``: a timm-format file such as the MAE
pre-trained ``bench_out/probe/mae_t/encoder.pth``) at a ``--base``-px base (64: scales 64², 128²,
256², upsampled from the store's frames — the S² paper's protocol). Per row: tiles run per frame,
GFLOPs per frame (torch FlopCounterMode), frames/s at ``--batch`` in fp32 and in bf16 autocast
(CPU), and the held-out RMSE of a ridge probe of the cube's (x, y) from ``grid:2`` features
(:func:`robo_s2.pretraining.probe.probe_encoder`, the probe of ``pretrain_probe.py``, on the
store it collects: 150 short episodes, cube on the table; the first ``--probe-episodes`` of
them, 40 by default, so that the run takes minutes on 2 cores), the features computed in
``--probe-precision`` (bf16 by default: a 2-core CPU with AMX runs it several times faster).
The ``learned`` rule's head is fitted first (:func:`robo_s2.pretraining.tile_scorer.
fit_tile_scorer`) on the probe's *training* episodes only (the same seeded split), so the probe's
held-out frames are unseen by both. Ratios are against S² (1,2,4) measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"store": "bench_out/probe_smoke/probe.zarr", "out": "bench_out/s2_select_smoke",
         "base": 32, "ks": "1", "batch": 2, "min_time": 0.0, "probe_episodes": 0}  # fmt: skip


def _rows(
    base_cfg: dict[str, Any], rules: list[str], ks: list[int], scorer: str | None
) -> list[tuple[str, dict[str, Any]]]:
    rows = [
        ("S² (1,2)", {**base_cfg, "name": "s2", "scales": [1, 2]}),
        ("S² (1,2,4)", {**base_cfg, "name": "s2", "scales": [1, 2, 4]}),
    ]
    for rule in rules:
        sel = {**base_cfg, "name": "s2_select", "scales": [1, 2, 4], "rule": rule}
        if rule == "learned":
            sel["scorer"] = scorer
        rows += [(f"select {rule} k={k}", {**sel, "k": k}) for k in ks]
        rows.append((f"select {rule} budget=5", {**sel, "budget": 5}))
    return rows


def _fit_scorer(base_cfg: dict[str, Any], store: Any, out: Path, precision: str) -> str:
    """The learned rule's head, fitted on the probe's training episodes; its file's path."""
    from robo_s2.encoders import create_encoder
    from robo_s2.encoders.tile_scorer import save_tile_scorer
    from robo_s2.pretraining.probe import episode_split_rows
    from robo_s2.pretraining.tile_scorer import fit_tile_scorer, scorer_data

    enc = create_encoder({**base_cfg, "name": "s2_select", "scales": [1, 2, 4]}).eval()
    train, _, _ = episode_split_rows(store.episode_ends, test_fraction=0.3, seed=0)
    t0 = time.perf_counter()
    data = scorer_data(enc, store.array("image"), train, batch_size=16, precision=precision)
    scorer, losses = fit_tile_scorer(data, enc.splits)
    path = save_tile_scorer(scorer, out / "tile_scorer.safetensors",
                            {"backbone_fingerprint": enc.backbone.fingerprint()})  # fmt: skip
    print(f"  learned rule: fitted on {len(train)} training frames in "
          f"{time.perf_counter() - t0:.0f} s, loss {losses[0]} -> {losses[-1]}", flush=True)  # fmt: skip
    return str(path)


def _measure(label: str, cfg: dict[str, Any], store: Any, args: argparse.Namespace) -> dict:
    from robo_s2.encoders import create_encoder
    from robo_s2.encoders.profile import count_gflops, measure_fps
    from robo_s2.pretraining.probe import probe_encoder

    enc = create_encoder(cfg).eval()
    keep = getattr(enc, "keep", None)
    tiles = enc.plans[0].num_split ** 2 + (
        sum(keep) if keep else sum(p.num_split**2 for p in enc.plans[1:])
    )
    fps = {
        prec: measure_fps(enc, args.batch, min_time=args.min_time, precision=prec)
        for prec in ("fp32", "bf16")
    }
    probe = probe_encoder(
        enc, store, "image", test_fraction=0.3, seed=0, precision=args.probe_precision
    )
    print(f"  {label}: {tiles} tiles, probe RMSE {probe.rmse_cm:.2f} cm", flush=True)
    return dict(label=label, tiles=tiles, gflops=count_gflops(enc), fps=fps, rmse=probe.rmse_cm,
                r2=probe.r2, base=probe.baseline_rmse_cm, n=(probe.n_train, probe.n_test))  # fmt: skip


def _subset(store: Any, n_episodes: int | None, out: Path) -> Any:
    """The first ``n_episodes`` episodes of ``store`` as a store of their own (the probe's time)."""
    from robo_s2.data.store import DemoStore

    if not n_episodes or n_episodes >= store.n_episodes:
        return store
    path = out / f"probe_{n_episodes}.zarr"
    if not path.exists():
        sub = DemoStore.create(path, attrs=dict(store.attrs))
        ends = [0, *map(int, store.episode_ends[:n_episodes])]
        for lo, hi in zip(ends[:-1], ends[1:], strict=True):
            sub.append_episode({k: np.asarray(store.array(k)[lo:hi]) for k in store.keys()})
        sub.close()
    return DemoStore.open(path)


def main(argv: list[str] | None = None) -> None:
    from robo_s2.data.store import DemoStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="bench_out/probe/probe.zarr")
    ap.add_argument("--base", type=int, default=64)
    ap.add_argument("--rules", default="salient,cls_attention,learned")
    ap.add_argument("--ks", default="4,2,1", help="top-scale tiles per select row")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--probe-episodes", type=int, default=40, help="first N episodes (0: all)")
    ap.add_argument("--out", default="bench_out/s2_select")
    ap.add_argument("--probe-precision", default="bf16", help="the probe features' precision")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        ap.set_defaults(**SMOKE)
        args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = {"name": "timm", "model": "vit_tiny_patch16_224", "image_size": args.base,
                "pretrained": args.weights is not None, "weights": args.weights}  # fmt: skip
    base_cfg = {"backbone": backbone, "pooling": "grid:2", "source": "upsample"}
    if args.smoke and not Path(args.store).exists():  # pretrain_probe.py's probe store, tiny
        from robo_s2.data.collection import collect

        collect(args.store, 4, dict(image_size=args.base, max_episode_steps=8), seed=2000,
                keep_failed=True)  # fmt: skip
    store = _subset(DemoStore.open(args.store), args.probe_episodes, Path(args.out))
    start = time.perf_counter()
    print(
        f"s2_select benchmark: ViT-Ti/16 {'weights ' + args.weights if args.weights else 'random'}"
        f", base {args.base}², {torch.get_num_threads()} CPU threads, batch {args.batch}, "
        f"probe store {args.store} ({store.n_frames} frames), grid:2 features in "
        f"{args.probe_precision}"
    )
    rules = [r for r in args.rules.split(",") if r]
    scorer = (
        _fit_scorer(base_cfg, store, Path(args.out), args.probe_precision)
        if "learned" in rules
        else None
    )
    rows = _rows(base_cfg, rules, [int(k) for k in args.ks.split(",")], scorer)
    res = [_measure(label, cfg, store, args) for label, cfg in rows]
    ref = res[1]
    print(
        "\n| encoder | tiles/frame | GFLOPs/frame | x S²(1,2,4) | fp32 frames/s | bf16 frames/s "
        "| fp32 speed-up | bf16 speed-up | probe RMSE (cm) | R² |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in res:
        print(
            f"| {r['label']} | {r['tiles']} | {r['gflops']:.3f} | {r['gflops'] / ref['gflops']:.2f} "
            f"| {r['fps']['fp32']:.1f} | {r['fps']['bf16']:.1f} "
            f"| {r['fps']['fp32'] / ref['fps']['fp32']:.2f}x "
            f"| {r['fps']['bf16'] / ref['fps']['bf16']:.2f}x | {r['rmse']:.2f} | {r['r2']:.3f} |"
        )
    n_train, n_test = ref["n"]
    print(
        f"(probe: {n_train} train / {n_test} held-out frames by episode; predicting the mean: "
        f"{ref['base']:.2f} cm; {time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
