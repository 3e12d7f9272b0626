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
from cli_helpers import robo_s2

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


def test_no_config_read_falls_back_to_a_literal_default():
    offenders = []
    for package in STRICT_PACKAGES:
        for path in sorted((ROOT / "robo_s2" / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get"
                    and len(node.args) == 2
                ):
                    continue
                owner = node.func.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                default = node.args[1]
                if name in CONFIG_NAMES and not (
                    isinstance(default, ast.Constant) and default.value is None
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"config reads with a fallback default: {offenders}"


def test_reconstruct_settings_defaults_are_its_yaml():
    from dataclasses import MISSING, fields

    from robo_s2.experiments.reconstruct import ReconstructConfig

    cli = to_plain(load_config("analyze", ["analysis=reconstruct"]))
    for f in fields(ReconstructConfig):
        if f.default is MISSING:  # store, source, target: the YAML's are examples
            continue
        value = tuple(cli[f.name]) if isinstance(f.default, tuple) else cli[f.name]
        assert f.default == value, f"ReconstructConfig.{f.name}={f.default!r}, YAML {value!r}"
