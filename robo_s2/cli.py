"""The ``robo-s2`` console script: ``robo-s2 <command> [hydra overrides]``.

Each command is a Hydra app whose primary config is ``configs/<command>.yaml`` and whose task
function is ``run(cfg)`` in ``robo_s2.commands.<module>``. Overrides are checked against the config
before Hydra starts so that a typo costs one clear line, not a screen of Hydra's message: unknown
keys, unknown config-group options (the available ones are listed), and ``+key=value`` additions of
keys the config does not have (Hydra would accept and silently ignore ``+train.stepz=5``; options
under ``encoder.`` and ``policy.`` may be added, their factories check them).

``ROBO_S2_DEBUG=1`` prints the traceback behind such a one-line error.

``encoder.trust_weights=true`` (or ``trust_weights=true``) is taken off the command line before
Hydra sees it: it lets weights files that need pickle load (:func:`robo_s2.safe_io.trusted_weights`)
and is never part of any config, so no file (a checkpoint, a saved run config) can switch it on.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import importlib
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from robo_s2.errors import UserError
from robo_s2.paths import config_dir

# command name -> (module under robo_s2.commands, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": (
        "quickstart",
        "the whole loop on a CPU: collect, encode, train, evaluate, table",
    ),
    "collect": ("collect", "scripted expert demonstrations into a zarr demo store"),
    "import": (
        "import_",
        "robomimic HDF5, diffusion_policy zarr or LeRobot dataset demos into a robo_s2 store",
    ),
    "export": (
        "export",
        "a robo_s2 store to robomimic HDF5, diffusion_policy zarr or a LeRobot dataset",
    ),
    "encode": ("encode", "run a frozen encoder over a store's frames and cache the features"),
    "pretrain": ("pretrain", "MAE pre-training of a ViT encoder on store frames and image folders"),
    "train": ("train", "behaviour cloning of a policy on a store's (cached) encoder features"),
    "eval": ("eval", "success rate of a checkpoint in the cube-picking simulation"),
    "experiment": ("experiment", "an encoder comparison (Table 8): every row and seed, one table"),
    "compare": ("compare", "rows of finished experiments (same demos and positions) in one table"),
    "encoders": ("encoders", "parameters, GFLOPs, feature width and frames/s of encoder configs"),
    "analyze": (
        "analyze",
        "encoder-feature analyses: reconstruct (S² Table 1), selection (s2_select tiles)",
    ),
}
# commands whose first bare word picks an option of a config group: `robo-s2 analyze reconstruct`
# is `robo-s2 analyze analysis=reconstruct`
GROUP_COMMANDS: dict[str, str] = {"analyze": "analysis"}

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


TRUST_KEYS = ("encoder.trust_weights", "trust_weights")
# config subtrees whose options may be added with +key=value: what the encoder and policy
# factories and the env constructor receive, which check the names themselves
OPEN_SUBTREES = re.compile(
    r"(encoder|policy|experiment\.rows\.\d+\.overrides|experiment\.demos\.(env|expert)"
    r"|experiment\.eval\.env_overrides)(\.|$)"
)


def pop_trust_flag(args: list[str]) -> tuple[list[str], bool]:
    """``args`` without ``encoder.trust_weights=...`` / ``trust_weights=...``, and its value."""
    out, trust = [], False
    for arg in args:
        key, eq, value = arg.lstrip("+").partition("=")
        if not eq or key not in TRUST_KEYS:
            out.append(arg)
            continue
        v = value.strip().lower()
        if v not in ("true", "false", "1", "0", "yes", "no"):
            fail(f"{key}={value} must be true or false")
        trust = v in ("true", "1", "yes")
    return out, trust


def group_choice(command: str, args: list[str]) -> list[str]:
    """``args`` with the bare word that names the ``command``'s group option (``reconstruct`` in
    ``robo-s2 analyze reconstruct store=...``) turned into ``<group>=<word>``; other commands'
    ``args`` unchanged. A missing or extra word is a one-line error."""
    group = GROUP_COMMANDS.get(command)
    if group is None:
        return args
    bare, skip_next = [], False
    for i, arg in enumerate(args):
        if skip_next:
            skip_next = False
        elif arg in _HYDRA_FLAGS_WITH_VALUE:
            skip_next = True
        elif not arg.startswith("-") and "=" not in arg:
            bare.append(i)
    options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
    given = any(a.lstrip("+~").split("=", 1)[0] == group for a in args if "=" in a)
    if len(bare) > 1:
        words = " ".join(args[i] for i in bare)
        fail(f"'robo-s2 {command}' takes one {group} name, got: {words}; choose one of: "
             f"{', '.join(options)}")  # fmt: skip
    if not bare:
        if not given:
            fail(f"'robo-s2 {command}' needs an {group}: robo-s2 {command} <{group}> "
                 f"[key=value ...]; choose one of: {', '.join(options)}")  # fmt: skip
        return args
    out = list(args)
    out[bare[0]] = f"{group}={args[bare[0]]}"
    return out


def _missing_option(command: str, exc: Any) -> str:
    """Hydra's 'Could not find encoder/foo' with the group's options, on one line."""
    missing = str(getattr(exc, "missing_cfg_file", "") or "")
    group, _, name = missing.rpartition("/")
    options = list(getattr(exc, "options", None) or [])
    if not group or not options:
        return ""
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (
        f"unknown {group} '{name}' for 'robo-s2 {command}'; {hint}available: {', '.join(options)}"
    )


def refused_additions(command: str, overrides: list[str], base: Any = None) -> list[str]:
    """Why each ``+a.b=v`` / ``++a.b=v`` of ``overrides`` would add a key the composed config does
    not have (outside :data:`OPEN_SUBTREES` and config-group appends), one message per refusal.
    ``base``: the config composed with the other overrides, when the caller has it."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf

    parsed = OverridesParser.create().parse_overrides(overrides)
    adds = [i for i, o in enumerate(parsed) if o.is_add() or o.is_force_add()]
    if not adds:
        return []
    if base is None:
        base = compose(
            config_name=command, overrides=[ov for i, ov in enumerate(overrides) if i not in adds]
        )
    absent = object()
    refused = []
    for o in (parsed[i] for i in adds):
        key = o.key_or_group
        if OPEN_SUBTREES.match(key) or (config_dir() / key.replace(".", "/")).is_dir():
            continue
        if OmegaConf.select(base, key, default=absent, throw_on_missing=False) is not absent:
            continue  # ++key=value of an existing key is a plain override
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if isinstance(node, DictConfig) and leaf in node.keys():
            continue  # an existing key whose value is still ??? (select calls it absent)
        if node is None and parent:
            refused.append(
                f"bad override '{o.input_line}' for 'robo-s2 {command}': there is no '{parent}' "
                f"to add '{leaf}' to (see 'robo-s2 {command} --cfg job' for the valid keys)"
            )
            continue
        keys = list(node.keys()) if isinstance(node, DictConfig) else []
        if isinstance(node, DictConfig) and not keys:
            continue  # an open (empty) mapping
        close = difflib.get_close_matches(leaf, [str(k) for k in keys], n=1, cutoff=0.6)
        hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
        where = f"'{parent}'" if parent else "the config"
        refused.append(
            f"bad override '{o.input_line}' for 'robo-s2 {command}': {where} has no key "
            f"'{leaf}'{hint}, and adding keys to it would be silently ignored; valid keys: "
            f"{', '.join(map(str, keys))}"
        )
    return refused


def _added_keys(command: str, overrides: list[str]) -> None:
    """Exit with the first of :func:`refused_additions`, if any."""
    refused = refused_additions(command, overrides)
    if refused:
        fail(refused[0])


def _sweep_variants(overrides: list[str]) -> list[list[str]]:
    """The override lists to check for a command line with ``--multirun`` sweeps: one with every
    sweep at its first value, then one per further value of each sweep (the others at their first),
    so a typo in any swept key or value is caught. A list value (``a=[1,2]``) is no sweep;
    ``interval(...)`` sweeps (enumerated only by a sweeper plugin) are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parsed = OverridesParser.create().parse_overrides(overrides)
    values: list[list[str]] = []
    for text, ov in zip(overrides, parsed, strict=True):
        if not ov.is_sweep_override():
            values.append([text])
            continue
        try:
            choices = list(ov.sweep_string_iterator())
        except HydraException:
            choices = []
        values.append([f"{ov.get_key_element()}={v}" for v in choices])
    base = [v[0] for v in values if v]
    variants = [base]
    for i, vals in enumerate(values):
        for v in vals[1:]:
            variants.append([v if j == i else w[0] for j, w in enumerate(values) if w])
    return variants


def _check_overrides(command: str, args: list[str]) -> None:
    """Compose the config with the user's overrides; Hydra's multi-line errors become one line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    overrides, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in _HYDRA_FLAGS_WITH_VALUE:
            skip_next = True
        elif not arg.startswith("-") and not arg.lstrip("+~").startswith("hydra"):
            overrides.append(arg)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            for variant in _sweep_variants(overrides):
                compose(config_name=command, overrides=variant)
                _added_keys(command, variant)
    except (HydraException, OmegaConfBaseException) as exc:
        if isinstance(exc, MissingConfigException) and _missing_option(command, exc):
            fail(_missing_option(command, exc))
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        fail(
            f"bad override for 'robo-s2 {command}': {detail} "
            f"(see 'robo-s2 {command} --cfg job' for the valid keys)"
        )


# faults of the machine, not of the input: one line saying what happened and that finished work
# stays (every writer here is atomic or resumable), instead of an OSError traceback
MACHINE_FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
}


def machine_fault(command: str, exc: OSError) -> str:
    """The one line for an OSError of :data:`MACHINE_FAULTS`."""
    where = f" writing {exc.filename}" if exc.filename else ""
    return (
        f"robo-s2 {command}: {MACHINE_FAULTS.get(exc.errno or 0, exc.strerror)}{where}; what "
        "finished before it is kept "
        "(stores keep every finished episode, runs their last checkpoint, files are written "
        "whole or not at all): free space or fix the permissions, then rerun the same command"
    )


def guarded(task: Callable, command: str = "") -> Callable:
    """Wrap a Hydra task so UserError, and a machine fault (:data:`MACHINE_FAULTS`), become one
    line on stderr and exit code 2."""

    def wrapper(cfg):  # noqa: ANN001 - Hydra passes a DictConfig
        try:
            return task(cfg)
        except UserError as exc:
            if os.environ.get("ROBO_S2_DEBUG") == "1":  # the traceback behind the one line
                traceback.print_exc()
            fail(str(exc))
        except OSError as exc:
            if exc.errno not in MACHINE_FAULTS:
                raise
            if os.environ.get("ROBO_S2_DEBUG") == "1":
                traceback.print_exc()
            fail(machine_fault(command, exc))
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
    rest, trust = pop_trust_flag(rest)
    rest = group_choice(command, rest)
    if any(a.lstrip("+~").startswith("hydra/launcher=") for a in rest):
        from robo_s2.experiments.launch import missing_launcher

        if (missing := missing_launcher(rest)) is not None:
            fail(missing)
    _check_overrides(command, rest)
    module = importlib.import_module(f"robo_s2.commands.{COMMANDS[command][0]}")
    sys.argv = [f"robo-s2-{command}", *rest]
    app = hydra.main(version_base=None, config_path=str(config_dir()), config_name=command)(
        guarded(module.run, command)
    )
    from robo_s2.safe_io import trusted_weights

    with trusted_weights(trust), hydra_faults_reach_us(command):
        app()


@contextlib.contextmanager
def hydra_faults_reach_us(command: str) -> Iterator[None]:
    """A machine fault in what Hydra writes itself (the run directory, ``.hydra/``), before or
    after the task, as the one line :func:`guarded` gives inside it: Hydra re-raises instead of
    printing its own trimmed traceback (any other error still ends in a traceback, now whole)."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except OSError as exc:
        if exc.errno not in MACHINE_FAULTS:
            raise
        fail(machine_fault(command, exc))
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


if __name__ == "__main__":
    main()
