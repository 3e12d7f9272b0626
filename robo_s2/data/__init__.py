"""Demonstration data: the zarr demo store, its windows, collection and import/export.

* :mod:`robo_s2.data.store` — :class:`DemoStore`, diffusion_policy's ReplayBuffer layout with
  crash-safe appends and a feature cache beside the frames;
* :mod:`robo_s2.data.windows` — the (history, chunk) window indices training and caching share;
* :mod:`robo_s2.data.collection` — scripted-expert episodes from parallel env workers;
* :mod:`robo_s2.data.image_sources` — frames for pretraining and analysis (stores, folders, renders);
* :mod:`robo_s2.data.interop` — robomimic HDF5 and diffusion_policy zarr import/export.

Names load on first use, so env worker processes that import a submodule never import torch.
"""

from typing import Any

_LAZY = {
    "DemoStore": "robo_s2.data.store",
    "collect": "robo_s2.data.collection",
    "CollectResult": "robo_s2.data.collection",
    "sequence_indices": "robo_s2.data.windows",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robo_s2.data' has no attribute {name!r}")
