"""MAE pre-training throughput (images/s) on the current device, against the forward-only cost.

    python benchmarks/pretrain_speed.py [--archs vit_tiny_patch16_224,vit_small_patch16_224]
        [--size 224] [--batch 64] [--steps 5] [--threads N] [--device auto]

For each architecture: a full pre-training step (random-resized crops and flips, 75 % masking,
encoder + light decoder forward, backward, AdamW; bf16 autocast on CUDA) and, as the baseline
measured in the same run, one frozen forward of the same encoder over the full unmasked image (what
``robo-s2 encode`` pays per frame). Reports the median over ``--steps`` timed steps after one
warm-up step, images/s of both and their ratio (pre-training / forward-only: the fraction of the
encoding speed that pre-training runs at), and the time of an epoch of ``--epoch-images`` images.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"archs": "vit_tiny_patch16_224", "size": 32, "batch": 2, "steps": 1, "decoder": "32,1,2"}


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def measure(
    arch: str,
    size: int,
    batch: int,
    steps: int,
    decoder: tuple[int, int, int],
    device: torch.device,
) -> tuple[float, float]:
    """Median images/s of a pre-training step and of a forward-only pass of the encoder."""
    from robo_s2.data.image_sources import augment
    from robo_s2.device import autocast
    from robo_s2.pretraining.mae import MaskedAutoencoder
    from robo_s2.training.optim import make_optimizer

    model = MaskedAutoencoder(arch, size, *decoder).to(device)
    opt = make_optimizer(model, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
    raw = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).to(device)
    x_full = raw.permute(0, 3, 1, 2).float() / 255
    gen = torch.Generator().manual_seed(0)

    def train_step() -> None:
        x = augment(raw, size, gen)
        with autocast(device):
            loss, _, _ = model(x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def forward_only() -> None:
        with autocast(device):
            model.encoder.forward_features((x_full - model.pixel_mean) / model.pixel_std)

    train_t, fwd_t = [], []
    for i in range(steps + 1):  # interleaved, so load from other processes hits both alike
        a, b = _timed(train_step, device), _timed(forward_only, device)
        if i:  # the first of each is a warm-up
            train_t.append(a)
            fwd_t.append(b)
    return batch / statistics.median(train_t), batch / statistics.median(fwd_t)


def main(argv: list[str] | None = None) -> None:
    from robo_s2.device import resolve_device

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="vit_tiny_patch16_224,vit_small_patch16_224")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--decoder", default="256,4,8", help="decoder dim,depth,heads")
    ap.add_argument("--epoch-images", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        ap.set_defaults(**SMOKE)
        args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dim, depth, heads = (int(v) for v in args.decoder.split(","))
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"{args.size}px, batch {args.batch}, decoder {dim}x{depth}")  # fmt: skip
    print(f"{'arch':<24} {'pretrain img/s':>15} {'forward img/s':>14} {'ratio':>6} {'epoch':>9}")
    for arch in args.archs.split(","):
        tr, fw = measure(arch, args.size, args.batch, args.steps, (dim, depth, heads), device)
        epoch = args.epoch_images / tr
        print(f"{arch:<24} {tr:>15.1f} {fw:>14.1f} {tr / fw:>6.2f} {epoch:>8.0f}s")


if __name__ == "__main__":
    main()
