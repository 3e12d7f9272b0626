"""One source of defaults: the YAML under ``configs/`` is what the CLI and the Python API run.

The library reads configs strictly (no ``.get(key, default)`` fallbacks that could disagree with
the YAML); the Python entry points with keyword defaults state the YAML's values, held together
here; an incomplete config is refused with the keys it lacks."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import yaml
from helpers import robo_s2

from robo_s2.core.config import load_config, missing_keys, to_plain
from robo_s2.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command, overrides",
    [
        ("train", ["data.store=d.zarr"]),
        ("eval", ["checkpoint=expert"]),
        ("pretrain", []),
        ("experiment", []),
        ("quickstart", []),
    ],
)
def test_python_api_composes_what_the_cli_resolves(command, overrides):
    out = robo_s2(command, *overrides, "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout) == to_plain(load_config(command, overrides))


def test_evaluate_keyword_defaults_are_eval_yaml():
    from robo_s2.evaluation.runner import evaluate

    cli = to_plain(load_config("eval"))
    params = inspect.signature(evaluate).parameters
    checked = []
    for name, p in params.items():
        if p.default is inspect.Parameter.empty or name not in cli:
            continue
        value = cli[name]
        if isinstance(value, dict):  # a section of nulls = "none set" = None in Python
            unset = {k: v for k, v in value.items() if v is not None}
            if name == "expert":  # evaluate(expert=None) runs the noiseless expert
                assert unset == {"noise_std": 0.0}
                unset = {}
            assert p.default is None and unset == {}, name
        else:
            assert p.default == value, f"evaluate({name}={p.default!r}) but eval.yaml {value!r}"
        checked.append(name)
    assert len(checked) >= 12, checked  # every option of robo-s2 eval has its keyword


def test_run_experiment_keyword_defaults_are_experiment_yaml():
    from robo_s2.experiments.runner import run_experiment

    cli = to_plain(load_config("experiment"))
    params = inspect.signature(run_experiment).parameters
    for name in ("workers", "jobs", "device"):
        assert params[name].default == cli[name], name


def test_collect_keyword_defaults_are_collect_yaml():
    from robo_s2.data.collection import collect

    cli = to_plain(load_config("collect"))
    params = inspect.signature(collect).parameters
    for name in ("seed", "keep_failed", "max_attempts", "placement"):
        assert params[name].default == cli[name], name
    assert params["store_format"].default == cli["format"]


def test_feature_cache_defaults_are_the_data_and_encode_yaml():
    from robo_s2.encoders.feature_cache import ENCODE_BATCH, encode_store

    assert inspect.signature(encode_store).parameters["batch_size"].default == ENCODE_BATCH
    assert ENCODE_BATCH == to_plain(load_config("train", ["data.store=x"]))["data"]["batch_size"]
    assert ENCODE_BATCH == to_plain(load_config("encode"))["batch_size"]


@pytest.mark.parametrize("policy", ["chunk_transformer", "mlp"])
def test_policy_constructor_defaults_are_its_yaml(policy):
    from policies import create_policy

    cfg = to_plain(load_config("train", [f"policy={policy}"]))["policy"]
    built = create_policy(policy, feature_dim=8, proprio_dim=3, action_dim=4).config
    for key, value in cfg.items():
        if key in ("name", "feature_tokens"):  # feature_tokens: auto is the trainer's to resolve
            continue
        if key == "execution":
            value = {**value, "n_action_steps": value["n_action_steps"] or 8}
        assert built[key] == value, f"{policy}.{key}: constructor {built[key]!r}, YAML {value!r}"


@pytest.mark.parametrize(
    "command, drop",
    [("train", "train.weight_decay"), ("pretrain", "train.warmup_epochs")],
)
def test_an_incomplete_config_is_refused_naming_the_key(tmp_path, command, drop):
    cfg = to_plain(load_config(command, ["data.store=x.zarr"] if command == "train" else []))
    section, key = drop.split(".")
    del cfg[section][key]
    if command == "train":
        from robo_s2.training.trainer import train as entry
    else:
        from robo_s2.pretraining.pretrainer import pretrain as entry
    with pytest.raises(UserError, match=f"lacks {drop}; build it with") as err:
        entry(cfg, tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_incomplete_experiment_is_refused(tmp_path):
    from robo_s2.experiments.runner import run_experiment

    exp = to_plain(load_config("experiment"))["experiment"]
    del exp["eval"]["n_videos"]
    with pytest.raises(UserError, match=r"lacks experiment\.eval\.n_videos"):
        run_experiment(exp, tmp_path / "out", workers=0, progress=False)


def test_missing_keys_recurses_and_treats_empty_mappings_as_open():
    ref = {"a": 1, "b": {"c": 2, "d": {}}, "e": {}}
    assert missing_keys({"a": 0, "b": {"d": {"x": 1}}, "e": {"y": 1}}, ref) == ["b.c"]
    assert missing_keys({"b": 3}, ref) == ["a", "b", "e"]


# the config readers: what library code calls config mappings inside these packages
CONFIG_NAMES = {"cfg", "tcfg", "dcfg", "pcfg", "scfg", "exp", "protocol", "demos", "t"}
STRICT_PACKAGES = ("training", "pretraining", "experiments", "evaluation", "commands")


def _config_name(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _is_literal_default(node: ast.AST) -> bool:
    """A literal that would stand in for a config value (None and empty containers say "none")."""
    if isinstance(node, ast.Constant):
        return node.value is not None and node.value != ""
    if isinstance(node, ast.List | ast.Tuple | ast.Set | ast.Dict):
        return bool(node.keys if isinstance(node, ast.Dict) else node.elts)
    return False


def _fallback_reads(tree: ast.AST) -> list[int]:
    """Lines of ``cfg.get(k, literal)``, ``cfg.get(k) or literal`` and ``getattr(cfg, k, literal)``
    over a config mapping (:data:`CONFIG_NAMES`)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "get" and _config_name(node.func.value) in CONFIG_NAMES:
                if len(node.args) == 2 and not (
                    isinstance(node.args[1], ast.Constant) and node.args[1].value is None
                ):
                    lines.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr":
            if len(node.args) == 3 and _config_name(node.args[0]) in CONFIG_NAMES:
                if _is_literal_default(node.args[2]):
                    lines.append(node.lineno)
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            first = node.values[0]
            if (
                isinstance(first, ast.Call)
                and isinstance(first.func, ast.Attribute)
                and first.func.attr == "get"
                and _config_name(first.func.value) in CONFIG_NAMES
                and any(_is_literal_default(v) for v in node.values[1:])
            ):
                lines.append(node.lineno)
    return lines


def test_no_config_read_falls_back_to_a_literal_default():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for package in STRICT_PACKAGES
        for path in sorted((ROOT / "robo_s2" / package).rglob("*.py"))
        for line in _fallback_reads(ast.parse(path.read_text()))
    ]
    assert offenders == [], f"config reads with a fallback default: {offenders}"


def test_the_fallback_guard_sees_every_form():
    code = """
cfg.get("a", 3)
cfg.get("b") or "image"
tcfg.get("c") or 32
getattr(cfg, "d", 6)
cfg.get("e", None)
cfg.get("f") or {}
getattr(cfg, "g", None)
other.get("h") or 5
"""
    assert _fallback_reads(ast.parse(code)) == [2, 3, 4, 5]


def test_env_yaml_is_the_env_constructor():
    from envs.cube_pick import CubePickEnv

    params = inspect.signature(CubePickEnv.__init__).parameters
    cfg = yaml.safe_load((ROOT / "configs" / "env" / "cube_pick.yaml").read_text())
    del cfg["id"]
    for key, value in cfg.items():
        default = params[key].default
        default = list(default) if isinstance(default, tuple) else default
        assert default == value, f"CubePickEnv({key}={default!r}) but cube_pick.yaml {value!r}"


def test_scorer_yaml_is_fit_tile_scorer():
    from robo_s2.pretraining.tile_scorer import fit_tile_scorer

    params = inspect.signature(fit_tile_scorer).parameters
    cli = to_plain(load_config("analyze", ["analysis=scorer"]))
    names = {"hidden": "hidden", "steps": "steps", "lr": "lr", "fit_batch_size": "batch_size"}
    for yaml_key, param in names.items():
        assert params[param].default == cli[yaml_key], (yaml_key, params[param].default)
    assert params["seed"].default == cli["seed"]


def test_eval_episode_counts_are_what_eval_yaml_says():
    import re

    from robo_s2.evaluation.runner import DEFAULT_N

    line = next(
        ln for ln in (ROOT / "configs" / "eval.yaml").read_text().splitlines()
        if ln.startswith("n_episodes:")
    )  # fmt: skip
    stated = {}
    for names, n in re.findall(r"([a-z0-9/]+): (\d+)", line.split("#", 1)[1]):
        stated |= dict.fromkeys(names.split("/"), int(n))
    assert stated == DEFAULT_N


def test_every_encoder_config_inherits_the_one_precision_default():
    from robo_s2.encoders.base import runtime_defaults
    from robo_s2.encoders.registry import list_encoder_configs, load_encoder_config

    for name in list_encoder_configs():
        text = (ROOT / "configs" / "encoder" / f"{name}.yaml").read_text()
        assert "\nprecision:" not in text, f"{name}.yaml restates the precision default"
        assert load_encoder_config(name)["precision"] == runtime_defaults()["precision"], name
        hydra = to_plain(load_config("train", ["data.store=x", f"encoder={name}"]))
        assert hydra["encoder"]["precision"] == runtime_defaults()["precision"], name


def test_reconstruct_settings_defaults_are_its_yaml():
    from dataclasses import MISSING, fields

    from robo_s2.experiments.reconstruct import ReconstructConfig

    cli = to_plain(load_config("analyze", ["analysis=reconstruct"]))
    for f in fields(ReconstructConfig):
        if f.default is MISSING:  # store, source, target: the YAML's are examples
            continue
        value = tuple(cli[f.name]) if isinstance(f.default, tuple) else cli[f.name]
        assert f.default == value, f"ReconstructConfig.{f.name}={f.default!r}, YAML {value!r}"
