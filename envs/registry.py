"""The registry of tasks and the one way the pipeline builds an env (see :mod:`envs`)."""

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import gymnasium

ENV_ID = "robo_s2/CubePick-v0"

# task id -> (entry point "module:Class", default constructor kwargs)
TASKS: dict[str, tuple[str, dict[str, Any]]] = {}


def register_task(env_id: str, entry_point: str, **defaults: Any) -> None:
    """Make ``env_id`` a task: ``entry_point`` (``"module:Class"``, importable in worker
    processes) built with ``defaults`` under any spec's own kwargs; gymnasium learns it too."""
    TASKS[env_id] = (entry_point, dict(defaults))
    if env_id not in gymnasium.registry:
        gymnasium.register(id=env_id, entry_point=entry_point, kwargs=dict(defaults))


def env_class(env_id: str = ENV_ID) -> type:
    """The class of task ``env_id``; an unknown id is a ValueError naming the known ones."""
    if env_id not in TASKS:
        raise ValueError(f"unknown env id {env_id!r}; registered tasks: {', '.join(TASKS)}")
    module, _, name = TASKS[env_id][0].partition(":")
    return getattr(importlib.import_module(module), name)


def env_parameters(env_id: str = ENV_ID) -> list[str]:
    """The constructor arguments an env spec of task ``env_id`` may set (besides ``id``)."""
    return [p for p in inspect.signature(env_class(env_id)).parameters if p != "self"]


def make_env(spec: Mapping[str, Any] | None = None) -> Any:
    """The env ``spec`` describes: ``spec["id"]`` (default :data:`ENV_ID`) picks the task, the
    other keys are its constructor kwargs over the task's defaults. ``env.task_id`` says which."""
    kwargs = dict(spec or {})
    env_id = str(kwargs.pop("id", None) or ENV_ID)
    cls = env_class(env_id)
    env = cls(**{**TASKS[env_id][1], **kwargs})
    env.task_id = env_id
    return env


register_task(ENV_ID, "envs.cube_pick:CubePickEnv")
