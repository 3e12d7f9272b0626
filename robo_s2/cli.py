"""The ``robo-s2`` console script: ``robo-s2 <command> [hydra overrides]``.

Each command is a Hydra app whose primary config is ``configs/<command>.yaml`` and whose task
function is ``run(cfg)`` in ``robo_s2.commands.<module>``. Overrides are checked against the config
before Hydra starts so that a typo costs one clear line, not a screen of Hydra's message.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from robo_s2.errors import UserError
from robo_s2.paths import config_dir

# command name -> (module under robo_s2.commands, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": (
        "quickstart",
        "the whole loop on a CPU: collect, encode, train, evaluate, table",
    ),
    "collect": ("collect", "scripted expert demonstrations into a zarr demo store"),
    "import": ("import_", "robomimic HDF5 or diffusion_policy zarr demos into a robo_s2 store"),
    "export": ("export", "a robo_s2 store to robomimic HDF5 or diffusion_policy zarr"),
    "encode": ("encode", "run a frozen encoder over a store's frames and cache the features"),
    "pretrain": ("pretrain", "MAE pre-training of a ViT encoder on store frames and image folders"),
    "train": ("train", "behaviour cloning of a policy on a store's (cached) encoder features"),
    "eval": ("eval", "success rate of a checkpoint in the cube-picking simulation"),
    "experiment": ("experiment", "an encoder comparison (Table 8): every row and seed, one table"),
    "encoders": ("encoders", "parameters, GFLOPs, feature width and frames/s of encoder configs"),
}

USAGE = (
    "usage: robo-s2 <command> [key=value ...] [--multirun] [--cfg job]\n\ncommands:\n"
    + "\n".join(f"  {name:<12} {desc}" for name, (_, desc) in COMMANDS.items())
)


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


_HYDRA_FLAGS_WITH_VALUE = {
    "--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
    "--config-dir", "-cd", "--info", "-i", "--experimental-rerun",
}  # fmt: skip


def _check_overrides(command: str, args: list[str]) -> None:
    """Compose the config with the user's overrides; Hydra's multi-line errors become one line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in _HYDRA_FLAGS_WITH_VALUE:
            skip_next = True
        elif not arg.startswith("-") and not arg.lstrip("+~").startswith("hydra"):
            overrides.append(arg)
    if any("," in a.split("=", 1)[-1] or "range(" in a for a in overrides):
        return  # sweeps are validated by Hydra itself when --multirun expands them
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            compose(config_name=command, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        fail(
            f"bad override for 'robo-s2 {command}': {detail} "
            f"(see 'robo-s2 {command} --cfg job' for the valid keys)"
        )


def guarded(task: Callable) -> Callable:
    """Wrap a Hydra task so UserError becomes one line on stderr and exit code 2."""

    def wrapper(cfg):  # noqa: ANN001 - Hydra passes a DictConfig
        try:
            return task(cfg)
        except UserError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted; everything finished before the interrupt is kept", code=130)

    wrapper.__name__ = getattr(task, "__name__", "task")
    return wrapper


def main(argv: list[str] | None = None) -> None:
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        fail(f"unknown command '{command}'; choose one of: {', '.join(COMMANDS)}")
    os.environ.setdefault("MUJOCO_GL", "egl")
    _check_overrides(command, rest)
    module = importlib.import_module(f"robo_s2.commands.{COMMANDS[command][0]}")
    sys.argv = [f"robo-s2-{command}", *rest]
    app = hydra.main(version_base=None, config_path=str(config_dir()), config_name=command)(
        guarded(module.run)
    )
    app()


if __name__ == "__main__":
    main()
