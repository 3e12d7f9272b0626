"""MuJoCo cube-picking task: env, controller, scripted expert, and the registry of tasks.

- ``envs.cube_pick.CubePickEnv`` — the gymnasium env, registered as ``robo_s2/CubePick-v0``
  (``import envs; gymnasium.make("robo_s2/CubePick-v0", image_size=224)``).
- ``envs.panda_mjcf`` — the MJCF scene (Panda-like arm from primitives, table, cube).
- ``envs.ik`` — damped-least-squares differential IK.
- ``envs.expert.ScriptedExpert`` — the privileged-state scripted demonstrator.

The pipeline builds every env through :func:`make_env` from an env spec: a mapping whose ``id``
names a registered task (default ``robo_s2/CubePick-v0``) and whose other keys are constructor
arguments over the task's defaults. A new task is :func:`register_task` plus an env config
(``configs/env/<name>.yaml`` with its ``id``); collection, evaluation and their workers need no edit.

Rendering is headless through EGL unless ``MUJOCO_GL`` says otherwise; it is set here, before any
module of this package imports mujoco.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from envs.registry import (  # noqa: E402
    ENV_ID,
    TASKS,
    env_class,
    env_parameters,
    make_env,
    register_task,
)

__all__ = ["ENV_ID", "TASKS", "env_class", "env_parameters", "make_env", "register_task"]
