"""The software and hardware a number was produced with, recorded beside every result.

A success rate depends on the simulator (MuJoCo's solver and renderer), the numerics (torch and its
bf16 kernels, which differ by CPU) and the thread count; :func:`software_versions` names them so
that ``eval_info.json``, a checkpoint's ``robo_s2.json`` and an experiment's ``results.json`` say
what made them, and :func:`mujoco_mismatch` tells evaluation when a checkpoint was trained under
another MuJoCo than the one running.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# distributions whose versions move results (name in the record -> distribution name)
PACKAGES = {
    "robo_s2": "robo_s2",
    "torch": "torch",
    "timm": "timm",
    "mujoco": "mujoco",
    "numpy": "numpy",
    "zarr": "zarr",
}
# /proc/cpuinfo flags that decide whether bf16 runs natively (robo_s2.device)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU model and which of :data:`BF16_FLAGS` it has (``None`` where unreadable)."""
    model, flags = None, None
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            present = set(value.split())
            flags = [f for f in BF16_FLAGS if f in present]
    return {"model": model or platform.processor() or platform.machine(), "bf16_flags": flags}


def software_versions() -> dict[str, Any]:
    """Python and the packages of :data:`PACKAGES`, the CPU and its bf16 flags, torch's threads."""
    import torch

    cpu = cpu_description()
    return {
        "python": platform.python_version(),
        **{name: _version(dist) for name, dist in PACKAGES.items()},
        "cpu": cpu["model"],
        "cpu_bf16_flags": cpu["bf16_flags"],
        "torch_threads": torch.get_num_threads(),
    }


def major_minor(version: str | None) -> str | None:
    if not version:
        return None
    parts = str(version).split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else str(version)


def mujoco_mismatch(recorded: Mapping[str, Any] | None) -> str | None:
    """A one-line warning when ``recorded`` (a checkpoint's ``versions``) names another MuJoCo
    major.minor than the one installed; ``None`` when they agree or the record has none."""
    if not isinstance(recorded, Mapping):
        return None
    then, now = major_minor(recorded.get("mujoco")), major_minor(_version("mujoco"))
    if then is None or now is None or then == now:
        return None
    return (
        f"this checkpoint was trained under MuJoCo {recorded.get('mujoco')}, evaluation runs "
        f"MuJoCo {_version('mujoco')}: physics or rendering may differ; compare success rates "
        "only within one MuJoCo version"
    )
