"""timm backbones as frozen encoders (``name: timm``).

:class:`TokenEncoder` is the shared base of every encoder built around one token-producing network
(timm ViTs, MVP checkpoints): it normalises ``[0,1]`` pixels, runs the network to a token map
``(B, P + h*w, C)`` (after the network's final norm) and pools it (:mod:`robo_s2.encoders.pooling`).
The S² wrapper drives any :class:`TokenEncoder` through :meth:`TokenEncoder.pixel_tokens`.

Weights: ``pretrained: true`` loads a local file (``weights: /path/file``: safetensors or a torch
state dict, read as data and loaded strictly by :func:`load_weights_file` — every tensor of the
model from the file with its shape, wrapper prefixes ``module.``/``encoder.``/``model.`` stripped,
only classifier/decoder keys left unused), or what timm finds in the Hugging Face cache or on the
hub when online. When weights are asked for and cannot be had, or fit only partly, this is a
:class:`UserError` — never a silent fall back to random weights. ``pretrained: false`` is the
explicit random-init choice. (Offline, ``HF_HUB_OFFLINE=1`` makes the HF-cache lookup skip the
hub's network retries.) timm's own weights for some models expect other pixel statistics than
ImageNet's (ViT-Ti/S/B augreg: mean = std = 0.5): use ``normalize: model`` with them.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import pickle
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robo_s2.encoders.base import IMAGENET_MEAN, IMAGENET_STD, VisionEncoder
from robo_s2.encoders.pooling import Pooling
from robo_s2.errors import ModelArgsRejected, UserError

NORMALIZE_CHOICES = ("imagenet", "model", "none")


def check_weights_need_pretrained(weights: str | None, pretrained: bool) -> None:
    """A weights file is loaded only with ``pretrained: true``: refuse the contradiction."""
    if weights is not None and not pretrained:
        raise UserError(
            f"weights={weights} was given with pretrained=false; set pretrained=true to load "
            "it, or drop weights to use random weights"
        )


class TokenEncoder(VisionEncoder):
    """An encoder made of one network mapping normalised pixels to a token map.

    Subclasses set ``self.model``, ``self.width`` (token channels), ``self.num_prefix_tokens``,
    ``self.patch_size``, ``self.image_size`` and implement :meth:`_tokens`; then call
    :meth:`_setup` with the pooling spec and normalisation.
    """

    width: int
    num_prefix_tokens: int = 0
    patch_size: int = 1
    dynamic_size: bool = False  # accepts inputs of other sizes (multiples of patch_size)
    model_size: int | None = None  # the network's input size when frames are upsampled to it

    def _upsample_from(self, size: int | None) -> None:
        """Take frames of ``size``² (what a store or env holds) and bicubic-upsample them to the
        network's ``image_size``², as the S² paper feeds a model at a larger scale; from here on
        ``image_size`` is the frame size every check and cache uses. Call before :meth:`_setup`."""
        if size is None:
            return
        if int(size) >= self.image_size or int(size) <= 0:
            raise UserError(
                f"upsample_from={size} must be smaller than image_size={self.image_size} (the "
                "size the network runs at); drop upsample_from to run at the frames' size"
            )
        self.model_size, self.image_size = self.image_size, int(size)

    def _setup(
        self, pooling: str, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
    ) -> None:
        size = self.model_size or self.image_size
        if self.patch_size > 1 and size % self.patch_size:
            raise UserError(
                f"image_size {size} of encoder '{self.name}' is not divisible by its "
                f"patch size {self.patch_size}"
            )
        self.pooling = Pooling.parse(pooling)
        grid = size // self.patch_size if self.patch_size > 1 else None
        self.pooling.check(self.num_prefix_tokens, grid, what=f"encoder '{self.name}'")
        self.feature_dim = self.pooling.out_dim(self.width)
        if mean is not None:
            self.register_buffer(
                "pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False
            )
            self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        else:
            self.pixel_mean = None
            self.pixel_std = None

    @property
    def feature_shape(self) -> tuple[int, int]:
        """``(tokens, width)``: ``feature.view(B, *feature_shape)`` splits a feature into tokens."""
        return (self.pooling.num_tokens, self.width)

    def _tokens(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def normalize(self, x: Tensor) -> Tensor:
        if self.pixel_mean is None:
            return x
        return (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)

    def pixel_tokens(self, x: Tensor) -> Tensor:
        """Float ``(B,3,s,s)`` pixels in [0,1] (any size the network takes) -> ``(B, P+h*w, C)``."""
        return self._tokens(self.normalize(x))

    def forward_tokens(self, images: Tensor) -> Tensor:
        x = self.prepare(images)
        if self.model_size is not None:
            size = (self.model_size, self.model_size)
            x = F.interpolate(x.to(torch.float32), size=size, mode="bicubic").to(x.dtype)
        return self.pixel_tokens(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.pooling(self.forward_tokens(images), self.num_prefix_tokens)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            pooling=str(self.pooling),
            feature_shape=list(self.feature_shape),
            token_width=self.width,
            num_prefix_tokens=self.num_prefix_tokens,
            patch_size=self.patch_size,
        )
        return d


def _normalization(normalize: str, pretrained_cfg: dict | None) -> tuple[Any, Any]:
    if normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if normalize == "none":
        return None, None
    if normalize == "model":
        cfg = pretrained_cfg or {}
        return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    raise UserError(
        f"unknown normalize '{normalize}'; choose one of: {', '.join(NORMALIZE_CHOICES)}"
    )


def _check_timm_statistics(model: str, pretrained_cfg: dict | None) -> None:
    """timm's own weights trained on other pixel statistics than ImageNet's need normalize=model."""
    cfg = pretrained_cfg or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        return
    theirs, ours = (*mean, *std), (*IMAGENET_MEAN, *IMAGENET_STD)
    if len(theirs) == len(ours) and all(
        abs(a - b) < 1e-3 for a, b in zip(theirs, ours, strict=True)
    ):
        return
    raise UserError(
        f"timm's weights for '{model}' expect pixels normalised with mean {tuple(mean)} and std "
        f"{tuple(std)}, not ImageNet's; set normalize=model (the weights' own statistics)"
    )


class _RandomInitWarnings(logging.Handler):
    """Collects timm's notes that weights were not (fully) loaded: 'using random initialization'
    (a warning) and 'Missing keys ...' / 'Unexpected keys ...' after a non-strict load (INFO)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        low = msg.lower()
        if "random init" in low or low.startswith(("missing keys", "unexpected keys")):
            self.messages.append(msg)


@contextlib.contextmanager
def _catch_random_init() -> Iterator[_RandomInitWarnings]:
    handler = _RandomInitWarnings()
    logger = logging.getLogger("timm")
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)  # timm reports missing keys at INFO
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _unknown_model(model: str) -> UserError:
    import timm

    close = difflib.get_close_matches(model, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}" if close else ""
    return UserError(f"timm has no model '{model}'{hint} (see timm.list_models('vit_*'))")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's CPU RNG seeded for the block and restored after it (random init reproducible)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _resample_pos_embed(net: Any, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ViT file's position table resampled to the model's grid (bicubic, as timm does)."""
    own, pos = getattr(net, "pos_embed", None), state.get("pos_embed")
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if own is None or pos is None or grid is None or pos.dim() != 3 or own.dim() != 3:
        return state
    if pos.shape == own.shape or pos.shape[-1] != own.shape[-1]:
        return state
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(net, "no_embed_class", False) else int(net.num_prefix_tokens)
    n = pos.shape[1] - prefix
    if n < 1 or int(round(n**0.5)) ** 2 != n:
        return state
    resampled = resample_abs_pos_embed(pos, new_size=tuple(grid), num_prefix_tokens=prefix)
    return {**state, "pos_embed": resampled}


def load_weights_file(net: nn.Module, model: str, path: str) -> None:
    """Load a weights file into a built timm model strictly (:func:`robo_s2.safe_io.fit_state_dict`)."""
    from robo_s2.safe_io import fit_state_dict, read_weights, state_dict_in

    state = state_dict_in(read_weights(path, f"weights file for timm model '{model}'"), path)
    fitted = fit_state_dict(
        state,
        net.state_dict(),
        source=str(path),
        target=f"timm model '{model}'",
        adapt=lambda s: _resample_pos_embed(net, s),
        error_prefix=f"pretrained weights for timm model '{model}' could not be loaded from {path}",
    )
    net.load_state_dict(fitted, strict=True)


def create_timm_model(
    model: str,
    pretrained: bool,
    weights: str | None,
    model_kwargs: dict[str, Any],
    seed: int = 0,
) -> nn.Module:
    """``timm.create_model`` with weight failures turned into UserErrors, never random weights.

    The random init (all of it with ``pretrained=False``) is drawn from torch's RNG seeded with
    ``seed``, so the same config gives the same weights in every process: a policy trained on a
    random-init encoder's cached features meets the same encoder at evaluation. A ``weights``
    file is loaded by :func:`load_weights_file` (strictly, as data), not by timm.
    """
    import timm

    if not timm.is_model(model):
        raise _unknown_model(model)
    kwargs = dict(model_kwargs)
    kwargs.setdefault("num_classes", 0)
    if weights is not None:
        from pathlib import Path

        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise UserError(f"weights file {path} for timm model '{model}' does not exist")
    from_timm = pretrained and weights is None
    try:
        with _catch_random_init() as caught, seeded(seed):
            net = timm.create_model(model, pretrained=from_timm, **kwargs)
    except UserError:
        raise
    except TypeError as exc:
        raise ModelArgsRejected(
            f"timm model '{model}' rejected model_kwargs {model_kwargs}: {exc}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - timm/hub/torch raise many kinds
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if not from_timm:
            raise UserError(f"could not build timm model '{model}': {first}") from exc
        where = "from the local Hugging Face cache or the hub"
        if isinstance(exc, pickle.UnpicklingError):  # torch.load(weights_only=True) refused it
            first = "the file needs pickle to load, which is refused"
        raise UserError(
            f"pretrained weights for timm model '{model}' could not be loaded {where} "
            f"({type(exc).__name__}: {first}); put them in the HF cache, pass "
            "weights=/path/to/file, or set pretrained=false to use random weights on purpose"
        ) from exc
    if from_timm and caught.messages:
        raise UserError(
            f"timm could not load pretrained weights for '{model}' fully "
            f"({caught.messages[0][:300]}); pass weights=/path/to/file or set pretrained=false "
            "to use random weights on purpose"
        )
    if weights is not None:
        load_weights_file(net, model, str(path))
    return net


class TimmEncoder(TokenEncoder):
    """Any timm ViT (or other ``forward_features`` network) by name, frozen, pooled per frame."""

    model: Any  # a timm model (forward_features, num_prefix_tokens, ...): duck-typed

    def __init__(
        self,
        model: str = "vit_tiny_patch16_224",
        pretrained: bool = False,
        weights: str | None = None,
        image_size: int | None = None,
        dynamic_img_size: bool = False,
        pooling: str = "cls",
        normalize: str = "imagenet",
        model_kwargs: dict[str, Any] | None = None,
        trainable: bool = False,
        seed: int = 0,
        upsample_from: int | None = None,
    ) -> None:
        super().__init__()
        check_weights_need_pretrained(weights, pretrained)
        model_kwargs = dict(model_kwargs or {})
        if image_size is not None:
            model_kwargs["img_size"] = int(image_size)
        if dynamic_img_size:
            model_kwargs["dynamic_img_size"] = True
        self.set_config(
            "timm",
            model=model,
            pretrained=bool(pretrained),
            weights=None if weights is None else str(weights),
            image_size=image_size,
            dynamic_img_size=bool(dynamic_img_size),
            pooling=str(Pooling.parse(pooling)),
            normalize=normalize,
            model_kwargs=model_kwargs,
            trainable=bool(trainable),
            seed=int(seed),
            **({} if upsample_from is None else {"upsample_from": int(upsample_from)}),
        )
        mean, std = _normalization(normalize, None)  # validate before the (slow) build
        self.model = create_timm_model(model, bool(pretrained), weights, model_kwargs, int(seed))
        if normalize == "model":
            mean, std = _normalization(normalize, getattr(self.model, "pretrained_cfg", None))
        elif normalize == "imagenet" and pretrained and weights is None:
            _check_timm_statistics(model, getattr(self.model, "pretrained_cfg", None))
        net = self.model
        input_size = getattr(net, "pretrained_cfg", {}).get("input_size", (3, 224, 224))
        patch_embed = getattr(net, "patch_embed", None)
        if patch_embed is not None:
            ps = patch_embed.patch_size
            self.patch_size = int(ps[0] if isinstance(ps, tuple | list) else ps)
            img = getattr(patch_embed, "img_size", None)
            self.image_size = int(
                img[0] if isinstance(img, tuple | list) else (img or input_size[-1])
            )
        else:
            self.patch_size = 1
            self.image_size = int(image_size or input_size[-1])
        self.num_prefix_tokens = int(getattr(net, "num_prefix_tokens", 0)) if patch_embed else 0
        self.has_class_token = getattr(net, "cls_token", None) is not None
        self.width = int(getattr(net, "num_features", getattr(net, "embed_dim", 0)))
        self.dynamic_size = bool(dynamic_img_size) or patch_embed is None
        self._upsample_from(upsample_from)
        self._setup(pooling, mean, std)
        if not self.has_class_token and self.pooling.needs_prefix:
            raise UserError(f"pooling '{self.pooling}' needs a CLS token but '{model}' has none")
        self.trainable = bool(trainable)
        if not self.trainable:
            self.freeze()

    def _tokens(self, x: Tensor) -> Tensor:
        out = self.model.forward_features(x)
        if isinstance(out, list | tuple):
            out = out[-1]
        if out.dim() == 4:  # CNN feature map (B,C,H,W) -> channels-last tokens, no prefix
            out = out.flatten(2).transpose(1, 2)
        return out
