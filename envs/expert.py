"""Scripted pick expert for ``robo_s2/CubePick-v0``, driven by the privileged ``obs["state"]``.

A phase machine: ``approach`` (open, move above the cube, align the yaw), ``descend`` (to grasp
height, correcting x/y), ``close`` (squeeze for a few steps), ``lift`` (straight up, closed). A
missed grasp (fingers closed on nothing, or the cube left behind while lifting) is detected:
``retreat`` opens and backs up, then ``approach`` tries again. Gaussian noise on the action makes
demonstrations vary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Scene:
    """What one step of the expert reads from ``obs["state"]``, and heights derived from it."""

    cube: np.ndarray  # cube centre (3,)
    ee: np.ndarray  # end-effector position (3,)
    opening: float
    yaw_err: float  # cube yaw minus hand yaw, modulo a quarter turn (0 without align_yaw)
    grasp_z: float
    hover_z: float
    xy_err: float


@dataclass
class _Command:
    """What the phases set for one step's action (a phase changes only what it needs)."""

    target: np.ndarray
    speed: float
    gripper: float = -1.0
    align_yaw: bool = True


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
        scene = self._read_state(np.asarray(obs["state"], dtype=np.float64))
        cmd = _Command(target=scene.ee.copy(), speed=self.speed)
        self._phase_steps += 1
        for _ in range(3):  # allow a couple of same-step phase transitions
            handler = self._phase_handler(self.phase)
            next_phase = None if handler is None else handler(scene, cmd)
            if next_phase is None:
                break
            # a phase that hands over keeps what it set in cmd unless the next phase overrides it
            self._set_phase(next_phase)
        return self._to_action(scene, cmd)

    def _read_state(self, s: np.ndarray) -> _Scene:
        yaw_err = wrap_quarter_turn(quat_yaw(s[STATE_CUBE_QUAT]) - float(s[STATE_EE_YAW]))
        if not self.align_yaw:
            yaw_err = 0.0
        cube = s[STATE_CUBE_POS]
        ee = s[STATE_EE_POS]
        half = self.cube_size / 2
        return _Scene(
            cube=cube,
            ee=ee,
            opening=float(s[STATE_OPENING]),
            yaw_err=yaw_err,
            grasp_z=max(cube[2] - 0.1 * half, 0.014),
            hover_z=cube[2] + self.hover_height,
            xy_err=float(np.linalg.norm(cube[:2] - ee[:2])),
        )

    def _phase_handler(self, phase: str) -> Callable[[_Scene, _Command], str | None] | None:
        """The method of ``phase``: it sets ``cmd`` and returns the phase to switch to, if any."""
        return {
            "approach": self._approach,
            "descend": self._descend,
            "close": self._close,
            "lift": self._lift,
            "retreat": self._retreat,
        }.get(phase)

    def _approach(self, sc: _Scene, cmd: _Command) -> str | None:
        cmd.target = np.array([sc.cube[0], sc.cube[1], sc.hover_z])
        # stay high until roughly above the cube, so the fingers never sweep it
        if sc.xy_err > 0.03:
            cmd.target[2] = max(sc.hover_z, sc.ee[2])
        if (
            sc.xy_err < 0.012
            and abs(sc.ee[2] - sc.hover_z) < 0.02
            and (not self.randomize_yaw or abs(sc.yaw_err) < 0.06)
        ):
            return "descend"
        return None

    def _descend(self, sc: _Scene, cmd: _Command) -> str | None:
        cmd.target = np.array([sc.cube[0], sc.cube[1], sc.grasp_z])
        cmd.speed = 0.75 * self.speed
        # hysteresis: only a large drift while still high sends it back up
        if sc.xy_err > 0.03 and sc.ee[2] > sc.grasp_z + 0.02:
            return "approach"
        if sc.ee[2] - sc.grasp_z < 0.006 and sc.xy_err < 0.01:
            self._grasp_z = sc.ee[2]
            return "close"
        return None

    def _close(self, sc: _Scene, cmd: _Command) -> str | None:
        cmd.target = np.array([sc.cube[0], sc.cube[1], sc.grasp_z])
        cmd.gripper = 1.0
        cmd.align_yaw = False
        if sc.opening < 0.5 * self.cube_size:  # closed on nothing
            return "retreat"
        if self._phase_steps >= 4 and sc.opening < self.cube_size + 0.008:
            return "lift"
        if self._phase_steps > 12:
            return "retreat"
        return None

    def _lift(self, sc: _Scene, cmd: _Command) -> str | None:
        cmd.target = np.array([sc.ee[0], sc.ee[1], self._grasp_z + self.lift_height])
        cmd.gripper = 1.0
        cmd.align_yaw = False
        lost = sc.opening < 0.5 * self.cube_size or np.linalg.norm(sc.cube - sc.ee) > 0.035
        if lost:
            return "retreat"
        return None

    def _retreat(self, sc: _Scene, cmd: _Command) -> str | None:
        cmd.target = np.array([sc.ee[0], sc.ee[1], sc.hover_z + 0.02])
        cmd.gripper = -1.0
        cmd.align_yaw = False
        if self._phase_steps > 3 and sc.ee[2] > sc.hover_z - 0.01 and sc.opening > 0.07:
            self.retries += 1
            return "approach"
        return None

    def _to_action(self, sc: _Scene, cmd: _Command) -> np.ndarray:
        """Speed-limited normalized action towards ``cmd.target``, plus noise, clipped, float32."""
        delta = 0.8 * (cmd.target - sc.ee)
        norm = float(np.linalg.norm(delta))
        if norm > cmd.speed:
            delta *= cmd.speed / norm
        action = np.zeros(self.action_dim)
        action[:3] = delta / self.max_delta_pos
        if self.randomize_yaw:
            action[3] = 0.8 * sc.yaw_err / self.max_delta_yaw if cmd.align_yaw else 0.0
        action[-1] = cmd.gripper
        if self.noise_std > 0:
            action += self.rng.normal(0.0, self.noise_std, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
