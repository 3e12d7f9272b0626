"""The one door from camera frames to an encoder's input: caching, training, evaluation, analysis
and pre-training all go through :func:`to_float_images` (:func:`frames_to_input` for the uint8
frames of a store or an env).

The policy, stated once: an encoder sees float ``(B, 3, S, S)`` frames in ``[0, 1]``, ``S`` its
``image_size``. It accepts ``uint8 (B,H,W,3)`` (the store's and the env's layout) or
``uint8 (B,3,H,W)``, or float frames in ``[0, 1]``; one frame gets a batch dimension. Square frames
larger than ``S`` are area-downsized to ``S`` (said once per size pair in the log: 128² renders for
a 64² encoder is how a robot's S² gets native pixels for its larger scale); smaller or non-square
frames are refused, because upsampling would fake detail the camera never recorded.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robo_s2.errors import UserError

log = logging.getLogger(__name__)
_downsizes_said: set[tuple[int, int]] = set()


def check_frame_size(height: int, width: int, size: int, where: str, fix: str) -> None:
    """Refuse ``height x width`` frames (of ``where``) for an encoder of input ``size``: they must
    be square and at least ``size`` (downsizing is allowed, upsampling never); ``fix`` says how."""
    if height != width or height < size:
        raise UserError(
            f"{where} has {height}x{width} frames; the encoder needs {size}x{size} (square frames "
            f"of at least that size are downsized to it, smaller ones never upsampled): {fix}"
        )


def to_float_images(images: Tensor | Any, image_size: int | None = None) -> Tensor:
    """Frames to float ``(B,3,H,W)`` in ``[0,1]``, and with ``image_size`` to ``(B,3,S,S)`` by the
    module's policy (area-downsized, never upsampled). Anything else is a :class:`UserError`."""
    if not isinstance(images, Tensor):
        try:
            images = torch.as_tensor(images)
        except Exception as exc:  # noqa: BLE001 - anything not array-like
            raise UserError(
                f"images must be a tensor or array, got {type(images).__name__}"
            ) from exc
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise UserError(f"images must be (B,3,H,W) or (B,H,W,3), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        if images.shape[1] != 3 and images.shape[-1] == 3:
            images = images.permute(0, 3, 1, 2)
        images = images.float().div_(255.0)
    elif not images.is_floating_point():
        raise UserError(f"images must be uint8 or float in [0,1], got dtype {images.dtype}")
    else:
        if images.dtype != torch.float32:  # float64/float16/bfloat16 frames: the weights are fp32
            images = images.float()
        top = float(images.amax()) if images.numel() else 0.0
        if top > 2.0:  # (resampling may overshoot 1 a little; 0-255 pixels go far beyond)
            raise UserError(
                f"float images must be in [0,1], got values up to {top:.4g} "
                "(0-255 pixels?); divide by 255 or pass the uint8 frames"
            )
    if images.shape[1] != 3:
        raise UserError(f"images must have 3 colour channels, got shape {tuple(images.shape)}")
    if image_size is None:
        return images
    height, width = int(images.shape[-2]), int(images.shape[-1])
    check_frame_size(
        height, width, image_size, "the input", f"render or pass frames of {image_size}² or more"
    )
    if height == image_size:
        return images
    if (height, image_size) not in _downsizes_said:
        _downsizes_said.add((height, image_size))
        log.info("frames of %d² are area-downsized to the encoder's %d²", height, image_size)
    return F.interpolate(images, size=(image_size, image_size), mode="area")


def frames_to_input(images: np.ndarray, size: int, device: torch.device) -> Tensor:
    """uint8 ``(B,H,W,3)`` frames of a store or an env as the encoder's ``(B,3,size,size)`` input
    on ``device`` (moved there as uint8: a quarter of the bytes of float)."""
    return to_float_images(torch.from_numpy(np.ascontiguousarray(images)).to(device), size)
