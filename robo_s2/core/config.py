"""Configs: composed from ``configs/`` (the one source of defaults, :func:`load_config`), checked
complete (:func:`require_complete`), and as plain data (what the library stores, compares and
writes as JSON, :func:`to_plain`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig


def to_plain(value: Any, json_safe: bool = False) -> Any:
    """OmegaConf nodes (resolved; a missing ``???`` stays the string ``"???"``) and the mappings
    and lists holding them as plain dicts and lists; anything else unchanged. ``json_safe`` also
    turns what JSON cannot hold (tuples, paths, ...) into what it reads back as (lists, strings)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        plain = OmegaConf.to_container(value, resolve=True, throw_on_missing=False)
    elif isinstance(value, Mapping):
        plain = {k: to_plain(v) for k, v in value.items()}
    elif isinstance(value, list | tuple):
        plain = type(value)(to_plain(v) for v in value)
    else:
        plain = value
    return json.loads(json.dumps(plain, default=str)) if json_safe else plain


def load_config(command: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``configs/<command>.yaml`` composed with ``overrides`` exactly as ``robo-s2 <command>``
    composes it (without Hydra's own ``hydra`` node).

    The YAML files are the one source of every default: the Python API takes its configs from
    here (``train(load_config("train", ["data.store=d.zarr"]), run_dir)``), and the library reads
    every key strictly, so calling it from Python runs the recipe the CLI runs. Callable inside a
    running Hydra app (an experiment composing its rows' train configs)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from robo_s2.paths import config_dir

    # compose() needs its own GlobalHydra; inside a running Hydra app, borrow it for the call
    running = GlobalHydra.instance()
    previous = running.hydra if running.is_initialized() else None
    if previous is not None:
        running.clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            return compose(config_name=command, overrides=list(overrides))
    finally:
        if previous is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(previous)


def missing_keys(cfg: Any, reference: Any) -> list[str]:
    """Dotted keys of the mapping ``reference`` that ``cfg`` lacks (nested mappings recursed;
    a key whose reference value is an empty mapping is an open one and only has to exist)."""
    return _missing(to_plain(cfg), to_plain(reference), "")


def _missing(have: Any, ref: Any, prefix: str) -> list[str]:
    if not isinstance(ref, Mapping):
        return []
    if not isinstance(have, Mapping):
        return [prefix.rstrip(".") or "<root>"]
    out: list[str] = []
    for key, value in ref.items():
        if key not in have:
            out.append(f"{prefix}{key}")
        elif isinstance(value, Mapping) and value:
            out += _missing(have[key], value, f"{prefix}{key}.")
    return out


def require_complete(
    cfg: Any, command: str, overrides: Sequence[str] = (), exclude: Sequence[str] = ()
) -> None:
    """Refuse a ``command`` config that lacks a key ``configs/<command>.yaml`` has (composed with
    ``overrides``, e.g. the config's own group choices; top-level sections in ``exclude`` are not
    checked: groups whose keys depend on an option the reference cannot know),
    naming the keys and the fix: build it with :func:`load_config`. The library has no fallback
    defaults of its own to fill them with."""
    from robo_s2.errors import UserError

    reference = {
        k: v for k, v in to_plain(load_config(command, overrides)).items() if k not in exclude
    }
    missing = missing_keys(cfg, reference)
    if missing:
        shown = ", ".join(missing[:6]) + (
            f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        )
        raise UserError(
            f"the {command} config lacks {shown}; build it with robo_s2.core.config.load_config("
            f"{command!r}, overrides) (configs/{command}.yaml holds every default)"
        )
