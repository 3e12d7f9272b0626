"""Configs as plain data: what the library stores, compares and writes as JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


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
