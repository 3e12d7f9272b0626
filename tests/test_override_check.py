"""The override check is exact (issue 32 item 5), tested over every command and every option of
every config group: a key the composed config has is never refused, a key it would ignore always
is; under the open subtrees (encoder and policy options, an experiment's rows, demos env/expert and
eval env) the factory or the experiment refuses it before any work."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from robo_s2.cli import COMMANDS, OPEN_SUBTREES, _check_overrides, refused_additions
from robo_s2.encoders.registry import check_encoder_options, list_encoder_configs
from robo_s2.errors import UserError
from robo_s2.paths import config_dir

GROUPS = sorted(p.name for p in config_dir().iterdir() if p.is_dir() and p.name != "base")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _compositions() -> list[tuple[str, tuple[str, ...]]]:
    """Every command alone, and each option of each config group under the first command (by
    name) that composes that group."""
    out, seen = [], set()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        for command in sorted(COMMANDS):
            out.append((command, ()))
            cfg = compose(command)
            for g in (g for g in GROUPS if g in cfg and g not in seen):
                seen.add(g)
                out += [(command, (f"{g}={o}",)) for o in _options(g)]
    return out


COMPOSITIONS = _compositions()


def _walk(node: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """``(dotted path, mapping)`` of every mapping outside the open subtrees and outside lists."""
    if prefix and OPEN_SUBTREES.match(prefix):
        return
    yield prefix, node
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))


def _closed_nodes(cfg) -> list[tuple[str, dict]]:
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    return [(p, n) for p, n in _walk(plain) if n]


def test_every_command_and_group_option_is_covered():
    commands = {c for c, _ in COMPOSITIONS}
    assert commands == set(COMMANDS)
    options = {o[0] for _, o in COMPOSITIONS if o}
    for group in ("encoder", "env", "policy", "experiment", "analysis", "data"):
        assert {f"{group}={o}" for o in _options(group)} <= options, group


@pytest.mark.parametrize("command, overrides", COMPOSITIONS, ids=lambda x: str(x))
def test_keys_the_config_has_pass_and_typos_of_them_are_refused(command, overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        base = compose(command, overrides=list(overrides))
    existing, typos = [], []
    for path, node in _closed_nodes(base):
        join = f"{path}." if path else ""
        existing += [
            f"++{join}{k}=null"
            for k, v in node.items()
            if not isinstance(v, dict | list) and not (config_dir() / f"{join}{k}").is_dir()
        ]  # a config group's name is chosen with group=option, never ++
        first = str(next(iter(node)))
        typos.append((f"+{join}{first}x=1", f"'{first}x'"))
    assert existing, (command, overrides)
    # every existing key may be set with ++ (and so with a plain override): nothing is refused
    _check_overrides(command, [*overrides, *existing])
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        refused = refused_additions(command, [*overrides, *(t for t, _ in typos)], base)
    assert len(refused) == len(typos), (set(t for t, _ in typos), refused)
    for (typo, leaf), message in zip(typos, refused, strict=True):
        assert typo in message and leaf in message and "silently ignored" in message


@pytest.mark.parametrize("name", list_encoder_configs())
def test_every_encoder_config_takes_its_options_and_refuses_a_typo(name):
    check_encoder_options(name)
    with pytest.raises(UserError, match="has no option 'poolingx'"):
        check_encoder_options(name, poolingx="mean")


def test_a_nested_encoder_option_typo_is_refused_before_building():
    check_encoder_options("vit_t_s2", backbone={"image_size": 64})
    with pytest.raises(UserError, match="encoder 'timm' has no option 'imagesize'"):
        check_encoder_options("vit_t_s2", backbone={"imagesize": 64})


@pytest.mark.parametrize("name", _options("policy"))
def test_every_policy_config_refuses_a_typo(name):
    from policies import create_policy

    cfg = OmegaConf.to_container(OmegaConf.load(config_dir() / "policy" / f"{name}.yaml"))
    assert isinstance(cfg, dict)
    cfg = {k: v for k, v in cfg.items() if k != "defaults"}
    kind = cfg.pop("name")
    if cfg.get("feature_tokens") == "auto":  # the trainer gives the encoder's token count
        cfg["feature_tokens"] = 1
    dims = dict(feature_dim=8, proprio_dim=3, action_dim=3)
    create_policy(kind, **dims, **cfg)
    with pytest.raises(UserError, match="historyx"):
        create_policy(kind, **dims, **cfg, historyx=2)


@pytest.mark.parametrize("name", _options("experiment"))
def test_every_experiment_config_row_demos_and_eval_options_are_exact(name):
    """Each committed experiment's rows name encoder options their encoders take, its demos and
    eval name env and expert options that exist; a typo added to any of them is refused."""
    from robo_s2.core.config import to_plain
    from robo_s2.experiments.runner import check_env_options, missing_values, parse_rows

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("experiment", overrides=[f"experiment={name}"])
    # values the command line must give (weights files)
    for key in missing_values(OmegaConf.to_container(cfg, resolve=False)):
        OmegaConf.update(cfg, key, "/given/on/the/command/line.pth")
    exp = to_plain(cfg.experiment)
    rows = parse_rows(exp["rows"])
    for row in rows:
        check_encoder_options(row.encoder, **row.overrides)
        with pytest.raises(UserError, match="has no option 'poolngx'"):
            check_encoder_options(row.encoder, **row.overrides, poolngx="mean")
    check_env_options(exp)
    for where in ("env", "expert"):
        bad = {
            **exp,
            "demos": {**exp["demos"], where: {**(exp["demos"].get(where) or {}), "sedx": 1}},
        }
        with pytest.raises(UserError, match=f"experiment.demos.{where} has no option 'sedx'"):
            check_env_options(bad)
    bad = {**exp, "eval": {**exp["eval"], "env_overrides": {"sedx": 1}}}
    with pytest.raises(UserError, match="experiment.eval.env_overrides has no option 'sedx'"):
        check_env_options(bad)
