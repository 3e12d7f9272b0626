"""The best available torch device, and the precision an encoder runs in there.

Precision is ``auto | fp32 | bf16``. ``bf16`` is autocast to bfloat16 (weights stay fp32; matmuls and
convolutions run in bf16; outputs are cast back to fp32 by the caller). ``auto`` resolves to bf16 on
CUDA, and on a CPU with native bf16 (AVX512-BF16 / AMX, as oneDNN reports it) once a forward pass
carries at least :data:`BF16_MIN_TOKENS_CPU` tokens: below that, bf16's casts cost more than its
matmuls save (ViT-Ti at 112² is 0.9x at one frame of 50 tokens and 2.3x at eight frames there). A
run resolves its precision once, from its nominal batch, so that every frame of a feature cache is
computed in the same precision.

Not every CPU has it: an AMD EPYC with AVX2 only (no AVX-512) ran ViT-Ti/ViT-S bf16 autocast 3-9x
*slower* than fp32 at every batch (emulated bf16; benchmarks/bf16_crossover.py), so ``auto`` stays
fp32 there, and an explicit ``bf16`` runs but slowly.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from robo_s2.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")
# Tokens per forward pass from which CPU bf16 autocast beats fp32. Set from measurements on an AMD
# EPYC with AVX512-BF16 (ViT-Ti at 112²: one frame of 50 tokens 0.9x, eight frames of 400 tokens
# 2.3x; ViT-S 224² at 788 tokens 2.8x): between the two, 200 keeps single small frames in fp32.
# benchmarks/bf16_crossover.py measures the curve on a machine that has native bf16.
BF16_MIN_TOKENS_CPU = 200


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device={spec} was asked for but no CUDA GPU is visible; use device=auto or cpu"
        )
    return device


@functools.cache
def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 matmuls natively (oneDNN: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_supported()
    return False


def check_precision(precision: str) -> str:
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise UserError(f"precision={precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return p


def resolve_precision(
    precision: str, device: torch.device, tokens_per_pass: int | None = None
) -> str:
    """``fp32`` or ``bf16`` for a run on ``device`` whose forward passes carry ``tokens_per_pass``
    tokens (batch x tokens per frame; None = large). ``bf16`` on a GPU without it is an error."""
    p = check_precision(precision)
    if p == "fp32":
        return "fp32"
    if p == "bf16":
        if device.type == "cuda" and not bf16_supported(device):
            raise UserError(
                "precision=bf16 was asked for but this GPU has no bf16 support; use "
                "precision=auto or fp32"
            )
        return "bf16"  # on a CPU without native bf16 it runs, emulated (several times slower)
    if not bf16_supported(device):
        return "fp32"
    if device.type == "cpu" and tokens_per_pass is not None:
        return "bf16" if tokens_per_pass >= BF16_MIN_TOKENS_CPU else "fp32"
    return "bf16"


def autocast(
    device: torch.device, precision: str | None = None
) -> contextlib.AbstractContextManager:
    """Autocast for a resolved ``precision``: ``bf16`` autocasts to bfloat16, ``fp32`` switches any
    outer autocast off for the block. ``None`` = bf16 on CUDA only (the policy's own precision: its
    passes are too small for CPU bf16 to pay)."""
    if precision is None:
        if device.type != "cuda":
            return contextlib.nullcontext()
        precision = "bf16"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"autocast wants a resolved precision (fp32 | bf16), got {precision!r}")
    return torch.autocast(device.type, enabled=False)
