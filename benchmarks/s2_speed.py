"""Our S² (one batched pass) against the official ``s2wrapper.forward``, same model, same run.

    python benchmarks/s2_speed.py [--model vit_tiny_patch16_224] [--size 224] [--scales 1,2]
                                  [--batch-sizes 1,8] [--repeats 7] [--threads 1] [--device cpu]
                                  [--compile] [--bf16]

Both run the same frozen timm ViT (random weights; speed does not depend on them) under
``torch.inference_mode`` on the same inputs, interleaved call by call so that load from other
processes hits all alike; the median time per call is reported, with the ratios
``s2wrapper / ours`` (> 1: ours is faster) and the largest absolute difference of our outputs
from the wrapper's. ``native`` takes the high-resolution render (e.g. 448²) and area-downsizes for
the smaller scales instead of upsampling a 224² image; its output differs from the wrapper's by
construction (a different 224² image), so only its time is compared. ``--compile`` adds both on
the ``torch.compile``'d model (static shapes) and prints each one's first-call (compile) time: the
wrapper needs a graph per scale's batch shape, ours one. Every row runs in fp32 unless named bf16:
``--bf16`` adds the wrapper and ours (passes of tiles) under bf16 autocast, so both ratios print —
ours in bf16 against the wrapper in fp32 (what the product's ``precision: auto`` buys where bf16
is native) and against the wrapper in bf16 (the same-precision, honest comparison) — with the
smallest cosine of ours-bf16 tokens to the wrapper's fp32 ones.

Measured on 2 idle CPU cores (ViT-Ti, scales 1,2): s2wrapper 151 ms at batch 1, ours/4 0.96x,
ours one pass 0.77x, ours+compile 1.10x (wrapper on the same compiled model 0.99x; compile 18 s
for ours vs 51 s for the wrapper); batch 8: ours/4 1.06x, ours+compile 1.07x. Both run the same
FLOPs, so on a compute-bound CPU batching buys little; the one-pass layout is for GPUs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from robo_s2.device import autocast, cpu_bf16_supported, resolve_device
from robo_s2.encoders.backbone import TimmEncoder
from robo_s2.encoders.s2 import s2_forward

# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"size": 32, "batch_sizes": "1", "repeats": 1, "bf16": True}


def _time(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def in_precision(fn, device: torch.device, precision: str):
    def call():
        with autocast(device, precision):
            return fn()

    return call


def main(argv: list[str] | None = None) -> None:
    import s2wrapper

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--size", type=int, default=None, help="base image size (default: the model's)")
    ap.add_argument("--scales", default="1,2")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (bf16 autocast on CUDA)")
    ap.add_argument("--tiles-per-pass", type=int, default=4, help="tiles per pass, chunked rows")
    ap.add_argument("--bf16", action="store_true", help="add the wrapper and ours in bf16 autocast")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="add rows with the model torch.compile'd (static shapes) for ours and the wrapper",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        ap.set_defaults(**SMOKE)
        args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    scales = [float(s) for s in args.scales.split(",")]
    torch.manual_seed(0)
    backbone = TimmEncoder(model=args.model, pretrained=False, image_size=args.size).to(device)
    model = backbone.pixel_tokens
    base = backbone.image_size
    p = backbone.num_prefix_tokens
    big = int(base * max(scales))
    print(
        f"S² speed: {args.model} at {base}², scales {scales}, device {device}"
        f"{f' (native bf16: {cpu_bf16_supported()})' if device.type == 'cpu' else ''}, "
        f"{torch.get_num_threads()} CPU threads, median of {args.repeats} interleaved calls"
    )
    tiles = args.tiles_per_pass
    variants = {
        "s2wrapper": "official s2wrapper.forward (one pass per scale)",
        "ours": "ours, all tiles in one pass",
        f"ours/{tiles}": f"ours, passes of {tiles} tiles (S2Encoder's CPU default)",
        f"native/{tiles}": f"ours, native {big}² render area-downsized, passes of {tiles} tiles",
    }
    if args.compile:
        variants["s2w+c"] = "s2wrapper.forward on the torch.compile'd model (a graph per shape)"
        variants["ours+c"] = "ours, one pass, on the torch.compile'd model (one graph)"
        compiled_w = torch.compile(model, dynamic=False)
        compiled_o = torch.compile(model, dynamic=False)
    if args.bf16:
        variants["s2w bf16"] = "s2wrapper.forward under bf16 autocast"
        variants[f"ours/{tiles} bf16"] = f"ours, passes of {tiles} tiles, under bf16 autocast"
    for k, v in variants.items():
        print(f"  {k:<10} {v}")
    cols = list(variants)
    header = f"{'batch':>5} | " + " | ".join(f"{c + ' ms':>13}" for c in cols)
    header += " | " + " | ".join(f"{'x ' + c:>12}" for c in cols[1:]) + " | max |diff|"
    if args.bf16:
        header += f" | ours/{tiles} bf16 vs s2w bf16 | bf16 min cos"
    print(header)
    print("-" * len(header))
    for b in [int(v) for v in args.batch_sizes.split(",")]:
        g = torch.Generator().manual_seed(b)
        x_big = torch.rand(b, 3, big, big, generator=g).to(device)
        x = F.interpolate(x_big, size=base, mode="area")  # the 224² render
        calls = {
            cols[0]: lambda x=x: s2wrapper.forward(model, x, scales=scales, num_prefix_token=p),
            cols[1]: lambda x=x: s2_forward(model, x, scales=scales, num_prefix_token=p),
            cols[2]: lambda x=x: s2_forward(
                model, x, scales=scales, num_prefix_token=p, max_tiles_per_pass=tiles
            ),
            cols[3]: lambda x_big=x_big: s2_forward(
                model, x_big, scales=scales, num_prefix_token=p, base_size=base,
                downsample="area", max_tiles_per_pass=tiles,
            ),
        }  # fmt: skip
        if args.compile:
            calls["s2w+c"] = lambda x=x: s2wrapper.forward(
                compiled_w, x, scales=scales, num_prefix_token=p
            )
            calls["ours+c"] = lambda x=x: s2_forward(
                compiled_o, x, scales=scales, num_prefix_token=p
            )
        if args.bf16:
            calls["s2w bf16"] = in_precision(calls[cols[0]], device, "bf16")
            calls[f"ours/{tiles} bf16"] = in_precision(calls[cols[2]], device, "bf16")
        times: dict[str, list[float]] = {k: [] for k in calls}
        with torch.inference_mode():
            ref = calls[cols[0]]().float()
            first: dict[str, float] = {}  # the first call compiles for the +c rows
            diffs, cosines = [], []
            for c in cols[1:]:
                start = time.perf_counter()
                out = calls[c]().float()
                first[c] = time.perf_counter() - start
                if c.endswith("bf16"):
                    cosines.append(F.cosine_similarity(out, ref, dim=-1).min().item())
                elif not c.startswith("native"):
                    diffs.append((out - ref).abs().max().item())
            diff = max(diffs)
            for fn in calls.values():  # warm-up
                fn()
            for _ in range(args.repeats):
                for k, fn in calls.items():
                    times[k].append(_time(fn, device))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        row = f"{b:>5} | " + " | ".join(f"{med[c]:>13.1f}" for c in cols)
        row += " | " + " | ".join(f"{med[cols[0]] / med[c]:>11.2f}x" for c in cols[1:])
        row += f" | {diff:.1e}"
        if args.bf16:
            same = med["s2w bf16"] / med[f"ours/{tiles} bf16"]
            row += f" | {same:>25.2f}x | {min(cosines):.5f}"
        print(row)
        compiled = [c for c in cols if c.endswith("+c")]
        if compiled:
            print(
                "      first call (compiling): "
                + ", ".join(f"{c} {first[c]:.0f} s" for c in compiled)
            )


if __name__ == "__main__":
    main()
