"""Where the Hydra configs live: ``configs/`` in a checkout, ``robo_s2/configs`` in a wheel."""

from collections.abc import Iterable
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    installed = Path(__file__).resolve().parent / "configs"
    if installed.is_dir():
        return installed
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"no robo_s2 configs in {installed} or {checkout}; reinstall robo_s2")


def env_config(name: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """``CubePickEnv`` kwargs of an env config: ``configs/env/<name>.yaml`` (or a YAML file path;
    None: none, the constructor's defaults), with ``key=value`` overrides (values parsed as YAML,
    e.g. ``cube_region=[[0.35,0.65],[-0.15,0.15]]``) on top; the config's ``id`` is dropped."""
    import yaml

    kwargs: dict[str, Any] = {}
    if name is not None:
        path = Path(name)
        if not path.suffix:
            path = config_dir() / "env" / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (config_dir() / "env").glob("*.yaml"))
            raise FileNotFoundError(f"no env config {str(name)!r} ({path}); configs/env: {known}")
        kwargs = dict(yaml.safe_load(path.read_text()) or {})
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"env override {item!r} is not key=value")
        kwargs[key.strip()] = yaml.safe_load(value)
    kwargs.pop("id", None)
    return kwargs
