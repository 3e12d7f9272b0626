"""Entry points: ``"package.module:attr"`` strings that name what a registry builds, imported only
when first used (so that listing encoders or data formats loads none of their dependencies)."""

from __future__ import annotations

import importlib
from typing import Any


def load_entry_point(spec: str) -> Any:
    """The object ``"package.module:attr"`` names."""
    module, sep, attr = spec.partition(":")
    if not (module and sep and attr):
        raise ValueError(f"entry point {spec!r} is not of the form 'package.module:attr'")
    return getattr(importlib.import_module(module), attr)
