"""Damped-least-squares differential IK for the arm's end-effector site.

The controller works on a private ``MjData`` (kinematics only), so solving never disturbs the
simulation. Each iteration linearises the site pose with ``mujoco.mj_jacSite`` and takes a damped
least-squares step on the 6-D pose error (position and orientation, the latter keeping the
gripper pointing down at the commanded yaw), plus a small null-space pull towards a rest posture
that keeps the redundant 7th degree of freedom well-behaved. Joint targets are clipped to the joint
limits (minus a small margin) after every iteration.
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np


def yaw_down_matrix(yaw: float) -> np.ndarray:
    """Rotation of the end effector pointing straight down (its z = world -z) at ``yaw``.

    At yaw 0 the hand's x axis is world +x and the fingers close along world y; yaw turns the hand
    about world +z.
    """
    c, s = np.cos(yaw), np.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rz @ np.diag([1.0, -1.0, -1.0])


def yaw_of_matrix(mat: np.ndarray) -> float:
    """Yaw of a (roughly downward-pointing) end-effector rotation: the angle of its x axis in xy."""
    m = np.asarray(mat).reshape(3, 3)
    return float(np.arctan2(m[1, 0], m[0, 0]))


def orientation_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotation vector (world frame) that turns ``current`` into ``target`` (both 3x3)."""
    qc, qt, qe = np.empty(4), np.empty(4), np.empty(4)
    mujoco.mju_mat2Quat(qc, np.ascontiguousarray(current).reshape(9))
    mujoco.mju_mat2Quat(qt, np.ascontiguousarray(target).reshape(9))
    # world-frame error: q_err = q_t * q_c^-1
    qc_inv = np.empty(4)
    mujoco.mju_negQuat(qc_inv, qc)
    mujoco.mju_mulQuat(qe, qt, qc_inv)
    if qe[0] < 0:
        qe = -qe
    vel = np.empty(3)
    mujoco.mju_quat2Vel(vel, qe, 1.0)
    return vel


class DifferentialIK:
    """Damped-least-squares IK from the current joint positions towards a target site pose.

    Args:
        model: the compiled model.
        site: name of the end-effector site.
        joints: names of the controlled (hinge) joints, in order.
        damping: DLS damping lambda (larger = smoother near singularities, less exact).
        rot_weight: weight of the orientation error relative to the position error (1 rad ~ 1/w m).
        nullspace_gain: gain of the pull towards ``rest_qpos`` in the Jacobian null space.
        rest_qpos: rest posture for the null-space term (defaults to mid-range).
        max_step: largest joint change (rad, inf-norm) of one iteration.
        limit_margin: targets stay this far inside the joint limits (rad).
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        site: str,
        joints: Sequence[str],
        damping: float = 0.03,
        rot_weight: float = 0.5,
        nullspace_gain: float = 0.05,
        rest_qpos: np.ndarray | None = None,
        max_step: float = 0.4,
        limit_margin: float = 0.01,
    ) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.site_id = model.site(site).id
        jids = [model.joint(j).id for j in joints]
        self.qpos_idx = np.array([model.jnt_qposadr[j] for j in jids])
        self.dof_idx = np.array([model.jnt_dofadr[j] for j in jids])
        ranges = model.jnt_range[jids].copy()
        self.lower = ranges[:, 0] + limit_margin
        self.upper = ranges[:, 1] - limit_margin
        self.damping = damping
        self.rot_weight = rot_weight
        self.nullspace_gain = nullspace_gain
        self.rest_qpos = (
            np.asarray(rest_qpos, float) if rest_qpos is not None else (self.lower + self.upper) / 2
        )
        self.max_step = max_step
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def site_pose(self, qpos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Site position (3,) and rotation (3, 3) for a full ``qpos`` (kinematics only)."""
        self.data.qpos[:] = qpos
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site_id].copy(), self.data.site_xmat[self.site_id].reshape(
            3, 3
        ).copy()

    def solve(
        self,
        qpos: np.ndarray,
        target_pos: np.ndarray,
        target_mat: np.ndarray,
        iterations: int = 2,
    ) -> np.ndarray:
        """Joint targets (for the controlled joints) moving the site towards the target pose.

        Args:
            qpos: the full current ``qpos`` of the model (other joints are held fixed).
            target_pos: target site position (3,), world frame.
            target_mat: target site rotation (3, 3), world frame.
            iterations: DLS iterations (each re-linearises at the previous iterate).
        """
        m, d = self.model, self.data
        d.qpos[:] = qpos
        q = d.qpos[self.qpos_idx].copy()
        n = len(q)
        w = np.array([1.0, 1.0, 1.0, self.rot_weight, self.rot_weight, self.rot_weight])
        lam2 = self.damping**2
        for _ in range(iterations):
            d.qpos[self.qpos_idx] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            mujoco.mj_jacSite(m, d, self._jacp, self._jacr, self.site_id)
            jac = np.vstack([self._jacp[:, self.dof_idx], self._jacr[:, self.dof_idx]]) * w[:, None]
            err = (
                np.concatenate(
                    [
                        target_pos - d.site_xpos[self.site_id],
                        orientation_error(d.site_xmat[self.site_id].reshape(3, 3), target_mat),
                    ]
                )
                * w
            )
            jjt = jac @ jac.T + lam2 * np.eye(6)
            jpinv = jac.T @ np.linalg.solve(jjt, np.eye(6))
            dq = jpinv @ err
            dq += (np.eye(n) - jpinv @ jac) @ (self.nullspace_gain * (self.rest_qpos - q))
            peak = np.max(np.abs(dq))
            if peak > self.max_step:
                dq *= self.max_step / peak
            q = np.clip(q + dq, self.lower, self.upper)
        return q
