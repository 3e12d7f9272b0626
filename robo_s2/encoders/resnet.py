"""The end-to-end ResNet-18 reference encoder (``name: resnet_e2e``): what diffusion_policy and
LeRobot users train by default, so that every frozen-encoder row has it beside it.

The recipe is diffusion_policy's (``get_resnet`` + ``replace_bn_with_gn`` + ``CropRandomizer``):

* **architecture**: a timm ``resnet18`` (torchvision's key names: ``conv1``, ``bn1``,
  ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...), classifier removed, every ``BatchNorm2d``
  replaced by ``GroupNorm(channels // 16, channels)`` (same module names, so ``bn1.weight`` is the
  GroupNorm's gain). Random init as torchvision's (Kaiming convs, norm gains 1, no zero-init of
  the last gain of each block), drawn from torch's RNG seeded with ``seed``.
* **trained end to end** with the policy from the store's images (``trainable: true``), so its
  features are never cached (:mod:`robo_s2.encoders.feature_cache` refuses it).
* **random-crop augmentation**: frames come in at ``image_size`` (area-downsized from the render,
  as for every encoder) and the network sees a ``crop_size = round(crop_ratio * image_size)``
  square crop: a random one per frame in training mode (``encoder.train()``; offsets from torch's
  global RNG, which training seeds and resumes), the centre one in eval mode (validation,
  evaluation, profiling), so train and eval shapes match. diffusion_policy crops 76 of 84 (0.905).
  (Training encodes each distinct frame of a batch once, so windows sharing a frame share its crop.)
* **feature**: ``pooling: mean`` — global average pool of the last map (512-D), or
  ``pooling: spatial_softmax`` — robomimic's keypoints: a 1x1 conv to ``num_kp`` maps, a softmax
  over positions each, their expected ``(x, y)`` in [-1, 1] (``2 * num_kp`` wide).
* **normalisation**: ImageNet mean/std on [0,1] pixels, inside the encoder.

Weights: random init by default (``pretrained: false``). ``pretrained: true`` with
``weights: /path/file`` loads a ResNet-18 state dict of your own (safetensors or a torch state dict,
read as data by :mod:`robo_s2.safe_io`) strictly: every tensor of the network from the file with
its shape, wrapper prefixes ``module.``/``encoder.``/``model.`` stripped, the ``fc.`` classifier
left unused. A BatchNorm file (torchvision's or timm's ``resnet18``) fits: its norm ``weight`` and
``bias`` initialise the GroupNorm gains and biases and its running statistics, which GroupNorm does
not have, are dropped (logged). ``pretrained: true`` without a file asks timm (HF cache, or the hub
when online) and is a clear error when it cannot have them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from robo_s2.encoders.backbone import check_weights_need_pretrained
from robo_s2.encoders.base import IMAGENET_MEAN, IMAGENET_STD, VisionEncoder
from robo_s2.errors import UserError

log = logging.getLogger("robo_s2.weights")

GN_CHANNELS_PER_GROUP = 16  # diffusion_policy's replace_bn_with_gn(features_per_group=16)
POOLING_CHOICES = ("mean", "spatial_softmax")
_POOLING_ALIASES = {"mean": "mean", "avg": "mean", "spatial_softmax": "spatial_softmax"}
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
MIN_CROP = 32  # the network downsamples by 32


def replace_bn_with_gn(
    module: nn.Module, channels_per_group: int = GN_CHANNELS_PER_GROUP
) -> nn.Module:
    """Every ``BatchNorm2d`` in ``module`` replaced (in place, same name) by
    ``GroupNorm(C // channels_per_group, C)`` with the BatchNorm's gain and bias copied."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = int(child.num_features)
            gn = nn.GroupNorm(max(1, c // channels_per_group), c, eps=child.eps, affine=True)
            if child.affine:
                with torch.no_grad():
                    gn.weight.copy_(child.weight)
                    gn.bias.copy_(child.bias)
            setattr(module, name, gn)
        else:
            replace_bn_with_gn(child, channels_per_group)
    return module


class SpatialSoftmax(nn.Module):
    """robomimic's spatial softmax: ``(B, C, h, w)`` -> ``(B, 2 * num_kp)`` keypoints.

    A 1x1 conv gives ``num_kp`` maps; each is softmaxed over its ``h*w`` positions and the expected
    ``(x, y)`` (a grid from -1 to 1 along each side) is that keypoint's pair, keypoint-major."""

    def __init__(self, in_channels: int, num_kp: int = 32) -> None:
        super().__init__()
        self.num_kp = int(num_kp)
        self.proj = nn.Conv2d(int(in_channels), self.num_kp, kernel_size=1)

    def forward(self, fmap: Tensor) -> Tensor:
        b, _, h, w = fmap.shape
        attn = self.proj(fmap).flatten(2).float().softmax(dim=-1)  # (B, K, h*w)
        ys = torch.linspace(-1.0, 1.0, h, device=fmap.device)
        xs = torch.linspace(-1.0, 1.0, w, device=fmap.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        pos = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)  # (h*w, 2)
        return (attn @ pos).reshape(b, 2 * self.num_kp)


def _describe_resnet(state: dict[str, Tensor]) -> str:
    """What network a state dict looks like, for error messages."""
    stem = state.get("conv1.weight")
    if stem is None or stem.dim() != 4:
        keys = list(state)[:3]
        return f"no ResNet stem (conv1.weight) in the file; its first keys: {keys}"
    depths: list[int] = []
    for i in range(1, 5):
        blocks = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{i}.")}
        depths.append(len(blocks))
    bottleneck = any(k.endswith(".conv3.weight") for k in state)
    kind = "bottleneck" if bottleneck else "basic"
    names: dict[tuple[object, ...], str] = {
        (2, 2, 2, 2, "basic"): "resnet18",
        (3, 4, 6, 3, "basic"): "resnet34",
        (3, 4, 6, 3, "bottleneck"): "resnet50",
    }
    name = names.get((*depths, kind))
    return f"the file looks like a ResNet with {kind} blocks {depths}" + (
        f" ({name})" if name else ""
    )


def load_resnet_weights(net: nn.Module, model: str, path: str) -> None:
    """A ResNet state dict file (timm/torchvision key names, BatchNorm or GroupNorm) loaded into
    the GroupNorm network ``net`` strictly; BatchNorm running statistics are dropped."""
    from robo_s2.safe_io import fit_state_dict, read_weights, state_dict_in

    state = state_dict_in(read_weights(path, f"weights file for '{model}'"), path)
    expected = net.state_dict()
    dropped: list[str] = []

    def drop_bn_stats(s: dict[str, Tensor]) -> dict[str, Tensor]:
        # a BatchNorm's running statistics have no place in the GroupNorm that replaced it
        keep = {}
        for k, v in s.items():
            owner, _, leaf = k.rpartition(".")
            if leaf in _BN_STATS and f"{owner}.weight" in expected and k not in expected:
                dropped.append(k)
                continue
            keep[k] = v
        return keep

    fitted = fit_state_dict(
        state,
        expected,
        source=str(path),
        target=f"'{model}' (GroupNorm)",
        adapt=drop_bn_stats,
        error_prefix=f"weights for the end-to-end '{model}' encoder could not be loaded from {path}",
        fix=(
            f"{_describe_resnet(state)}; pass a '{model}' state dict in timm/torchvision key "
            "names (conv1.weight, bn1.weight, layer1.0.conv1.weight, ...)"
        ),
    )
    net.load_state_dict(fitted, strict=True)
    if dropped:
        log.info(
            f"{path}: dropped {len(dropped)} BatchNorm running-statistics tensors (GroupNorm has "
            "none); its norm gains and biases initialise the GroupNorm layers"
        )


class ResNetE2EEncoder(VisionEncoder):
    """A GroupNorm ResNet trained end to end from images, with random-crop augmentation."""

    model: Any  # a timm ResNet (forward_features, num_features): duck-typed
    pool: SpatialSoftmax | None

    def __init__(
        self,
        model: str = "resnet18",
        image_size: int = 84,
        crop_ratio: float = 0.9,
        pooling: str = "mean",
        num_kp: int = 32,
        pretrained: bool = False,
        weights: str | None = None,
        trainable: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_weights_need_pretrained(weights, pretrained)
        kind = _POOLING_ALIASES.get(str(pooling).strip().lower())
        if kind is None:
            raise UserError(
                f"unknown pooling '{pooling}' for the ResNet encoder; choose one of: "
                f"{', '.join(POOLING_CHOICES)}"
            )
        size = int(image_size)
        ratio = float(crop_ratio)
        if not 0.0 < ratio <= 1.0:
            raise UserError(f"crop_ratio={crop_ratio} must be in (0, 1] (1 = no crop)")
        crop = int(round(ratio * size))
        if crop < MIN_CROP:
            raise UserError(
                f"image_size={size} with crop_ratio={ratio} gives {crop}px crops; the ResNet "
                f"needs at least {MIN_CROP}px (it downsamples by 32): raise image_size or "
                "crop_ratio"
            )
        if kind == "spatial_softmax" and int(num_kp) < 1:
            raise UserError(f"num_kp={num_kp} must be >= 1 for spatial_softmax pooling")
        self.set_config(
            "resnet_e2e",
            model=str(model),
            image_size=size,
            crop_ratio=ratio,
            pooling=kind,
            num_kp=int(num_kp),
            pretrained=bool(pretrained),
            weights=None if weights is None else str(weights),
            trainable=bool(trainable),
            seed=int(seed),
        )
        self.image_size = size
        self.crop_size = crop
        self.pooling = kind
        # channels-last convs: forward + backward ~10% faster on one core of this CPU (and the
        # layout cuDNN prefers); weights files are written contiguous all the same
        net = self._build(str(model), bool(pretrained), weights, int(seed))
        self.model = net.to(memory_format=torch.channels_last)
        self.width = int(self.model.num_features)
        if kind == "spatial_softmax":
            from robo_s2.encoders.backbone import seeded

            with seeded(int(seed) + 1):
                self.pool = SpatialSoftmax(self.width, int(num_kp))
            self.feature_dim = 2 * int(num_kp)
        else:
            self.pool = None
            self.feature_dim = self.width
        self.trainable = bool(trainable)
        if not self.trainable:
            self.freeze()

    @staticmethod
    def _build(model: str, pretrained: bool, weights: str | None, seed: int) -> nn.Module:
        from pathlib import Path

        import timm

        from robo_s2.encoders.backbone import create_timm_model

        if model not in timm.list_models(module="resnet"):
            raise UserError(
                f"'{model}' is not a timm ResNet; the end-to-end encoder takes resnet18, "
                "resnet34, resnet50, ... (timm.list_models(module='resnet'))"
            )
        path = None if weights is None else Path(str(weights)).expanduser()
        if path is not None and not path.is_file():
            raise UserError(f"weights file {path} for the end-to-end '{model}' does not exist")
        # torchvision's init (diffusion_policy's get_resnet): no zero-init of the last norm gain
        net = create_timm_model(
            model, pretrained and weights is None, None, {"zero_init_last": False}, seed
        )
        replace_bn_with_gn(net)
        if path is not None:
            load_resnet_weights(net, model, str(path))
        return net

    # --- crops ---------------------------------------------------------------------------------
    def crop(self, x: Tensor) -> Tensor:
        """``(B,3,S,S)`` -> ``(B,3,c,c)``: a random crop per frame in training mode (offsets from
        torch's global CPU RNG), the centre crop in eval mode."""
        s, c = x.shape[-1], self.crop_size
        if c >= s:
            return x
        if not self.training:
            lo = (s - c) // 2
            return x[:, :, lo : lo + c, lo : lo + c]
        b = x.shape[0]
        top = torch.randint(0, s - c + 1, (b,)).to(x.device)
        left = torch.randint(0, s - c + 1, (b,)).to(x.device)
        ar = torch.arange(c, device=x.device)
        rows = (top[:, None] + ar)[:, :, None]  # (B, c, 1)
        cols = (left[:, None] + ar)[:, None, :]  # (B, 1, c)
        batch = torch.arange(b, device=x.device)[:, None, None]
        return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # channels-last

    # --- the contract --------------------------------------------------------------------------
    def feature_map(self, images: Tensor) -> Tensor:
        """Frames -> the last stage's map ``(B, width, h, w)`` of the (cropped) image."""
        x = self.crop(self.prepare(images))
        # constants, not buffers: a non-persistent buffer would enter the trainer's resume state
        # (training.optim.trainable_state) but not load_state_dict, and break resuming
        mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x - mean) / std
        return self.model.forward_features(x.contiguous(memory_format=torch.channels_last))

    def forward_tokens(self, images: Tensor) -> Tensor:
        return self.feature_map(images).flatten(2).transpose(1, 2)

    def forward(self, images: Tensor) -> Tensor:
        fmap = self.feature_map(images)
        if self.pool is not None:
            return self.pool(fmap)
        return fmap.mean(dim=(2, 3))

    def tokens_per_pass(self, batch: int, device: torch.device | None = None) -> int:
        """A conv is a matmul over every position of its map: the stride-4 map of the crop (the
        first stage, where most of the work is) times the batch."""
        return int(batch) * (self.crop_size // 4) ** 2

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            model=self.config["model"],
            norm=f"GroupNorm ({GN_CHANNELS_PER_GROUP} channels per group)",
            crop_size=self.crop_size,
            crop="random per frame in training, centre in eval",
            pooling=self.pooling,
            reference="end to end from images (diffusion_policy / LeRobot default)",
        )
        return d


# the class is its own factory: its constructor is the option list the registry checks
