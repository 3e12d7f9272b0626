"""robo_s2/CubePick-v0: registration, spaces, rendering, seeding, IK control, honest physics."""

import json
import math
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # after mujoco on purpose: the env must still render through EGL
from envs import panda_mjcf as P
from envs.cube_pick import CubePickEnv, quat_yaw
from envs.ik import DifferentialIK, orientation_error, yaw_down_matrix, yaw_of_matrix


@pytest.fixture(scope="module")
def fast_env():
    env = CubePickEnv(render_images=False)
    yield env
    env.close()


def _hold(env: CubePickEnv) -> np.ndarray:
    a = np.zeros(env.action_space.shape, np.float32)
    a[-1] = -1.0
    return a


def test_gym_make_and_check_env():
    env = gym.make(envs.ENV_ID, image_size=112, render_mode="rgb_array")
    assert isinstance(env.unwrapped, CubePickEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium's checker only warns about most problems
        check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (112, 112, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, obs["image"])
    env.close()


def test_check_env_without_images_and_with_yaw():
    env = CubePickEnv(render_images=False, randomize_yaw=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    env.close()


def test_spaces(fast_env):
    assert fast_env.action_space.shape == (4,)
    assert fast_env.action_space.dtype == np.float32
    assert np.all(fast_env.action_space.low == -1) and np.all(fast_env.action_space.high == 1)
    assert set(fast_env.observation_space.spaces) == {"proprio", "state"}
    obs, info = fast_env.reset(seed=1)
    assert obs["proprio"].shape == (11,) and obs["proprio"].dtype == np.float32
    assert obs["state"].shape == (12,) and obs["state"].dtype == np.float32
    assert fast_env.observation_space.contains(obs)
    assert info["is_success"] is False
    # proprio: gripper opening and ee position agree with the privileged state
    np.testing.assert_allclose(obs["proprio"][7], obs["state"][11])
    np.testing.assert_allclose(obs["proprio"][8:11], obs["state"][7:10])
    assert obs["proprio"][7] == pytest.approx(0.08, abs=2e-3)  # starts open
    yaw_env = CubePickEnv(render_images=False, randomize_yaw=True)
    assert yaw_env.action_space.shape == (5,)
    assert yaw_env.describe()["action_semantics"] == ["dx", "dy", "dz", "dyaw", "gripper"]


@pytest.mark.parametrize("size", [112, 224, 448])
def test_image_sizes(size):
    env = CubePickEnv(image_size=size)
    obs, _ = env.reset(seed=0)
    img = obs["image"]
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert env.observation_space["image"].shape == (size, size, 3)
    assert img.std() > 10  # a real scene, not a blank frame
    env.close()
    assert env._renderer is None
    env.close()  # idempotent


def test_wrist_camera_switch():
    env = CubePickEnv(image_size=64, cameras=("front", "wrist"))
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"image", "image_wrist", "proprio", "state"}
    assert obs["image_wrist"].shape == (64, 64, 3)
    assert not np.array_equal(obs["image"], obs["image_wrist"])
    assert env.describe()["image_keys"] == {"front": "image", "wrist": "image_wrist"}
    env.close()
    with pytest.raises(ValueError, match="camera"):
        CubePickEnv(cameras=("top",))


def test_reset_is_reproducible_including_images():
    a, b = CubePickEnv(image_size=64), CubePickEnv(image_size=64)
    oa, _ = a.reset(seed=123)
    ob, _ = b.reset(seed=123)
    for key in oa:
        np.testing.assert_array_equal(oa[key], ob[key])
    act = np.array([0.3, -0.2, -0.5, 0.1], np.float32)
    for _ in range(3):
        oa, *_ = a.step(act)
        ob, *_ = b.step(act)
    for key in oa:
        np.testing.assert_array_equal(oa[key], ob[key])
    again, _ = a.reset(seed=123)
    first, _ = b.reset(seed=123)
    np.testing.assert_array_equal(again["image"], first["image"])
    a.close()
    b.close()


def test_random_placements_inside_region_and_distinct(fast_env):
    (x0, x1), (y0, y1) = fast_env.cube_region
    assert (x1 - x0) >= 0.2 - 1e-9 and (y1 - y0) >= 0.2 - 1e-9
    xy = np.array([fast_env.reset(seed=s)[0]["state"][:2] for s in range(40)])
    assert np.all((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))
    assert len(np.unique(xy.round(5), axis=0)) == 40
    assert xy[:, 0].std() > 0.04 and xy[:, 1].std() > 0.04  # spread over the region


def test_forced_placement():
    env = CubePickEnv(render_images=False, randomize_yaw=True)
    obs, info = env.reset(seed=5, options={"cube_pos": (0.43, -0.07), "cube_yaw": 0.5})
    np.testing.assert_allclose(obs["state"][:2], [0.43, -0.07], atol=1e-3)
    assert quat_yaw(obs["state"][3:7]) == pytest.approx(0.5, abs=1e-3)
    assert obs["state"][2] == pytest.approx(0.02, abs=1e-3)  # resting on the table
    # forcing only the position keeps the seeded yaw draw
    o1, _ = env.reset(seed=5, options={"cube_pos": (0.5, 0.0)})
    o2, _ = env.reset(seed=5)
    assert quat_yaw(o1["state"][3:7]) == pytest.approx(quat_yaw(o2["state"][3:7]), abs=1e-4)
    yaws = [quat_yaw(env.reset(seed=s)[0]["state"][3:7]) for s in range(20)]
    assert all(-math.pi / 4 - 1e-3 <= y <= math.pi / 4 + 1e-3 for y in yaws)
    assert np.std(yaws) > 0.2
    with pytest.raises(ValueError, match="cube_pos"):
        env.reset(options={"cube_pos": (0.5,)})


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_ik_moves_along_the_commanded_axis(fast_env, axis):
    obs, _ = fast_env.reset(seed=0)
    start = obs["proprio"][8:11].copy()
    yaw0 = obs["state"][10]
    act = _hold(fast_env)
    act[axis] = 1.0 if axis != 2 else -1.0
    n = 4
    for _ in range(n):
        obs, *_ = fast_env.step(act)
    for _ in range(2):  # let it settle
        obs, *_ = fast_env.step(_hold(fast_env))
    moved = obs["proprio"][8:11] - start
    expected = np.zeros(3)
    expected[axis] = n * fast_env.max_delta_pos * np.sign(act[axis])
    np.testing.assert_allclose(moved, expected, atol=0.004)
    assert abs(obs["state"][10] - yaw0) < 0.02  # still pointing down at the same yaw


def test_zero_action_holds_the_pose(fast_env):
    obs, _ = fast_env.reset(seed=3)
    start = obs["proprio"].copy()
    for _ in range(15):
        obs, *_ = fast_env.step(_hold(fast_env))
    np.testing.assert_allclose(obs["proprio"][8:11], start[8:11], atol=1e-3)


def test_yaw_action_turns_the_hand():
    env = CubePickEnv(render_images=False, randomize_yaw=True)
    obs, _ = env.reset(seed=0)
    pos0 = obs["state"][7:10].copy()
    act = np.array([0, 0, 0, 1.0, -1.0], np.float32)
    for _ in range(2):
        obs, *_ = env.step(act)
    obs, *_ = env.step(np.array([0, 0, 0, 0, -1.0], np.float32))
    assert obs["state"][10] == pytest.approx(2 * env.max_delta_yaw, abs=0.03)
    np.testing.assert_allclose(obs["state"][7:10], pos0, atol=3e-3)


def test_joint_limits_never_violated():
    env = CubePickEnv(render_images=False, randomize_yaw=True, max_episode_steps=60)
    rng = np.random.default_rng(0)
    lo, hi = P.JOINT_RANGES[:, 0], P.JOINT_RANGES[:, 1]
    env.reset(seed=0)
    for t in range(240):
        # persistent random directions drive the arm into the workspace corners
        if t % 15 == 0:
            direction = rng.choice([-1.0, 1.0], size=5).astype(np.float32)
        obs, _, term, trunc, _ = env.step(direction)
        q = obs["proprio"][:7]
        assert np.all(q >= lo - 2e-3) and np.all(q <= hi + 2e-3), (t, q)
        ctrl = env.data.ctrl[:7]
        assert np.all(ctrl >= lo) and np.all(ctrl <= hi)
        assert 0.0 - 1e-3 <= obs["proprio"][7] <= 0.08 + 1e-3
        if term or trunc:
            env.reset()


def test_ik_solver_reaches_poses_and_clips_to_limits(fast_env):
    ik = DifferentialIK(fast_env.model, P.EE_SITE, P.ARM_JOINTS, rest_qpos=fast_env.ik.rest_qpos)
    fast_env.reset(seed=0)
    qpos = fast_env.data.qpos.copy()
    target, mat = np.array([0.45, 0.08, 0.1]), yaw_down_matrix(0.4)
    for _ in range(30):
        qpos[:7] = ik.solve(qpos, target, mat, iterations=1)
    pos, rot = ik.site_pose(qpos)
    np.testing.assert_allclose(pos, target, atol=1e-3)
    assert np.linalg.norm(orientation_error(rot, mat)) < 1e-2
    assert yaw_of_matrix(rot) == pytest.approx(0.4, abs=1e-2)
    # an unreachable target: joint targets stay inside the limits
    far = fast_env.data.qpos.copy()
    for _ in range(30):
        far[:7] = ik.solve(far, np.array([2.0, -2.0, -1.0]), yaw_down_matrix(3.0), iterations=1)
        assert np.all(far[:7] >= P.JOINT_RANGES[:, 0]) and np.all(far[:7] <= P.JOINT_RANGES[:, 1])


def test_truncation_at_horizon():
    env = CubePickEnv(render_images=False, max_episode_steps=5)
    env.reset(seed=0)
    flags = [env.step(_hold(env))[2:4] for _ in range(5)]
    assert flags[:4] == [(False, False)] * 4 and flags[4] == (False, True)


def test_describe_and_cube_region():
    env = CubePickEnv(image_size=112, randomize_yaw=True, cube_region=((0.42, 0.62), (-0.12, 0.1)))
    desc = env.describe()
    json.dumps(desc)
    assert desc["id"] == "robo_s2/CubePick-v0"
    assert desc["image_size"] == 112 and desc["kwargs"]["image_size"] == 112
    assert desc["control_hz"] == 10.0
    assert desc["action_semantics"][-1] == "gripper" and len(desc["action_semantics"]) == 5
    assert len(desc["proprio_semantics"]) == 11 and len(desc["state_semantics"]) == 12
    assert desc["cameras"] == ["front"] and desc["image_shape"] == [112, 112, 3]
    assert desc["cube_region"] == [[0.42, 0.62], [-0.12, 0.1]]
    assert desc["mujoco_version"] == mujoco.__version__
    assert env.cube_region == ((0.42, 0.62), (-0.12, 0.1))
    # the description rebuilds the same env
    assert CubePickEnv(**desc["kwargs"]).describe() == desc


def test_contacts_are_elliptic_cones_with_torsional_friction(fast_env):
    m = fast_env.model
    assert m.opt.cone == mujoco.mjtCone.mjCONE_ELLIPTIC
    assert 5 <= m.opt.impratio <= 20
    assert m.opt.timestep == pytest.approx(0.002)
    assert fast_env.n_substeps * m.opt.timestep == pytest.approx(0.1)
    for name in (P.CUBE_GEOM, *P.PAD_GEOMS):
        assert m.geom_condim[m.geom(name).id] == 4, name


def test_nothing_holds_the_cube_but_the_fingers(fast_env):
    m = fast_env.model
    cube_body = m.body(P.CUBE_BODY).id
    cube_joint = m.joint("cube").id
    for i in range(m.neq):
        assert m.eq_type[i] != mujoco.mjtEq.mjEQ_WELD
        if m.eq_type[i] == mujoco.mjtEq.mjEQ_JOINT:
            assert cube_joint not in (m.eq_obj1id[i], m.eq_obj2id[i])
        else:
            assert cube_body not in (m.eq_obj1id[i], m.eq_obj2id[i])
    assert m.nmocap == 0
    # the cube is a free body (6 dofs) of the configured size and mass
    assert m.jnt_type[cube_joint] == mujoco.mjtJoint.mjJNT_FREE
    assert m.body_mass[cube_body] == pytest.approx(0.07)
    np.testing.assert_allclose(m.geom_size[m.geom(P.CUBE_GEOM).id], [0.02] * 3)


def test_arm_has_real_panda_kinematics_and_limits(fast_env):
    m = fast_env.model
    np.testing.assert_allclose(m.body("link1").pos, [0, 0, 0.333])
    np.testing.assert_allclose(m.body("link3").pos, [0, -0.316, 0])
    np.testing.assert_allclose(m.body("link5").pos, [-0.0825, 0.384, 0])
    for i, name in enumerate(P.ARM_JOINTS):
        np.testing.assert_allclose(m.jnt_range[m.joint(name).id], P.JOINT_RANGES[i])
    assert m.nmeshvert == 0  # primitives only


def test_bad_kwargs_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        CubePickEnv(image_size=0)
    with pytest.raises(ValueError, match="cube_region"):
        CubePickEnv(cube_region=((0.6, 0.4), (-0.1, 0.1)))
    with pytest.raises(ValueError, match="render_mode"):
        CubePickEnv(render_mode="human")
    env = CubePickEnv(render_images=False)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(5, np.float32))


def test_distractors_and_appearance_leave_the_defaults_alone():
    base = CubePickEnv(image_size=48)
    assert "distractors" not in base.describe() and "distractors" not in base.describe()["kwargs"]
    plain, _ = base.reset(seed=5)
    env = CubePickEnv(image_size=48, distractors=3)
    assert env.describe()["kwargs"]["distractors"] == 3
    obs, _ = env.reset(seed=5)
    # the cube's placement for a seed is unchanged; the distractors lie on the table, off the cube
    np.testing.assert_array_equal(obs["state"][:2], plain["state"][:2])
    pos = env.data.mocap_pos[:3]
    assert np.all(np.abs(pos[:, 2] - 0.02) < 1e-9) and np.all(
        (0.3 <= pos[:, 0]) & (pos[:, 0] <= 0.75)
    )
    assert np.all(np.hypot(pos[:, 0] - obs["state"][0], pos[:, 1] - obs["state"][1]) >= 0.06)
    for i in range(3):  # visual only: nothing collides with them
        g = env.model.geom(f"distractor{i}")
        assert g.contype[0] == 0 and g.conaffinity[0] == 0
    assert not np.array_equal(obs["image"], plain["image"])
    env.randomize_appearance(np.random.default_rng(0))
    changed = env.render_camera("front")
    assert np.abs(changed.astype(int) - obs["image"].astype(int)).mean() > 5
    env.reset_appearance()
    np.testing.assert_array_equal(env.render_camera("front"), obs["image"])
    with pytest.raises(ValueError, match="distractors"):
        CubePickEnv(distractors=-1)
    base.close()
    env.close()


def _red_centroid(image: np.ndarray) -> tuple[np.ndarray, int]:
    img = image.astype(int)
    mask = (img[..., 0] > 120) & (img[..., 1] < 60) & (img[..., 2] < 60)
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean() + 0.5, rows.mean() + 0.5]), int(mask.sum())


def test_project_puts_the_cube_where_it_is_rendered():
    env = CubePickEnv(image_size=128)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        centroid, n_px = _red_centroid(obs["image"])
        assert n_px > 20  # the red cube is in view at every start
        pix = env.project(obs["state"][0:3])
        assert pix.shape == (1, 2)
        assert np.abs(pix[0] - centroid).max() < 1.5, (seed, pix, centroid)
    small = CubePickEnv(image_size=64)
    small.reset(seed=0)
    assert np.allclose(small.project(obs["state"][0:3]) * 2, pix, atol=1e-6)  # same camera
    with pytest.raises(ValueError, match="unknown camera"):
        env.project(np.zeros(3), camera="top")
    env.close()
    small.close()
