"""Where the Hydra configs live: ``configs/`` in a checkout, ``robo_s2/configs`` in a wheel."""

from pathlib import Path


def config_dir() -> Path:
    installed = Path(__file__).resolve().parent / "configs"
    if installed.is_dir():
        return installed
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"no robo_s2 configs in {installed} or {checkout}; reinstall robo_s2")
