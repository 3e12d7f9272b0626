"""What an encoder costs: parameters, GFLOPs per frame, measured frames per second.

GFLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one real forward pass, so
they count what actually runs (all S² tiles of all scales, PIIP branches and interactions). The
counter reports 2 FLOPs per multiply-accumulate; the S² paper's "#FLOPs" column counts MACs
(ViT-B/16 at 224²: 17.5G), so :class:`EncoderProfile` carries both (``gmacs = gflops / 2``).
Fused CPU attention (``_scaled_dot_product_flash_attention_for_cpu``) has no formula in torch's
counter; we add the standard one so that attention is counted on every device.

Throughput is frames per second of ``encoder(images)`` at a given batch size on a device, under
``torch.inference_mode`` and in the precision the encoder's ``precision`` setting resolves to for
that batch (:func:`robo_s2.device.resolve_precision`: ``auto`` = bf16 on CUDA and on CPUs with
native bf16 once a pass is large enough), after warm-up, over at least ``min_time`` seconds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from robo_s2.device import autocast, resolve_device, resolve_precision
from robo_s2.encoders.base import VisionEncoder


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_flop_mapping() -> dict[Any, Any]:
    mapping: dict[Any, Any] = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _sdpa_cpu_flops
    return mapping


@dataclass
class EncoderProfile:
    name: str
    params: int
    trainable_params: int
    gflops: float  # per frame, 2 FLOPs per multiply-accumulate
    feature_dim: int
    image_size: int
    device: str
    precision: dict[int, str] = field(default_factory=dict)  # batch size -> fp32 | bf16
    fps: dict[int, float] = field(default_factory=dict)  # batch size -> frames per second
    feature_shape: list[int] | None = None

    @property
    def gmacs(self) -> float:
        return self.gflops / 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gmacs"] = self.gmacs
        d["fps"] = {str(k): v for k, v in self.fps.items()}
        d["precision"] = {str(k): v for k, v in self.precision.items()}
        return d


def count_params(encoder: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in encoder.parameters() if p.requires_grad or not trainable_only)


def _device_of(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


@torch.inference_mode()
def count_gflops(encoder: VisionEncoder, batch: int = 1) -> float:
    """GFLOPs per frame of ``encoder(images)`` (FlopCounterMode, fp32, on the encoder's device)."""
    x = encoder.example_input(batch, _device_of(encoder))
    with FlopCounterMode(display=False, custom_mapping=_custom_flop_mapping()) as counter:
        encoder(x)
    return counter.get_total_flops() / 1e9 / batch


@torch.inference_mode()
def measure_fps(
    encoder: VisionEncoder,
    batch_size: int,
    device: torch.device | None = None,
    min_time: float = 1.0,
    min_iters: int = 3,
    warmup: int = 2,
    precision: str = "fp32",
) -> float:
    """Frames per second of ``encoder(images)`` at ``batch_size`` (inference mode) in a resolved
    ``precision`` (fp32 | bf16)."""
    device = device or _device_of(encoder)
    x = encoder.example_input(batch_size, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with autocast(device, precision):
        for _ in range(warmup):
            encoder(x)
        sync()
        iters, start = 0, time.perf_counter()
        while True:
            encoder(x)
            iters += 1
            sync()
            elapsed = time.perf_counter() - start
            if iters >= min_iters and elapsed >= min_time:
                break
    return batch_size * iters / elapsed


def profile_encoder(
    encoder: VisionEncoder,
    batch_sizes: tuple[int, ...] | list[int] = (1, 32),
    device: str | torch.device = "auto",
    min_time: float = 1.0,
    min_iters: int = 3,
    warmup: int = 2,
    name: str | None = None,
    precision: str | None = None,
) -> EncoderProfile:
    """Parameters, GFLOPs per frame and frames/s at each batch size on ``device``, each in the
    precision ``precision`` (default: the encoder's own setting) resolves to for that batch."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    encoder = encoder.to(dev).eval()
    gflops = count_gflops(encoder)
    requested = precision or encoder.precision
    precisions = {
        int(b): resolve_precision(requested, dev, encoder.tokens_per_pass(int(b), dev))
        for b in batch_sizes
    }
    fps = {
        b: measure_fps(
            encoder, b, dev, min_time=min_time, min_iters=min_iters, warmup=warmup,
            precision=precisions[b],
        )
        for b in precisions
    }  # fmt: skip
    shape = getattr(encoder, "feature_shape", None)
    return EncoderProfile(
        name=name or getattr(encoder, "label", None) or encoder.name,
        params=count_params(encoder),
        trainable_params=count_params(encoder, trainable_only=True),
        gflops=gflops,
        feature_dim=int(encoder.feature_dim),
        image_size=int(encoder.image_size),
        device=str(dev),
        precision=precisions,
        fps=fps,
        feature_shape=list(shape) if shape is not None else None,
    )


def format_table(profiles: list[EncoderProfile], markdown: bool = True) -> str:
    """The profiles as a markdown table (one row per encoder)."""
    batch_sizes = sorted({b for p in profiles for b in p.fps})
    head = ["encoder", "params (M)", "GFLOPs/frame", "GMACs/frame", "feature", "input"]
    head += [f"frames/s @{b}" for b in batch_sizes]
    rows = []
    for p in profiles:
        feat = f"{p.feature_dim}"
        if p.feature_shape and p.feature_shape[0] > 1:
            feat += f" ({p.feature_shape[0]}x{p.feature_shape[1]})"
        row = [
            p.name,
            f"{p.params / 1e6:.1f}",
            f"{p.gflops:.2f}",
            f"{p.gmacs:.2f}",
            feat,
            f"{p.image_size}²",
        ]
        row += [f"{p.fps[b]:.1f} {p.precision[b]}" if b in p.fps else "-" for b in batch_sizes]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])
