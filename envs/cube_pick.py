"""``robo_s2/CubePick-v0``: pick up a cube with a 7-DoF Panda-like arm (MuJoCo, gymnasium).

Action (``Box(-1, 1)``, float32), one control step = ``1 / control_hz`` s:
    ``[dx, dy, dz, gripper]``, or ``[dx, dy, dz, dyaw, gripper]`` when ``randomize_yaw=True``.
    ``dx, dy, dz`` move the end-effector target by up to ``max_delta_pos`` m per step (world
    frame), ``dyaw`` turns it about world z by up to ``max_delta_yaw`` rad; the IK keeps the gripper
    pointing down. ``gripper`` is an absolute command: -1 fully open (8 cm), +1 fully closed, linear
    in between (the finger servo squeezes whatever it holds). The target is integrated from the
    deltas (zero motion commands hold the pose), kept inside a workspace box and on a short leash
    to the measured pose; damped-least-squares IK (``envs.ik``) turns it into joint targets.

Observation (``Dict``):
    ``image``        uint8 (S, S, 3), camera "front" (omitted with ``render_images=False``)
    ``image_wrist``  uint8 (S, S, 3), camera "wrist" (only with ``cameras=("front", "wrist")``)
    ``proprio``      float32 (11,): 7 joint positions (rad), gripper opening (m, distance
                     finger1 + finger2, 0..0.08), end-effector position (3, m, world)
    ``state``        float32 (12,): privileged sim state for the expert and debugging, never a
                     policy input: cube position (3), cube quaternion (4, w x y z), end-effector
                     position (3), end-effector yaw (1, rad), gripper opening (1, m)

Reward 1 on success, else 0. ``info["is_success"]``: the cube's lowest point is at least
``success_height`` (0.04 m) above the table top. The episode terminates on success
(``terminate_on_success``) and is truncated after ``max_episode_steps`` steps.

``reset(seed=...)`` is reproducible; ``reset(options={"cube_pos": (x, y), "cube_yaw": a})`` forces a
placement (either key alone is fine).

Scene variety (for pre-training images, never used by the defaults): ``distractors=N`` adds N
visual-only objects that ``reset`` scatters over the table (drawn after the cube, so the cube's
placement for a seed does not change), and :meth:`CubePickEnv.randomize_appearance` re-draws the
lighting and the colours of the cube, table, floor and distractors in place.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from envs import ENV_ID
from envs import panda_mjcf as P
from envs.appearance import randomize_appearance, read_appearance, restore_appearance
from envs.headless_gl import ensure_gl_backend, load_triton_before_mesa
from envs.ik import DifferentialIK, yaw_down_matrix, yaw_of_matrix

PROPRIO_SEMANTICS: tuple[str, ...] = (
    *(f"joint{i}_pos" for i in range(1, 8)),
    "gripper_opening",
    "ee_x",
    "ee_y",
    "ee_z",
)
STATE_SEMANTICS: tuple[str, ...] = (
    "cube_x",
    "cube_y",
    "cube_z",
    "cube_qw",
    "cube_qx",
    "cube_qy",
    "cube_qz",
    "ee_x",
    "ee_y",
    "ee_z",
    "ee_yaw",
    "gripper_opening",
)
# Slices of obs["state"], for the expert and for debugging.
STATE_CUBE_POS = slice(0, 3)
STATE_CUBE_QUAT = slice(3, 7)
STATE_EE_POS = slice(7, 10)
STATE_EE_YAW = 10
STATE_OPENING = 11

MAX_OPENING = 2 * P.FINGER_RANGE[1]


# How frames are rendered (cost, not content: the scene is the same). Descriptions written before
# these keys existed were rendered with LEGACY_RENDER_PROFILE.
RENDER_PROFILE_KEYS = ("shadows", "shadow_size", "msaa_samples", "numslices", "numstacks")
LEGACY_RENDER_PROFILE: dict[str, Any] = {
    "shadows": True,
    "shadow_size": 1024,
    "msaa_samples": 4,
    "numslices": 28,  # MuJoCo's default tessellation of curved primitives
    "numstacks": 16,
}


def render_profile(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The render profile of env kwargs or a description (legacy values for missing keys)."""
    profile = {k: kwargs.get(k, LEGACY_RENDER_PROFILE[k]) for k in RENDER_PROFILE_KEYS}
    return {
        "shadows": bool(profile["shadows"]),
        "shadow_size": int(profile["shadow_size"]),
        "msaa_samples": int(profile["msaa_samples"]),
        "numslices": int(profile["numslices"]),
        "numstacks": int(profile["numstacks"]),
    }


def image_key(camera: str) -> str:
    """Observation key of a camera: "front" is ``image``, any other ``image_<camera>``."""
    return "image" if camera == "front" else f"image_{camera}"


def camera_of(key: str) -> str:
    """The camera of an observation key (:func:`image_key` inverted)."""
    return "front" if key == "image" else key.removeprefix("image_")


def quat_yaw(quat: np.ndarray) -> float:
    """Yaw (rotation about world z) of a w-x-y-z quaternion."""
    w, x, y, z = (float(v) for v in quat)
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


class CubePickEnv(gym.Env):
    """Cube picking with a Panda-like arm; see the module docstring for the spaces.

    Args:
        image_size: side of the square camera images (pixels).
        cameras: "front" (third-person, obs key ``image``) and/or "wrist" (``image_wrist``).
        render_images: False omits the image keys (fast expert rollouts and benchmarks).
        randomize_yaw: randomize the cube yaw in [-pi/4, pi/4) and add a yaw delta to the action.
        cube_region: ((x_min, x_max), (y_min, y_max)) of the cube centre, uniform, m.
        cube_size: cube edge (m).
        cube_mass: cube mass (kg).
        control_hz: control rate (the physics runs at 500 Hz).
        max_episode_steps: truncation horizon (control steps).
        max_delta_pos: end-effector translation of a full-scale action component (m per step).
        max_delta_yaw: end-effector yaw change of a full-scale ``dyaw`` (rad per step).
        terminate_on_success: end the episode as soon as the cube is lifted.
        success_height: lift of the cube bottom above the table that counts as success (m).
        init_ee_pos: end-effector start position (m); the start posture is solved by IK.
        render_mode: None or "rgb_array" (``render()`` returns the front camera image).
        distractors: visual-only objects (no collisions) scattered over the table at each reset.
        shadows: the key light casts shadows (most of a CPU render's cost: 17.5 ms per 112² frame
            with a 1024² map and MSAA 4, 3.0 ms without shadows, on the 2-core machines here). They
            are information, not decoration: policies trained without them succeeded 24-28 points
            less often (docs/results/render_profile).
        shadow_size: shadow map side (texels). The default 256 with ``msaa_samples=0`` renders in
            9.0 ms and was no worse than the legacy 1024 / MSAA 4 within the 95 % interval.
        msaa_samples: anti-aliasing samples of the offscreen buffer (0 = off).
        numslices, numstacks: how finely curved primitives (the arm's capsules and cylinders) are
            tessellated for rendering (MuJoCo's ``<quality>``; physics is unaffected). The frame
            cost is geometry-bound: 8 x 4 renders a 64² frame ~3.5x faster than MuJoCo's default
            28 x 16, and policies on it succeeded exactly as often (535/600 both, paired 95 %
            interval -1.8 to +1.8 points; docs/results/render_tessellation).
    """

    task_id: str = ENV_ID  # the registered task it was built as (envs.make_env sets it)

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    # Workspace of the end-effector target (m); at the bottom the fingertips clear the table by 2 mm
    WORKSPACE_LOW = np.array([0.2, -0.4, 0.012])
    WORKSPACE_HIGH = np.array([0.8, 0.4, 0.45])
    MAX_TARGET_YAW = math.pi / 2
    PHYSICS_TIMESTEP = 0.002

    def __init__(
        self,
        image_size: int = 224,
        cameras: tuple[str, ...] | list[str] = ("front",),
        render_images: bool = True,
        randomize_yaw: bool = False,
        cube_region: tuple[tuple[float, float], tuple[float, float]] = ((0.4, 0.6), (-0.1, 0.1)),
        cube_size: float = 0.04,
        cube_mass: float = 0.07,
        control_hz: float = 10.0,
        max_episode_steps: int = 120,
        max_delta_pos: float = 0.03,
        max_delta_yaw: float = 0.3,
        terminate_on_success: bool = True,
        success_height: float = 0.04,
        init_ee_pos: tuple[float, float, float] = (0.5, 0.0, 0.25),
        render_mode: str | None = None,
        distractors: int = 0,
        shadows: bool = True,
        shadow_size: int = 256,
        msaa_samples: int = 0,
        numslices: int = 8,
        numstacks: int = 4,
    ) -> None:
        super().__init__()
        cameras = tuple(str(c) for c in ([cameras] if isinstance(cameras, str) else cameras))
        image_size = int(image_size)
        region = check_env_args(
            image_size, cameras, cube_region, control_hz, max_episode_steps, render_mode,
            distractors, shadow_size, msaa_samples, numslices, numstacks,
        )  # fmt: skip

        self.image_size = image_size
        self.cameras = cameras
        self.render_images = bool(render_images)
        self.randomize_yaw = bool(randomize_yaw)
        self._cube_region = region
        self.cube_size = float(cube_size)
        self.cube_mass = float(cube_mass)
        self.control_hz = float(control_hz)
        self.max_episode_steps = int(max_episode_steps)
        self.max_delta_pos = float(max_delta_pos)
        self.max_delta_yaw = float(max_delta_yaw)
        self.terminate_on_success = bool(terminate_on_success)
        self.success_height = float(success_height)
        self.init_ee_pos = tuple(float(v) for v in init_ee_pos)
        self.render_mode = render_mode
        self._kwargs: dict[str, Any] = self._constructor_kwargs(
            {"shadows": shadows, "shadow_size": shadow_size, "msaa_samples": msaa_samples,
             "numslices": numslices, "numstacks": numstacks}
        )  # fmt: skip
        self.distractors = int(distractors)
        if self.distractors:  # only when used: descriptions of default envs stay as they were
            self._kwargs["distractors"] = self.distractors

        self._build_model()
        self._look_up_ids()
        self._appearance0 = read_appearance(self.model)
        self._solve_start_posture()
        self.action_dim = 5 if self.randomize_yaw else 4  # dx dy dz [dyaw] gripper
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.action_dim,), dtype=np.float32)
        self.observation_space = observation_space_of(image_size, cameras, self.render_images)

        self._renderer: mujoco.Renderer | None = None
        self._target_pos = np.zeros(3)
        self._target_yaw = 0.0
        self._steps = 0
        self._placement = (0.0, 0.0, 0.0)

    # --- construction -----------------------------------------------------------------------------

    def _constructor_kwargs(self, profile: Mapping[str, Any]) -> dict[str, Any]:
        """The kwargs that rebuild this env (JSON types), from the stored settings."""
        (x0, x1), (y0, y1) = self._cube_region
        return {
            "image_size": self.image_size,
            "cameras": list(self.cameras),
            "render_images": self.render_images,
            "randomize_yaw": self.randomize_yaw,
            "cube_region": [[x0, x1], [y0, y1]],
            "cube_size": self.cube_size,
            "cube_mass": self.cube_mass,
            "control_hz": self.control_hz,
            "max_episode_steps": self.max_episode_steps,
            "max_delta_pos": self.max_delta_pos,
            "max_delta_yaw": self.max_delta_yaw,
            "terminate_on_success": self.terminate_on_success,
            "success_height": self.success_height,
            "init_ee_pos": list(self.init_ee_pos),
            "render_mode": self.render_mode,
            **render_profile(profile),
        }

    def _build_model(self) -> None:
        """Compile the scene's MJCF into ``model`` and ``data``; set the physics substeps."""
        xml = P.build_mjcf(
            cube_size=self.cube_size,
            cube_mass=self.cube_mass,
            offscreen_size=max(640, self.image_size),
            distractors=self.distractors,
            **render_profile(self._kwargs),
        )
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.model.opt.timestep = self.PHYSICS_TIMESTEP
        self.data = mujoco.MjData(self.model)
        self.n_substeps = max(1, round(1.0 / (self.control_hz * self.PHYSICS_TIMESTEP)))

    def _look_up_ids(self) -> None:
        """qpos/dof addresses and actuator, site, body and mocap ids of the named model parts."""
        m = self.model
        self._arm_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in P.ARM_JOINTS])
        self._arm_dof = np.array([m.jnt_dofadr[m.joint(j).id] for j in P.ARM_JOINTS])
        self._finger_qpos = np.array([m.jnt_qposadr[m.joint(j).id] for j in P.FINGER_JOINTS])
        self._arm_act = np.array([m.actuator(a).id for a in P.ARM_ACTUATORS])
        self._grip_act = m.actuator(P.GRIPPER_ACTUATOR).id
        self._ee_site = m.site(P.EE_SITE).id
        self._cube_body = m.body(P.CUBE_BODY).id
        cube_jnt = m.joint("cube").id
        self._cube_qpos = m.jnt_qposadr[cube_jnt]
        self._cube_dof = m.jnt_dofadr[cube_jnt]
        self._distractor_mocap = [
            int(m.body_mocapid[m.body(f"distractor{i}").id]) for i in range(self.distractors)
        ]

    def _solve_start_posture(self) -> None:
        """Create the IK and solve the arm's start posture ``_start_arm_q`` for ``init_ee_pos``."""
        # The Menagerie home with joint7 turned so the fingers close along world y, then solved by
        # IK for the start pose (it is also the IK's null-space rest posture).
        rest = P.HOME_QPOS.copy()
        rest[6] += math.pi / 2
        self.ik = DifferentialIK(self.model, P.EE_SITE, P.ARM_JOINTS, rest_qpos=rest)
        q = self.data.qpos.copy()
        q[self._arm_qpos] = rest
        q[self._finger_qpos] = P.FINGER_RANGE[1]
        for _ in range(2):
            for _ in range(60):
                q[self._arm_qpos] = self.ik.solve(
                    q, np.array(self.init_ee_pos), yaw_down_matrix(0.0), iterations=1
                )
            self.ik.rest_qpos = q[self._arm_qpos].copy()
        self._start_arm_q = q[self._arm_qpos].copy()

    # --- public helpers ---------------------------------------------------------------------------

    @property
    def cube_region(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """((x_min, x_max), (y_min, y_max)) of the randomized cube centre (m, robot base frame)."""
        return self._cube_region

    @property
    def action_semantics(self) -> list[str]:
        motion = ["dx", "dy", "dz", "dyaw"] if self.randomize_yaw else ["dx", "dy", "dz"]
        return [*motion, "gripper"]

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description of the env, for demo-store attributes.

        Holds the constructor kwargs (at the top level and under ``kwargs``:
        ``CubePickEnv(**d["kwargs"])`` rebuilds the env), the action, proprio and state semantics,
        cameras and image shape, control rate, cube region and versions.
        """
        return {
            "id": self.task_id,
            "entry_point": f"{type(self).__module__}:{type(self).__name__}",
            **self._kwargs,
            "kwargs": dict(self._kwargs),
            "physics_timestep": self.PHYSICS_TIMESTEP,
            "n_substeps": self.n_substeps,
            "action_dim": self.action_dim,
            "action_semantics": self.action_semantics,
            "action_scale": {"pos_m": self.max_delta_pos, "yaw_rad": self.max_delta_yaw},
            "gripper_semantics": "absolute: -1 open (0.08 m), +1 closed, linear in between",
            "proprio_semantics": list(PROPRIO_SEMANTICS),
            "state_semantics": list(STATE_SEMANTICS),
            "cameras": list(self.cameras),
            "image_keys": {cam: image_key(cam) for cam in self.cameras},
            "image_shape": [self.image_size, self.image_size, 3],
            "workspace": {
                "low": self.WORKSPACE_LOW.tolist(),
                "high": self.WORKSPACE_HIGH.tolist(),
            },
            "cube_yaw_range": [-math.pi / 4, math.pi / 4] if self.randomize_yaw else [0.0, 0.0],
            "render_profile": render_profile(self._kwargs),
            "mujoco_version": mujoco.__version__,
            "gymnasium_version": gym.__version__,
        }

    # --- gymnasium API ----------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        (x0, x1), (y0, y1) = self._cube_region
        # always draw all three, so a forced position does not shift later random draws
        x = float(self.np_random.uniform(x0, x1))
        y = float(self.np_random.uniform(y0, y1))
        yaw = (
            float(self.np_random.uniform(-math.pi / 4, math.pi / 4)) if self.randomize_yaw else 0.0
        )
        options = options or {}
        if options.get("cube_pos") is not None:
            pos = np.asarray(options["cube_pos"], dtype=float).reshape(-1)
            if pos.shape != (2,) or not np.all(np.isfinite(pos)):
                raise ValueError(f"options['cube_pos']={options['cube_pos']!r} must be (x, y)")
            x, y = float(pos[0]), float(pos[1])
        if options.get("cube_yaw") is not None:
            yaw = float(options["cube_yaw"])

        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[self._arm_qpos] = self._start_arm_q
        d.qpos[self._finger_qpos] = P.FINGER_RANGE[1]
        c = self._cube_qpos
        d.qpos[c : c + 3] = (x, y, self.cube_size / 2)
        d.qpos[c + 3 : c + 7] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
        d.ctrl[self._arm_act] = self._start_arm_q
        d.ctrl[self._grip_act] = P.FINGER_RANGE[1]
        self._place_distractors(x, y)
        mujoco.mj_forward(m, d)
        mujoco.mj_step(m, d, nstep=self.n_substeps)  # settle contacts (0.1 s)
        self._placement = (x, y, yaw)
        self._target_pos = d.site_xpos[self._ee_site].copy()
        self._target_yaw = 0.0
        self._steps = 0
        return self._obs(), self._info()

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action has shape {a.shape}, expected {self.action_space.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action {a} is not finite")
        m, d = self.model, self.data
        ee = d.site_xpos[self._ee_site]
        leash = 2 * self.max_delta_pos
        anchor = ee + np.clip(self._target_pos - ee, -leash, leash)
        self._target_pos = np.clip(
            anchor + a[:3] * self.max_delta_pos, self.WORKSPACE_LOW, self.WORKSPACE_HIGH
        )
        if self.randomize_yaw:
            self._target_yaw = float(
                np.clip(
                    self._target_yaw + a[3] * self.max_delta_yaw,
                    -self.MAX_TARGET_YAW,
                    self.MAX_TARGET_YAW,
                )
            )
        q_des = self.ik.solve(d.qpos, self._target_pos, yaw_down_matrix(self._target_yaw))
        d.ctrl[self._arm_act] = q_des
        d.ctrl[self._grip_act] = P.FINGER_RANGE[1] * (1.0 - a[-1]) / 2.0
        mujoco.mj_step(m, d, nstep=self.n_substeps)
        self._steps += 1

        info = self._info()
        success = info["is_success"]
        terminated = bool(success and self.terminate_on_success)
        truncated = bool(self._steps >= self.max_episode_steps and not terminated)
        return self._obs(), float(success), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self.render_camera(self.cameras[0] if "front" not in self.cameras else "front")

    def project(self, points: np.ndarray, camera: str = "front") -> np.ndarray:
        """World points ``(N, 3)`` -> ``(N, 2)`` pixel coordinates ``(column, row)`` in this
        env's ``camera`` images, at the current pose (:func:`project_points`)."""
        return project_points(self.model, self.data, points, camera, self.image_size)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # --- internals --------------------------------------------------------------------------------

    def render_camera(self, camera: str) -> np.ndarray:
        """Render one named camera at ``image_size`` (the renderer is created on first use)."""
        if self._renderer is None:
            ensure_gl_backend()
            load_triton_before_mesa()
            try:
                self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            except Exception as exc:  # mujoco.FatalError, or the GL backend's own errors
                raise RuntimeError(
                    f"cannot create a MuJoCo renderer (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): "
                    f"{exc}. Import envs before mujoco (it sets MUJOCO_GL=egl) or set "
                    "MUJOCO_GL=egl (or osmesa) yourself; render_images=False runs without images"
                ) from exc
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render().copy()

    def _place_distractors(self, cube_x: float, cube_y: float) -> None:
        """Scatter the distractors over the table, at least 6 cm from the cube (no RNG draws
        without distractors)."""
        for mocap in self._distractor_mocap:
            for _ in range(20):
                px = float(self.np_random.uniform(0.3, 0.75))
                py = float(self.np_random.uniform(-0.35, 0.35))
                if math.hypot(px - cube_x, py - cube_y) >= 0.06:
                    break
            yaw = float(self.np_random.uniform(-math.pi, math.pi))
            self.data.mocap_pos[mocap] = (px, py, 0.02)
            self.data.mocap_quat[mocap] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))

    def reset_appearance(self) -> None:
        """Undo :meth:`randomize_appearance`: the scene's own lights and colours."""
        restore_appearance(self.model, self._appearance0)

    def randomize_appearance(self, rng: np.random.Generator) -> None:
        """Re-draw lighting and the colours of the cube, table, floor and distractors in place
        (:func:`envs.appearance.randomize_appearance`); :meth:`reset_appearance` undoes it."""
        randomize_appearance(self.model, self._appearance0, rng, self.distractors)

    def ee_pose(self) -> tuple[np.ndarray, float]:
        """End-effector position (3,) and yaw (rad)."""
        d = self.data
        return d.site_xpos[self._ee_site].copy(), yaw_of_matrix(d.site_xmat[self._ee_site])

    def cube_bottom_height(self) -> float:
        """Height of the cube's lowest corner above the table top (m)."""
        rot = self.data.xmat[self._cube_body].reshape(3, 3)
        half = self.cube_size / 2
        return float(self.data.xpos[self._cube_body][2] - half * np.abs(rot[2]).sum())

    def _opening(self) -> float:
        return float(self.data.qpos[self._finger_qpos].sum())

    def _obs(self) -> dict[str, np.ndarray]:
        d = self.data
        ee_pos, ee_yaw = self.ee_pose()
        opening = self._opening()
        c = self._cube_qpos
        obs: dict[str, np.ndarray] = {}
        if self.render_images:
            for cam in self.cameras:
                obs[image_key(cam)] = self.render_camera(cam)
        obs["proprio"] = np.concatenate([d.qpos[self._arm_qpos], [opening], ee_pos]).astype(
            np.float32
        )
        obs["state"] = np.concatenate(
            [d.qpos[c : c + 3], d.qpos[c + 3 : c + 7], ee_pos, [ee_yaw, opening]]
        ).astype(np.float32)
        return obs

    def _info(self) -> dict[str, Any]:
        height = self.cube_bottom_height()
        return {
            "is_success": bool(height >= self.success_height),
            "cube_lift": height,
            "cube_placement": self._placement,
            "steps": self._steps,
        }


def check_env_args(
    image_size: int,
    cameras: tuple[str, ...],
    cube_region: tuple[tuple[float, float], tuple[float, float]],
    control_hz: float,
    max_episode_steps: int,
    render_mode: str | None,
    distractors: int,
    shadow_size: int,
    msaa_samples: int,
    numslices: int,
    numstacks: int,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Raise ValueError for bad constructor arguments; returns the cube region as floats."""
    if not 0 < image_size <= 4096:
        raise ValueError(f"image_size={image_size} must be a number of pixels in 1..4096")
    if not cameras or len(set(cameras)) != len(cameras):
        raise ValueError(f"cameras={cameras} must name at least one camera, each once")
    unknown = [c for c in cameras if c not in P.CAMERAS]
    if unknown:
        raise ValueError(f"unknown camera(s) {unknown}; available: {list(P.CAMERAS)}")
    (x0, x1), (y0, y1) = ((float(a), float(b)) for a, b in cube_region)
    if not (x0 <= x1 and y0 <= y1):
        raise ValueError(f"cube_region={cube_region} must be ((x_min, x_max), (y_min, y_max))")
    if control_hz <= 0 or max_episode_steps <= 0:
        raise ValueError("control_hz and max_episode_steps must be > 0")
    if render_mode is not None and render_mode not in CubePickEnv.metadata["render_modes"]:
        raise ValueError(f"render_mode={render_mode!r}; supported: None, 'rgb_array'")
    if int(distractors) != distractors or not 0 <= int(distractors) <= 32:
        raise ValueError(f"distractors={distractors} must be a whole number in 0..32")
    if int(shadow_size) != shadow_size or not 16 <= int(shadow_size) <= 16384:
        raise ValueError(f"shadow_size={shadow_size} must be a whole number in 16..16384")
    if int(msaa_samples) != msaa_samples or not 0 <= int(msaa_samples) <= 16:
        raise ValueError(f"msaa_samples={msaa_samples} must be a whole number in 0..16")
    for name, value, low in (("numslices", numslices, 3), ("numstacks", numstacks, 1)):
        if int(value) != value or not low <= int(value) <= 256:
            raise ValueError(f"{name}={value} must be a whole number in {low}..256")
    return (x0, x1), (y0, y1)


def observation_space_of(
    image_size: int, cameras: tuple[str, ...], render_images: bool
) -> spaces.Dict:
    """The observation space (module docstring) of an env with these settings."""
    obs_spaces: dict[str, spaces.Space] = {}
    if render_images:
        for cam in cameras:
            obs_spaces[image_key(cam)] = spaces.Box(
                0, 255, shape=(image_size, image_size, 3), dtype=np.uint8
            )
    # Generous finite bounds: joint limits are soft constraints, the cube may fall off the table
    big = 5.0
    obs_spaces["proprio"] = spaces.Box(
        low=np.array([*(P.JOINT_RANGES[:, 0] - 0.1), -0.01, -big, -big, -big], np.float32),
        high=np.array(
            [*(P.JOINT_RANGES[:, 1] + 0.1), MAX_OPENING + 0.01, big, big, big], np.float32
        ),
        dtype=np.float32,
    )
    obs_spaces["state"] = spaces.Box(
        low=np.array([*[-big] * 3, *[-1.01] * 4, *[-big] * 3, -3.15, -0.01], np.float32),
        high=np.array([*[big] * 3, *[1.01] * 4, *[big] * 3, 3.15, MAX_OPENING + 0.01], np.float32),
        dtype=np.float32,
    )
    return spaces.Dict(obs_spaces)


def project_points(
    model: mujoco.MjModel, data: mujoco.MjData, points: np.ndarray, camera: str, image_size: int
) -> np.ndarray:
    """World points ``(N, 3)`` -> ``(N, 2)`` pixel coordinates ``(column, row)`` in ``camera``'s
    ``image_size``² images (continuous: pixel ``(c, r)`` covers ``[c, c+1) x [r, r+1)``).

    MuJoCo's pinhole camera: it looks along its frame's -z with +y up, its vertical field of
    view ``fovy``; the pose is the current one (the wrist camera moves with the arm)."""
    mujoco.mj_kinematics(model, data)
    mujoco.mj_camlight(model, data)
    cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cid < 0:
        raise ValueError(f"unknown camera {camera!r}; available: {list(P.CAMERAS)}")
    rot = data.cam_xmat[cid].reshape(3, 3)  # columns: the camera's axes in the world
    rel = (np.asarray(points, np.float64).reshape(-1, 3) - data.cam_xpos[cid]) @ rot
    depth = -rel[:, 2]
    f = 0.5 * image_size / math.tan(math.radians(float(model.cam_fovy[cid])) / 2)
    col = 0.5 * image_size + f * rel[:, 0] / depth
    row = 0.5 * image_size - f * rel[:, 1] / depth
    return np.stack([col, row], axis=1)
