"""The contract every vision encoder of robo_s2 meets (timm backbones, MVP, S², PIIP).

An encoder maps camera frames to one vector per time step (``forward``) and, for callers that
want more, to its full token or feature map (``forward_tokens``). Images come in as float
``(B,3,H,W)`` in ``[0,1]`` or as the demo store's ``uint8 (B,H,W,3)``; normalisation (ImageNet
mean/std for the timm and MVP backbones) happens inside the encoder, so every caller feeds raw
pixels.

Encoders are frozen unless a part is explicitly trainable: frozen parts are put in ``eval()`` with
``requires_grad_(False)`` through :meth:`VisionEncoder.freeze`, and ``encoder.train()`` never flips
them back into training mode (dropout, drop-path and batch-norm statistics stay off). ``trainable``
is False for fully frozen encoders, whose features may be cached by fingerprint.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robo_s2.encoders.preprocess import to_float_images

# the weights of an encoder that trains (PIIP's interactions and merge), written by robo-s2 train
# beside its policy and loaded back by the checkpoint, or by the encoder's own ``weights`` option
TRAINED_WEIGHTS_FILE = "encoder.safetensors"
# safetensors metadata key holding the writing encoder's resolved config (JSON)
TRAINED_CONFIG_KEY = "encoder_config"


def trained_weights_path(value: str | Path) -> Path:
    """The weights file a ``weights`` option names: the file itself, or the
    :data:`TRAINED_WEIGHTS_FILE` of the checkpoint directory it names."""
    path = Path(value).expanduser()
    return path / TRAINED_WEIGHTS_FILE if path.is_dir() else path


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_FROZEN_ATTR = "_robo_s2_frozen"


@functools.cache
def runtime_defaults() -> dict[str, Any]:
    """How every encoder runs unless its config says otherwise (``configs/encoder_runtime.yaml``,
    which every encoder config includes): the one statement of those defaults."""
    import yaml

    from robo_s2.paths import config_dir

    return dict(yaml.safe_load((config_dir() / "encoder_runtime.yaml").read_text()))


class VisionEncoder(nn.Module):
    """Base class: frames -> one ``feature_dim`` vector per frame.

    Subclasses set ``feature_dim``, ``image_size`` and ``trainable``, call :meth:`set_config` with
    their resolved configuration (JSON-serialisable) and implement :meth:`forward_tokens` and
    :meth:`forward`. :meth:`freeze` marks parts that stay frozen in ``train()``.
    """

    feature_dim: int
    image_size: int
    trainable: bool = False
    # what the encoder reads: None = camera frames (the run's image key); "state" = the privileged
    # sim state (the oracle reference row, robo_s2.encoders.oracle)
    input_key: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._config: dict[str, Any] = {}
        self._fingerprint_cache: tuple[tuple, str] | None = None
        # the config-file (or timm model) name it was built from; set by create_encoder
        self.label: str | None = None
        # requested compute precision (auto | fp32 | bf16; robo_s2.device.resolve_precision): how
        # the weights are run, not what they are, so it is not part of the fingerprint
        self.precision: str = runtime_defaults()["precision"]

    # --- configuration -------------------------------------------------------------------------
    def set_config(self, name: str, **config: Any) -> None:
        """Record the resolved configuration (``name`` plus every kwarg that shapes the encoder)."""
        self._config = {"name": name, **copy.deepcopy(config)}

    @property
    def config(self) -> dict[str, Any]:
        return copy.deepcopy(self._config)

    @property
    def name(self) -> str:
        return str(self._config.get("name", type(self).__name__))

    # --- freezing ------------------------------------------------------------------------------
    def freeze(self, module: nn.Module | None = None) -> nn.Module:
        """Freeze ``module`` (default: the encoder): ``eval()``, no grads, stays eval in train()."""
        module = self if module is None else module
        module.requires_grad_(False)
        module.eval()
        object.__setattr__(module, _FROZEN_ATTR, True)
        return module

    def train(self, mode: bool = True) -> VisionEncoder:
        super().train(mode)
        if mode:
            for m in self.modules():
                if getattr(m, _FROZEN_ATTR, False):
                    nn.Module.train(m, False)
        return self

    # --- inputs --------------------------------------------------------------------------------
    def prepare(self, images: Tensor) -> Tensor:
        """Frames to float ``(B,3,image_size,image_size)`` in [0,1] on this encoder's device."""
        x = to_float_images(images, self.image_size)
        try:
            p = next(self.parameters())
            if x.device != p.device:
                x = x.to(p.device)
        except StopIteration:
            pass
        return x

    # --- the contract --------------------------------------------------------------------------
    def forward_tokens(self, images: Tensor) -> Tensor:
        """Full token / feature map (e.g. ``(B, prefix + h*w, C)`` for a ViT)."""
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        """``(B,3,H,W)`` float in [0,1] or ``uint8 (B,H,W,3)`` -> ``(B, feature_dim)``."""
        raise NotImplementedError

    @property
    def feature_shape(self) -> tuple[int, int]:
        """``(tokens, width)`` with ``tokens * width == feature_dim``: ``feature.view(B,
        *feature_shape)`` splits a feature into the tokens a policy attends over (one by default;
        ``grid:k`` pooling gives k*k)."""
        return (1, int(self.feature_dim))

    def example_input(self, batch: int, device: torch.device | None = None) -> Tensor:
        """A seeded random input batch of the kind ``forward`` takes (for FLOP counts, timing)."""
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, self.image_size, self.image_size, generator=g)
        return x.to(device) if device is not None else x

    def tokens_per_pass(self, batch: int, device: torch.device | None = None) -> int:
        """Tokens in the largest matmul of one forward pass over ``batch`` frames (what decides
        whether CPU bf16 pays). Default: ``batch`` times the patch tokens of one frame."""
        patch = int(getattr(self, "patch_size", 16) or 16)
        prefix = int(getattr(self, "num_prefix_tokens", 0))
        grid = self.image_size // (patch if patch > 1 else 16)
        return int(batch) * (grid * grid + prefix)

    def fingerprint(self) -> str:
        """sha256 over the resolved config JSON and every state_dict tensor (name, dtype, shape,
        bytes).

        Stable across processes and devices; changes when the config or any weight/buffer changes.
        Cached on the tensors' identities and version counters, so repeated calls on frozen encoders
        are free and in-place updates (optimizer steps, ``load_state_dict``) invalidate the cache.
        """
        state = self.state_dict()
        key = (
            json.dumps(self._config, sort_keys=True, default=str),
            tuple(
                (k, v.data_ptr(), v._version, tuple(v.shape), str(v.dtype))
                for k, v in state.items()
            ),
        )
        if self._fingerprint_cache is not None and self._fingerprint_cache[0] == key:
            return self._fingerprint_cache[1]
        h = hashlib.sha256()
        h.update(b"config\0" + key[0].encode() + b"\0")
        for k in sorted(state):
            t = state[k].detach()
            h.update(f"{k}\0{str(t.dtype)}\0{tuple(t.shape)}\0".encode())
            t = t.to("cpu").contiguous()
            if t.dtype == torch.bfloat16:  # numpy has no bf16: hash the raw 16-bit words
                t = t.view(torch.int16)
            h.update(t.numpy().tobytes() if t.numel() else b"")
        digest = h.hexdigest()
        self._fingerprint_cache = (key, digest)
        return digest

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def describe(self) -> dict[str, Any]:
        """Name, resolved config, parameter counts, feature width and input size."""
        return {
            "name": self.name,
            "label": self.label or self.name,
            "class": type(self).__name__,
            "config": self.config,
            "params": self.num_parameters(),
            "trainable_params": self.num_parameters(trainable_only=True),
            "feature_dim": int(self.feature_dim),
            "image_size": int(self.image_size),
            "trainable": bool(self.trainable),
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}, image_size={self.image_size}"
