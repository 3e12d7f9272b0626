"""MuJoCo cube-picking task: env, controller, scripted expert.

- ``envs.cube_pick.CubePickEnv`` — the gymnasium env, registered as ``robo_s2/CubePick-v0``
  (``import envs; gymnasium.make("robo_s2/CubePick-v0", image_size=224)``).
- ``envs.panda_mjcf`` — the MJCF scene (Panda-like arm from primitives, table, cube).
- ``envs.ik`` — damped-least-squares differential IK.
- ``envs.expert.ScriptedExpert`` — the privileged-state scripted demonstrator.

Rendering is headless through EGL unless ``MUJOCO_GL`` says otherwise; it is set here, before any
module of this package imports mujoco.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium  # noqa: E402

ENV_ID = "robo_s2/CubePick-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.cube_pick:CubePickEnv")

__all__ = ["ENV_ID"]
