"""timm-style encoder registry: ``register_encoder(name, factory)``, ``create_encoder(...)``.

``create_encoder`` accepts

* a registered factory name (``"timm"``, ``"mvp"``, ``"s2"``, ...) plus keyword options,
* the name of an encoder config file, ``configs/encoder/<name>.yaml`` (``"vit_t_s2"``, ``"mvp_b"``),
* any timm model name (``"vit_small_patch16_224"``), short for ``{"name": "timm", "model": ...}``,
* a ``dict`` / ``DictConfig`` with a ``name`` key naming the factory and everything else as kwargs
  (the Hydra ``encoder`` group's layout).

Keyword ``overrides`` are merged over the config (nested dicts merge key by key). Unknown names,
unknown options and unfilled mandatory values (``???``) are :class:`UserError` s.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from robo_s2.core.config import to_plain
from robo_s2.core.entry_points import load_entry_point
from robo_s2.device import check_precision
from robo_s2.encoders.base import VisionEncoder, runtime_defaults
from robo_s2.errors import UserError

EncoderFactory = Callable[..., VisionEncoder]
# options every encoder takes, handled here rather than by the factories: how to run the weights
RUNTIME_OPTIONS = ("precision",)
# options that describe an encoder config for reports, never passed to the factory nor fingerprinted:
# compute_matched_to names the encoder config whose GFLOPs this one matches (`robo-s2 encoders`)
REPORT_OPTIONS = ("compute_matched_to",)

# the built-in encoders: name -> "module:factory" (a VisionEncoder class, imported when first
# built, so that listing them loads neither timm nor torchvision); register_encoder adds more
_REGISTRY: dict[str, str | EncoderFactory] = {
    "timm": "robo_s2.encoders.backbone:TimmEncoder",
    "mvp": "robo_s2.encoders.mvp:MVPEncoder",
    "s2": "robo_s2.encoders.s2:S2Encoder",
    "s2_select": "robo_s2.encoders.s2_select:S2SelectEncoder",
    "piip": "robo_s2.encoders.piip:PIIPEncoder",
    "resnet_e2e": "robo_s2.encoders.resnet:ResNetE2EEncoder",
    "oracle": "robo_s2.encoders.oracle:OracleEncoder",
}
_RANDOM_WEIGHTS = False


def register_encoder(name: str, factory: str | EncoderFactory) -> None:
    """Make ``create_encoder(name, **options)`` build ``factory(**options)`` (a VisionEncoder
    class or function, or its ``"module:attr"`` path, imported on first use)."""
    existing = _REGISTRY.get(name)
    if existing is not None and _qualname(existing) != _qualname(factory):
        raise ValueError(f"encoder '{name}' is already registered by {_qualname(existing)}")
    _REGISTRY[name] = factory


def _qualname(entry: str | Callable) -> str:
    if isinstance(entry, str):
        return entry
    return f"{getattr(entry, '__module__', '?')}:{getattr(entry, '__qualname__', repr(entry))}"


def _factory(name: str) -> EncoderFactory:
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        entry = _REGISTRY[name] = load_entry_point(entry)
    return entry


def encoder_config_dir() -> Path:
    from robo_s2.paths import config_dir

    return config_dir() / "encoder"


def list_encoder_configs() -> list[str]:
    """Names of the config files in the Hydra ``encoder`` group."""
    try:
        d = encoder_config_dir()
    except FileNotFoundError:
        return []
    return sorted(p.stem for p in d.glob("*.yaml"))


def list_encoders(include_configs: bool = False) -> list[str]:
    """Registered factory names (and, with ``include_configs``, the encoder config names)."""
    names = set(_REGISTRY)
    if include_configs:
        names |= set(list_encoder_configs())
    return sorted(names)


def load_encoder_config(name: str) -> dict[str, Any]:
    """``configs/encoder/<name>.yaml`` as a plain dict (no Hydra compose; ``???`` left in place)."""
    from omegaconf import DictConfig, OmegaConf

    path = encoder_config_dir() / f"{name}.yaml"
    if not path.is_file():
        raise UserError(
            f"no encoder config '{name}' in {path.parent}; "
            f"known: {', '.join(list_encoder_configs())}"
        )
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{path} is not a mapping of encoder options; restore it")
    included = _included_configs(path, cfg.pop("defaults", None))
    own = cast(dict, OmegaConf.to_container(cfg, resolve=False))
    return {**included, **own}


def _included_configs(path: Path, defaults: Any) -> dict[str, Any]:
    """The top-level configs an encoder config's Hydra defaults list merges into it
    (``- /<name>@_here_``, before ``_self_``), read as Hydra composes them."""
    import yaml

    from robo_s2.paths import config_dir

    merged: dict[str, Any] = {}
    for entry in list(defaults or []):
        if entry == "_self_":
            continue
        name = entry[1 : -len("@_here_")] if isinstance(entry, str) else ""
        if not (entry.startswith("/") and entry.endswith("@_here_") and name):
            raise UserError(
                f"{path}: defaults entry {entry!r} is not of the form /<config>@_here_ "
                "(the only form encoder configs use); restore the file"
            )
        merged.update(yaml.safe_load((config_dir() / f"{name}.yaml").read_text()))
    return merged


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _missing_keys(cfg: Any, prefix: str = "") -> list[str]:
    if isinstance(cfg, Mapping):
        return [m for k, v in cfg.items() for m in _missing_keys(v, f"{prefix}{k}.")]
    if isinstance(cfg, str) and cfg == "???":
        return [prefix.rstrip(".")]
    return []


def _unknown_name(name: str) -> UserError:
    import difflib

    known = ", ".join(list_encoders())
    configs = ", ".join(list_encoder_configs())
    candidates = list_encoders(include_configs=True)
    try:
        import timm

        candidates += timm.list_models()
    except ImportError:  # pragma: no cover
        pass
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.75)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return UserError(
        f"unknown encoder '{name}'; {hint}known encoders: {known}; encoder configs: {configs}; "
        "or any timm model name (e.g. vit_small_patch16_224)"
    )


def _is_timm_model(name: str) -> bool:
    try:
        import timm
    except ImportError:  # pragma: no cover
        return False
    return bool(timm.is_model(name))


def resolve_encoder_config(
    name_or_cfg: str | Mapping[str, Any], **overrides: Any
) -> dict[str, Any]:
    """The plain config dict (``name`` = factory name) that ``create_encoder`` would build from."""
    return _resolve(name_or_cfg, overrides, ())


def _resolve(
    name_or_cfg: str | Mapping[str, Any], overrides: Mapping[str, Any], seen: tuple[str, ...]
) -> dict[str, Any]:
    label: str | None = None
    if isinstance(name_or_cfg, str):
        name = name_or_cfg
        if name in _REGISTRY:
            cfg: dict[str, Any] = {"name": name}
        elif name in list_encoder_configs():
            cfg = load_encoder_config(name)
            label = name
        elif _is_timm_model(name):
            cfg = {"name": "timm", "model": name}
            label = name
        else:
            raise _unknown_name(name)
    else:
        cfg = to_plain(name_or_cfg)
        if not isinstance(cfg, Mapping):
            raise UserError(
                f"an encoder config must be a name or a mapping, got {type(cfg).__name__}"
            )
        cfg = dict(cfg)
    cfg = _merge(cfg, to_plain(dict(overrides)))
    if "name" not in cfg:
        raise UserError(f"encoder config {cfg} has no 'name' key naming the encoder to build")
    if cfg["name"] not in _REGISTRY:
        # a config may name another config file or a timm model
        ref = str(cfg["name"])
        if ref in seen or ref == label:
            chain = " -> ".join([*seen, *([label] if label else []), ref])
            raise UserError(f"encoder configs refer to each other in a loop: {chain}")
        inner = _resolve(ref, {}, (*seen, *([label] if label else [])))
        rest = {k: v for k, v in cfg.items() if k != "name"}
        label = label or ref
        cfg = _merge(inner, rest)
    if label is not None:
        cfg["_label"] = label
    return cfg


def create_encoder(name_or_cfg: str | Mapping[str, Any], **overrides: Any) -> VisionEncoder:
    """Build an encoder from a name, a config-file name, a timm model name or a config mapping."""
    cfg = resolve_encoder_config(name_or_cfg, **overrides)
    label = cfg.pop("_label", None)
    if _RANDOM_WEIGHTS:
        cfg = _strip_weights(cfg["name"], cfg)
    missing = _missing_keys(cfg)
    if missing:
        what = label or cfg["name"]
        raise UserError(
            f"encoder '{what}' needs a value for {', '.join(missing)}; set it in the encoder "
            f"config or as an override (e.g. {missing[0]}=/path/to/file)"
        )
    name = cfg.pop("name")
    # how to run the weights (robo_s2.device), not what they are: kept out of the encoder's config
    # and fingerprint; feature caches are keyed by the precision a run resolves it to
    precision = check_precision(cfg.pop(RUNTIME_OPTIONS[0], runtime_defaults()["precision"]))
    for key in REPORT_OPTIONS:
        cfg.pop(key, None)
    factory = _factory(name)
    _check_kwargs(name, factory, cfg)
    encoder = factory(**cfg)
    if not isinstance(encoder, VisionEncoder):
        raise TypeError(
            f"encoder factory '{name}' returned {type(encoder).__name__}, not a VisionEncoder"
        )
    if not encoder._config:
        encoder.set_config(name, **cfg)
    encoder.label = label or encoder.name
    encoder.precision = precision
    return encoder


def check_encoder_options(
    name_or_cfg: str | Mapping[str, Any], _nested: bool = False, **overrides: Any
) -> None:
    """UserError naming an option the encoder's factory (or a nested encoder's, such as S²'s
    ``backbone``) does not take; builds nothing, so a typo is found before any work starts. (A
    nested encoder may lack a required option: its parent passes it on, e.g. S²'s ``weights``.)"""
    cfg = resolve_encoder_config(name_or_cfg, **overrides)
    cfg.pop("_label", None)
    name = cfg.pop("name")
    for key in (*RUNTIME_OPTIONS, *REPORT_OPTIONS):
        cfg.pop(key, None)
    _check_kwargs(name, _factory(name), cfg, required=not _nested)
    for value in cfg.values():
        if isinstance(value, Mapping) and str(value.get("name")) in _REGISTRY:
            check_encoder_options(value, _nested=True)


def _options(factory: EncoderFactory) -> list[inspect.Parameter] | None:
    """The keyword options of ``factory``; a class whose ``__init__`` passes ``**kwargs`` on to
    its base class takes the base's too; None: unknown (anything goes)."""
    params: list[inspect.Parameter] = []
    classes = [c for c in getattr(factory, "__mro__", ()) if "__init__" in vars(c)]
    for fn in classes or [factory]:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            return None
        own = [p for p in sig.parameters.values() if p.name != "self"]
        params += [p for p in own if p.kind is not p.VAR_KEYWORD and p.name not in _names(params)]
        if not any(p.kind is p.VAR_KEYWORD for p in own):
            return params
    return None


def _names(params: list[inspect.Parameter]) -> set[str]:
    return {p.name for p in params}


def _check_kwargs(
    name: str, factory: EncoderFactory, kwargs: Mapping[str, Any], required: bool = True
) -> None:
    params = _options(factory)
    if params is None:
        return
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise UserError(
            f"encoder '{name}' has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(accepted)}"
        )
    needed = [
        p.name
        for p in params
        if required
        and p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in kwargs
    ]
    if needed:
        raise UserError(f"encoder '{name}' needs {', '.join(needed)}")


@contextlib.contextmanager
def random_weights() -> Iterator[None]:
    """Inside this block every encoder is built with random weights, on purpose and on record.

    For architecture-only reports (parameters, GFLOPs, speed do not depend on the weights) on
    machines without the checkpoints: ``timm`` encoders get ``pretrained=false``, ``mvp`` encoders
    ``weights=none``, and S² passes no weights on to its backbone; the resolved configs (and so the
    fingerprints) say so. Never use it for features that a policy will be trained on.
    """
    global _RANDOM_WEIGHTS
    previous, _RANDOM_WEIGHTS = _RANDOM_WEIGHTS, True
    try:
        yield
    finally:
        _RANDOM_WEIGHTS = previous


def _strip_weights(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = {
        k: _strip_weights(str(v["name"]), dict(v)) if isinstance(v, Mapping) and "name" in v else v
        for k, v in cfg.items()
    }
    if "pretrained" in cfg or name == "timm":
        cfg["pretrained"] = False
    if name == "mvp":
        cfg["weights"] = "none"
    elif "weights" in cfg:
        cfg["weights"] = None
    return cfg
