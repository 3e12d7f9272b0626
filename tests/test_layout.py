"""The layout rules of docs/ARCHITECTURE.md, checked so that they stay true: one folder per stage,
no module next to a package of the same stem, thin package faces, short functions, and the public
entry points that users import."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("robo_s2", "policies", "envs")
MAX_INIT_LINES = 60
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 400
MAX_TRAINING_MODULE_LINES = 500  # robo_s2/training: the trainer in rooms a newcomer can hold
# declarative templates may run long (the issue that set the rules names the MJCF builder)
LONG_BY_DESIGN = {"envs/panda_mjcf.py:build_mjcf"}


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_no_module_has_the_stem_of_a_package_beside_it():
    twins = [
        str(p.relative_to(ROOT))
        for p in _modules()
        if p.name != "__init__.py" and (p.parent / p.stem / "__init__.py").is_file()
    ]
    assert twins == []


def test_package_faces_are_thin():
    fat = {
        str(p.relative_to(ROOT)): n
        for p in _modules()
        if p.name == "__init__.py" and (n := len(p.read_text().splitlines())) > MAX_INIT_LINES
    }
    assert fat == {}


def test_no_function_runs_past_80_lines():
    long = {}
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{p.relative_to(ROOT)}:{node.name}"
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and where not in LONG_BY_DESIGN:
                    long[where] = n
    assert long == {}


def test_no_class_runs_past_400_lines():
    long = {}
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_CLASS_LINES:
                    long[f"{p.relative_to(ROOT)}:{node.name}"] = n
    assert long == {}


def test_training_modules_stay_short():
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / "robo_s2" / "training").glob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_TRAINING_MODULE_LINES
    }
    assert long == {}


def test_public_entry_points_import():
    from policies import BasePolicy, create_policy, load_policy
    from robo_s2.data import DemoStore, collect
    from robo_s2.data.interop import export_dp, import_robomimic, is_foreign
    from robo_s2.encoders import create_encoder
    from robo_s2.evaluation.runner import evaluate
    from robo_s2.experiments.runner import run_experiment
    from robo_s2.training.trainer import train

    assert DemoStore.__module__ == "robo_s2.data.store"
    assert collect.__module__ == "robo_s2.data.collection"
    assert callable(export_dp) and callable(import_robomimic) and callable(is_foreign)
    assert issubclass(
        create_policy("mlp", feature_dim=4, proprio_dim=2, action_dim=3).__class__, BasePolicy
    )
    assert all(callable(f) for f in (load_policy, create_encoder, evaluate, run_experiment, train))
