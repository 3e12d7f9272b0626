"""MJCF of a Franka-Panda-like arm with a parallel-jaw gripper, a table and a cube, from primitives.

The kinematic chain follows the real Panda (MuJoCo Menagerie ``franka_emika_panda`` body offsets,
orientations and joint limits); the link shapes are capsules, cylinders and boxes, and the link
masses are Panda-like values with simple diagonal inertias. No meshes, no files, no downloads.

World frame: robot base at the origin, table top at z = 0, +x points away from the robot (the cube
region lies in front of it), +z up.

Contacts are physically honest: elliptic friction cones with ``impratio`` 10, ``condim`` 4
(sliding + torsional friction) on the finger pads and the cube, and nothing attaches the cube to the
hand (the only equality constraint couples the two finger joints).
"""

from __future__ import annotations

import math

import numpy as np

ARM_JOINTS: tuple[str, ...] = tuple(f"joint{i}" for i in range(1, 8))
FINGER_JOINTS: tuple[str, str] = ("finger_joint1", "finger_joint2")
ARM_ACTUATORS: tuple[str, ...] = tuple(f"actuator{i}" for i in range(1, 8))
GRIPPER_ACTUATOR = "gripper"
EE_SITE = "ee"
HAND_BODY = "hand"
CUBE_BODY = "cube"
CUBE_GEOM = "cube"
PAD_GEOMS: tuple[str, str] = ("left_pad", "right_pad")
CAMERAS: tuple[str, ...] = ("front", "wrist")

# Real Panda joint limits (rad).
JOINT_RANGES = np.array(
    [
        [-2.8973, 2.8973],
        [-1.7628, 1.7628],
        [-2.8973, 2.8973],
        [-3.0718, -0.0698],
        [-2.8973, 2.8973],
        [-0.0175, 3.7525],
        [-2.8973, 2.8973],
    ]
)
FINGER_RANGE = (0.0, 0.04)  # each finger slides 0..4 cm: total opening 0..8 cm
# Menagerie "home" posture; the env derives its start posture from it by IK.
HOME_QPOS = np.array([0.0, 0.0, 0.0, -1.57079, 0.0, 1.57079, -0.7853])

# Hand geometry (hand frame: +z from the flange towards the fingertips, fingers slide along +-y).
FINGER_BASE_Z = 0.0584  # finger body origin below the hand origin
PAD_CENTER_Z = 0.0445  # pad centre below the finger origin
FINGER_LENGTH = 0.054  # fingertip below the finger origin
EE_OFFSET = FINGER_BASE_Z + PAD_CENTER_Z  # end-effector site: between the pad centres

# Arm servo gains: (kp, kv, force limit) per joint.
# Stiffness as in Menagerie; damping lowered to about critical so a servo settles within one 100 ms
# control step (Menagerie's kv = kp / 10 gives a 100 ms time constant: a one-step lag at 10 Hz).
_ARM_GAINS = [
    (4500, 200, 87),
    (4500, 200, 87),
    (3500, 130, 87),
    (3500, 130, 87),
    (2000, 50, 12),
    (2000, 50, 12),
    (2000, 50, 12),
]
# Gripper: a position servo on the tendon (q1 + q2) / 2. Closing fully on a 4 cm cube squeezes with
# about kp * 0.02 / 2 = 10 N per finger.
GRIPPER_KP = 1000.0
GRIPPER_KV = 30.0
GRIPPER_FORCE = 60.0


def _f(*values: float) -> str:
    return " ".join(f"{v:.6g}" for v in values)


def look_at_xyaxes(pos: tuple[float, float, float], target: tuple[float, float, float]) -> str:
    """MJCF ``xyaxes`` of a camera at ``pos`` looking at ``target``, world +z up in the image."""
    p, t = np.asarray(pos, float), np.asarray(target, float)
    fwd = t - p
    fwd /= np.linalg.norm(fwd)
    x = np.cross(fwd, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(x, fwd)
    return _f(*x, *y)


# Third-person camera: in front of the robot, a little to its left, 40 deg above the horizon; it
# sees the whole cube region and the gripper from the table up to ~0.4 m.
FRONT_CAMERA_POS = (1.05, 0.26, 0.67)
FRONT_CAMERA_TARGET = (0.5, 0.0, 0.16)
FRONT_CAMERA_FOVY = 48.0


DISTRACTOR_SHAPES = ("box", "sphere", "cylinder")


def _distractor_bodies(n: int) -> str:
    """Visual-only mocap bodies ``distractor<i>`` parked below the table until placed."""
    out = []
    for i in range(int(n)):
        shape = DISTRACTOR_SHAPES[i % len(DISTRACTOR_SHAPES)]
        size = {"box": "0.02 0.02 0.02", "sphere": "0.02", "cylinder": "0.018 0.02"}[shape]
        out.append(
            f'    <body name="distractor{i}" mocap="true" pos="0 0 -1">\n'
            f'      <geom name="distractor{i}" type="{shape}" size="{size}" '
            'rgba="0.2 0.4 0.8 1" contype="0" conaffinity="0"/>\n'
            "    </body>\n"
        )
    return "".join(out)


def _bool(flag: bool) -> str:
    return "true" if flag else "false"


def build_mjcf(
    cube_size: float = 0.04,
    cube_mass: float = 0.07,
    offscreen_size: int = 640,
    cube_rgba: tuple[float, float, float, float] = (0.85, 0.15, 0.12, 1.0),
    distractors: int = 0,
    shadows: bool = True,
    shadow_size: int = 256,
    msaa_samples: int = 0,
    numslices: int = 28,
    numstacks: int = 16,
) -> str:
    """The whole scene as an MJCF string.

    Args:
        cube_size: edge length of the cube (m).
        cube_mass: cube mass (kg).
        offscreen_size: offscreen framebuffer size; must be >= the largest rendered image side.
        cube_rgba: cube colour.
        distractors: number of visual-only distractor objects (mocap bodies ``distractor<i>``,
            box / sphere / cylinder in turn, no collisions); 0 leaves the scene as it was.
        shadows: whether the key light casts shadows (most of a CPU render's cost).
        shadow_size: side of the shadow map (texels).
        msaa_samples: multisample anti-aliasing samples of the offscreen buffer (0 = off).
        numslices, numstacks: render tessellation of curved primitives (MuJoCo's defaults 28, 16).
    """
    h = cube_size / 2.0
    s2 = math.sqrt(0.5)
    # Menagerie orientations: link2/link5 rotate -90 deg about x, link3/4/6/7 +90 deg; the hand is
    # turned -45 deg about the flange axis.
    qm = _f(s2, -s2, 0, 0)
    qp = _f(s2, s2, 0, 0)
    q_hand = _f(math.cos(-math.pi / 8), 0, 0, math.sin(-math.pi / 8))
    front_xy = look_at_xyaxes(FRONT_CAMERA_POS, FRONT_CAMERA_TARGET)
    # wrist camera: beside the hand, looking along the fingers, tilted 20 deg towards them
    wrist_xy = _f(0, 1, 0, math.cos(0.35), 0, math.sin(0.35))
    arm_act = "\n".join(
        f'    <position name="{ARM_ACTUATORS[i]}" joint="{ARM_JOINTS[i]}" kp="{kp}" kv="{kv}" '
        f'forcerange="{-fr} {fr}" ctrlrange="{_f(*JOINT_RANGES[i])}"/>'
        for i, (kp, kv, fr) in enumerate(_ARM_GAINS)
    )
    return f"""
<mujoco model="robo_s2_cube_pick">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{offscreen_size}" offheight="{offscreen_size}"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0.05 0.05 0.05"/>
    <quality shadowsize="{int(shadow_size)}" offsamples="{int(msaa_samples)}"
      numslices="{int(numslices)}" numstacks="{int(numstacks)}"/>
  </visual>

  <default>
    <default class="panda">
      <joint armature="0.1" damping="1" axis="0 0 1"/>
      <geom contype="2" conaffinity="1" group="1" material="white" friction="1 0.005 0.0001"/>
      <default class="dark">
        <geom material="dark"/>
      </default>
      <default class="finger">
        <joint type="slide" axis="0 1 0" range="{_f(*FINGER_RANGE)}" armature="0.01" damping="2"/>
        <geom material="dark"/>
      </default>
      <default class="pad">
        <geom type="box" size="0.009 0.002 0.0095" pos="0 0.0025 {PAD_CENTER_Z}" condim="4"
              friction="1.2 0.01 0.0001" solref="0.01 1" solimp="0.95 0.99 0.001"
              material="pad" priority="1"/>
      </default>
    </default>
  </default>

  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.62 0.52 0.40" rgb2="0.58 0.48 0.37"
             width="256" height="256"/>
    <material name="table" texture="grid" texrepeat="8 8"/>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.55 0.65 0.75" rgb2="0.15 0.18 0.22"
             width="256" height="256"/>
    <material name="floor" rgba="0.3 0.3 0.32 1"/>
    <material name="white" rgba="0.92 0.93 0.93 1" specular="0.4" shininess="0.3"/>
    <material name="dark" rgba="0.22 0.22 0.24 1" specular="0.3" shininess="0.3"/>
    <material name="pad" rgba="0.1 0.1 0.1 1"/>
    <material name="cube" rgba="{_f(*cube_rgba)}" specular="0.2"/>
  </asset>

  <worldbody>
    <light name="key" pos="0.6 -0.6 1.6" dir="-0.2 0.4 -1" directional="true"
           castshadow="{_bool(shadows)}"
           diffuse="0.6 0.6 0.6"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" material="floor"
          contype="1" conaffinity="1"/>
    <geom name="table" type="box" size="0.65 0.7 0.025" pos="0.4 0 -0.025" material="table"
          contype="1" conaffinity="1" friction="1 0.005 0.0001"/>
    <geom name="table_leg" type="box" size="0.05 0.05 0.36" pos="0.4 0 -0.41" rgba="0.3 0.25 0.2 1"
          contype="0" conaffinity="0"/>
    <camera name="front" pos="{_f(*FRONT_CAMERA_POS)}" xyaxes="{front_xy}"
            fovy="{FRONT_CAMERA_FOVY}"/>

    <body name="link0" childclass="panda" gravcomp="1">
      <inertial mass="0.63" pos="-0.04 0 0.05" diaginertia="0.0032 0.0039 0.0043"/>
      <geom name="base" type="cylinder" size="0.075 0.03" pos="0 0 0.03" class="dark"/>
      <geom name="link0" type="capsule" fromto="0 0 0.05 0 0 0.2" size="0.06"/>
      <body name="link1" pos="0 0 0.333" gravcomp="1">
        <inertial mass="4.97" pos="0 0 -0.05" diaginertia="0.70 0.70 0.01"/>
        <joint name="joint1" range="{_f(*JOINT_RANGES[0])}"/>
        <geom type="capsule" fromto="0 0 -0.14 0 0 -0.02" size="0.06"/>
        <geom type="cylinder" fromto="0 -0.065 0 0 0.065 0" size="0.06" class="dark"/>
        <body name="link2" quat="{qm}" gravcomp="1">
          <inertial mass="0.65" pos="0 -0.03 0" diaginertia="0.028 0.008 0.026"/>
          <joint name="joint2" range="{_f(*JOINT_RANGES[1])}"/>
          <geom type="capsule" fromto="0 -0.03 0 0 -0.22 0" size="0.06"/>
          <body name="link3" pos="0 -0.316 0" quat="{qp}" gravcomp="1">
            <inertial mass="3.23" pos="0.03 0.04 -0.07" diaginertia="0.037 0.036 0.011"/>
            <joint name="joint3" range="{_f(*JOINT_RANGES[2])}"/>
            <geom type="capsule" fromto="0 0 -0.1 0 0 -0.01" size="0.055"/>
            <geom type="capsule" fromto="0.01 0 0 0.07 0 0" size="0.05"/>
            <body name="link4" pos="0.0825 0 0" quat="{qp}" gravcomp="1">
              <inertial mass="3.59" pos="-0.05 0.1 0.03" diaginertia="0.026 0.02 0.028"/>
              <joint name="joint4" range="{_f(*JOINT_RANGES[3])}"/>
              <geom type="cylinder" fromto="0 0 -0.06 0 0 0.06" size="0.055" class="dark"/>
              <geom type="capsule" fromto="-0.01 0.03 0 -0.0825 0.12 0" size="0.05"/>
              <body name="link5" pos="-0.0825 0.384 0" quat="{qm}" gravcomp="1">
                <inertial mass="1.23" pos="0 0.04 -0.04" diaginertia="0.036 0.029 0.009"/>
                <joint name="joint5" range="{_f(*JOINT_RANGES[4])}"/>
                <geom type="capsule" fromto="0 0 -0.27 0 0 -0.06" size="0.045"/>
                <geom type="capsule" fromto="0 0.07 -0.05 0 0.07 0" size="0.035"/>
                <body name="link6" quat="{qp}" gravcomp="1">
                  <inertial mass="1.67" pos="0.06 -0.01 -0.01" diaginertia="0.002 0.0044 0.0054"/>
                  <joint name="joint6" range="{_f(*JOINT_RANGES[5])}"/>
                  <geom type="cylinder" fromto="0 0 -0.05 0 0 0.05" size="0.05" class="dark"/>
                  <geom type="capsule" fromto="0.02 0 0 0.07 0 0" size="0.045"/>
                  <body name="link7" pos="0.088 0 0" quat="{qp}" gravcomp="1">
                    <inertial mass="0.74" pos="0.01 0 0.06" diaginertia="0.0125 0.01 0.0048"/>
                    <joint name="joint7" range="{_f(*JOINT_RANGES[6])}"/>
                    <geom type="cylinder" fromto="0 0 0.02 0 0 0.1" size="0.045"/>
                    <body name="link8" pos="0 0 0.107" gravcomp="1">
                      <body name="{HAND_BODY}" quat="{q_hand}" gravcomp="1">
                        <inertial mass="0.73" pos="0 0 0.03" diaginertia="0.001 0.0025 0.0017"/>
                        <geom name="hand" type="box" size="0.022 0.1 0.026" pos="0 0 0.03"/>
                        <geom name="hand_mount" type="cylinder" size="0.04 0.004" pos="0 0 0.004"
                              class="dark"/>
                        <site name="{EE_SITE}" pos="0 0 {EE_OFFSET}" size="0.004" rgba="0 1 0 0.5"
                              group="4"/>
                        <camera name="wrist" pos="0.05 0 0.062" xyaxes="{wrist_xy}" fovy="75"/>
                        <body name="left_finger" pos="0 0 {FINGER_BASE_Z}" gravcomp="1">
                          <inertial mass="0.015" pos="0 0.01 0.027"
                                    diaginertia="2.4e-6 2.4e-6 7.5e-7"/>
                          <joint name="{FINGER_JOINTS[0]}" class="finger"/>
                          <geom name="left_finger" type="box" size="0.009 0.007 0.027"
                                pos="0 0.0115 0.027" class="finger"/>
                          <geom name="{PAD_GEOMS[0]}" class="pad"/>
                        </body>
                        <body name="right_finger" pos="0 0 {FINGER_BASE_Z}" quat="0 0 0 1"
                              gravcomp="1">
                          <inertial mass="0.015" pos="0 0.01 0.027"
                                    diaginertia="2.4e-6 2.4e-6 7.5e-7"/>
                          <joint name="{FINGER_JOINTS[1]}" class="finger"/>
                          <geom name="right_finger" type="box" size="0.009 0.007 0.027"
                                pos="0 0.0115 0.027" class="finger"/>
                          <geom name="{PAD_GEOMS[1]}" class="pad"/>
                        </body>
                      </body>
                    </body>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>

    <body name="{CUBE_BODY}" pos="0.5 0 {h}">
      <freejoint name="cube"/>
      <geom name="{CUBE_GEOM}" type="box" size="{h} {h} {h}" mass="{cube_mass}" material="cube"
            condim="4" friction="1 0.01 0.0001" solref="0.01 1" solimp="0.95 0.99 0.001"
            contype="1" conaffinity="1"/>
    </body>
{_distractor_bodies(distractors)}  </worldbody>

  <tendon>
    <fixed name="split">
      <joint joint="{FINGER_JOINTS[0]}" coef="0.5"/>
      <joint joint="{FINGER_JOINTS[1]}" coef="0.5"/>
    </fixed>
  </tendon>

  <equality>
    <!-- couples the two fingers (nothing else: the cube is held by friction only) -->
    <joint name="finger_coupling" joint1="{FINGER_JOINTS[0]}" joint2="{FINGER_JOINTS[1]}"
           solimp="0.95 0.99 0.001" solref="0.005 1"/>
  </equality>

  <actuator>
{arm_act}
    <position name="{GRIPPER_ACTUATOR}" tendon="split" kp="{GRIPPER_KP}" kv="{GRIPPER_KV}"
              forcerange="{-GRIPPER_FORCE} {GRIPPER_FORCE}" ctrlrange="{_f(*FINGER_RANGE)}"/>
  </actuator>
</mujoco>
"""
