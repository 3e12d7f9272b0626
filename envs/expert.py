"""Scripted pick expert for ``robo_s2/CubePick-v0``, driven by the privileged ``obs["state"]``.

A phase machine: ``approach`` (open, move above the cube, align the yaw), ``descend`` (to grasp
height, correcting x/y), ``close`` (squeeze for a few steps), ``lift`` (straight up, closed). A
missed grasp (fingers closed on nothing, or the cube left behind while lifting) is detected:
``retreat`` opens and backs up, then ``approach`` tries again. Gaussian noise on the action makes
demonstrations vary.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs.cube_pick import (
    STATE_CUBE_POS,
    STATE_CUBE_QUAT,
    STATE_EE_POS,
    STATE_EE_YAW,
    STATE_OPENING,
    quat_yaw,
)

PHASES = ("approach", "descend", "close", "lift", "retreat")


def wrap_quarter_turn(angle: float) -> float:
    """``angle`` modulo pi/2, in [-pi/4, pi/4): a cube looks the same every quarter turn."""
    return (angle + math.pi / 4) % (math.pi / 2) - math.pi / 4


class ScriptedExpert:
    """Privileged-state scripted expert producing the env's normalized action.

    Args:
        noise_std: std of the Gaussian noise added to every action component (normalized units,
            1 = full scale); the result is clipped to [-1, 1]. 0 gives a deterministic expert.
        seed: seed of the noise generator (``reset(seed)`` reseeds it).
        randomize_yaw: whether the env's action has a yaw component (5-D); must match the env.
        max_delta_pos: the env's ``max_delta_pos`` (m per full-scale action).
        max_delta_yaw: the env's ``max_delta_yaw`` (rad per full-scale action).
        cube_size: the env's cube edge (m).
        speed: top end-effector speed of the approach and the lift (m per step).
        hover_height: height of the end effector above the cube centre before descending (m).
        lift_height: how far above its grasp height the expert lifts the cube (m).
        align_yaw: with a yaw action, turn the hand to the cube's yaw (modulo a quarter turn) before
            descending. False keeps the hand's yaw (dyaw 0): an ablation measuring whether a grasp
            must match the yaw (for a 4 cm cube it must, for a 2 cm one it need not).

    Use :meth:`for_env` to take the env-dependent arguments from an env.
    """

    def __init__(
        self,
        noise_std: float = 0.05,
        seed: int | None = None,
        randomize_yaw: bool = False,
        max_delta_pos: float = 0.03,
        max_delta_yaw: float = 0.3,
        cube_size: float = 0.04,
        speed: float = 0.01,
        hover_height: float = 0.07,
        lift_height: float = 0.12,
        align_yaw: bool = True,
    ) -> None:
        if noise_std < 0:
            raise ValueError(f"noise_std={noise_std} must be >= 0")
        self.noise_std = float(noise_std)
        self.randomize_yaw = bool(randomize_yaw)
        self.max_delta_pos = float(max_delta_pos)
        self.max_delta_yaw = float(max_delta_yaw)
        self.cube_size = float(cube_size)
        self.speed = float(speed)
        self.hover_height = float(hover_height)
        self.lift_height = float(lift_height)
        self.align_yaw = bool(align_yaw)
        self.rng = np.random.default_rng(seed)
        self.reset(seed)

    @classmethod
    def for_env(cls, env: Any, **kwargs: Any) -> ScriptedExpert:
        """An expert matching ``env`` (a ``CubePickEnv`` or a wrapper of one)."""
        base = getattr(env, "unwrapped", env)
        defaults = {
            "randomize_yaw": base.randomize_yaw,
            "max_delta_pos": base.max_delta_pos,
            "max_delta_yaw": base.max_delta_yaw,
            "cube_size": base.cube_size,
        }
        return cls(**{**defaults, **kwargs})

    @property
    def action_dim(self) -> int:
        return 5 if self.randomize_yaw else 4

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (and reseed the noise when ``seed`` is given)."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.phase = "approach"
        self._phase_steps = 0
        self._grasp_z = 0.0
        self.retries = 0

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The action for ``obs`` (uses ``obs["state"]`` only), float32 in [-1, 1]."""
        s = np.asarray(obs["state"], dtype=np.float64)
        cube = s[STATE_CUBE_POS]
        ee = s[STATE_EE_POS]
        opening = float(s[STATE_OPENING])
        yaw_err = wrap_quarter_turn(quat_yaw(s[STATE_CUBE_QUAT]) - float(s[STATE_EE_YAW]))
        if not self.align_yaw:
            yaw_err = 0.0
        half = self.cube_size / 2
        grasp_z = max(cube[2] - 0.1 * half, 0.014)
        hover_z = cube[2] + self.hover_height
        xy_err = float(np.linalg.norm(cube[:2] - ee[:2]))

        target = ee.copy()
        gripper = -1.0
        speed = self.speed
        align_yaw = True
        self._phase_steps += 1
        for _ in range(3):  # allow a couple of same-step phase transitions
            phase = self.phase
            if phase == "approach":
                target = np.array([cube[0], cube[1], hover_z])
                # stay high until roughly above the cube, so the fingers never sweep it
                if xy_err > 0.03:
                    target[2] = max(hover_z, ee[2])
                if (
                    xy_err < 0.012
                    and abs(ee[2] - hover_z) < 0.02
                    and (not self.randomize_yaw or abs(yaw_err) < 0.06)
                ):
                    self._set_phase("descend")
                    continue
            elif phase == "descend":
                target = np.array([cube[0], cube[1], grasp_z])
                speed = 0.75 * self.speed
                # hysteresis: only a large drift while still high sends it back up
                if xy_err > 0.03 and ee[2] > grasp_z + 0.02:
                    self._set_phase("approach")
                    continue
                if ee[2] - grasp_z < 0.006 and xy_err < 0.01:
                    self._grasp_z = ee[2]
                    self._set_phase("close")
                    continue
            elif phase == "close":
                target = np.array([cube[0], cube[1], grasp_z])
                gripper = 1.0
                align_yaw = False
                if opening < 0.5 * self.cube_size:  # closed on nothing
                    self._set_phase("retreat")
                    continue
                if self._phase_steps >= 4 and opening < self.cube_size + 0.008:
                    self._set_phase("lift")
                    continue
                if self._phase_steps > 12:
                    self._set_phase("retreat")
                    continue
            elif phase == "lift":
                target = np.array([ee[0], ee[1], self._grasp_z + self.lift_height])
                gripper = 1.0
                align_yaw = False
                lost = opening < 0.5 * self.cube_size or np.linalg.norm(cube - ee) > 0.035
                if lost:
                    self._set_phase("retreat")
                    continue
            elif phase == "retreat":
                target = np.array([ee[0], ee[1], hover_z + 0.02])
                gripper = -1.0
                align_yaw = False
                if self._phase_steps > 3 and ee[2] > hover_z - 0.01 and opening > 0.07:
                    self.retries += 1
                    self._set_phase("approach")
                    continue
            break

        delta = 0.8 * (target - ee)
        norm = float(np.linalg.norm(delta))
        if norm > speed:
            delta *= speed / norm
        action = np.zeros(self.action_dim)
        action[:3] = delta / self.max_delta_pos
        if self.randomize_yaw:
            action[3] = 0.8 * yaw_err / self.max_delta_yaw if align_yaw else 0.0
        action[-1] = gripper
        if self.noise_std > 0:
            action += self.rng.normal(0.0, self.noise_std, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
