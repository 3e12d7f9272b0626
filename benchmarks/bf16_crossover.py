"""Where CPU bf16 autocast starts to pay: fp32 vs bf16 forward time of timm ViTs by tokens per pass.

    python benchmarks/bf16_crossover.py [--models vit_tiny_patch16_224,vit_small_patch16_224]
        [--sizes 64,112,224] [--batches 1,2,4,8,16] [--threads 1] [--repeats 7]

For every (model, image size, batch) the fp32 and the bf16-autocast forward are timed interleaved
(median of ``--repeats`` calls after warm-up, so background load hits both alike) and printed with
the number of tokens in the pass (batch x tokens per image) and the speed-up fp32 / bf16. The
smallest token count from which bf16 is faster in every later row is the crossover that
``robo_s2.device.BF16_MIN_TOKENS_CPU`` is set from; the table also prints the feature cosine of
bf16 to fp32 (min over the batch).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"models": "vit_tiny_patch16_224", "sizes": "32", "batches": "1,2", "repeats": 1}


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    import timm

    from robo_s2.device import cpu_bf16_supported

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit_tiny_patch16_224,vit_small_patch16_224")
    ap.add_argument("--sizes", default="64,112,224")
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--max-tokens", type=int, default=3200, help="skip larger passes (slow)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = ap.parse_args()
    if args.smoke:
        ap.set_defaults(**SMOKE)
        args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"bf16 crossover: CPU bf16 supported {cpu_bf16_supported()}, torch threads "
        f"{args.threads}, {os.cpu_count()} CPUs, torch {torch.__version__}, median of "
        f"{args.repeats}"
    )
    print(f"{'model':>24} {'size':>5} {'batch':>5} {'tokens':>7} {'fp32 ms':>8} {'bf16 ms':>8} "
          f"{'speed-up':>9} {'min cos':>8}")  # fmt: skip
    for name in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            net = timm.create_model(name, pretrained=False, num_classes=0, img_size=size).eval()
            per_image = (size // 16) ** 2 + net.num_prefix_tokens
            for batch in (int(b) for b in args.batches.split(",")):
                tokens = batch * per_image
                if tokens > args.max_tokens:
                    continue
                x = torch.rand(batch, 3, size, size)

                def fp32(x=x, net=net):
                    return net.forward_features(x)

                def bf16(x=x, net=net):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return net.forward_features(x)

                with torch.inference_mode():
                    ref, low = fp32(), bf16().float()
                    for _ in range(2):
                        fp32(), bf16()
                    t32, t16 = [], []
                    for _ in range(args.repeats):
                        t32 += timed(fp32, 1)
                        t16 += timed(bf16, 1)
                cos = torch.nn.functional.cosine_similarity(ref[:, 0], low[:, 0], dim=-1).min()
                m32 = sorted(t32)[len(t32) // 2] * 1e3
                m16 = sorted(t16)[len(t16) // 2] * 1e3
                print(
                    f"{name:>24} {size:>5} {batch:>5} {tokens:>7} {m32:>8.1f} {m16:>8.1f} "
                    f"{m32 / m16:>8.2f}x {float(cos):>8.5f}"
                )


if __name__ == "__main__":
    main()
