"""Scene variety for pre-training images: the lights and colours of a cube-picking scene, read,
restored and re-drawn in place (physics and the observation layout are untouched)."""

from __future__ import annotations

import mujoco
import numpy as np


def read_appearance(m: mujoco.MjModel) -> dict[str, np.ndarray]:
    """A copy of the model's lights and colours (what :func:`restore_appearance` puts back)."""
    return {
        "light_diffuse": m.light_diffuse.copy(),
        "light_ambient": m.light_ambient.copy(),
        "light_dir": m.light_dir.copy(),
        "headlight_ambient": np.array(m.vis.headlight.ambient),
        "headlight_diffuse": np.array(m.vis.headlight.diffuse),
        "mat_rgba": m.mat_rgba.copy(),
        "geom_rgba": m.geom_rgba.copy(),
    }


def restore_appearance(m: mujoco.MjModel, a: dict[str, np.ndarray]) -> None:
    m.light_diffuse[:] = a["light_diffuse"]
    m.light_ambient[:] = a["light_ambient"]
    m.light_dir[:] = a["light_dir"]
    m.vis.headlight.ambient[:] = a["headlight_ambient"]
    m.vis.headlight.diffuse[:] = a["headlight_diffuse"]
    m.mat_rgba[:] = a["mat_rgba"]
    m.geom_rgba[:] = a["geom_rgba"]


def randomize_appearance(
    m: mujoco.MjModel, a: dict[str, np.ndarray], rng: np.random.Generator, distractors: int
) -> None:
    """From the scene's own appearance ``a``: re-draw lighting (brightness, tint, key-light
    direction) and the colours of the cube, table, floor and the ``distractors`` objects."""
    restore_appearance(m, a)
    tint = rng.uniform(0.8, 1.2, size=3)
    m.light_diffuse[:] = np.clip(a["light_diffuse"] * rng.uniform(0.4, 1.5) * tint, 0, 1)
    d = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), -1.0])
    m.light_dir[:] = d / np.linalg.norm(d)
    m.vis.headlight.ambient[:] = np.clip(a["headlight_ambient"] * rng.uniform(0.5, 1.5), 0, 1)
    m.vis.headlight.diffuse[:] = np.clip(a["headlight_diffuse"] * rng.uniform(0.5, 1.5), 0, 1)
    for name, lo in (("cube", 0.05), ("table", 0.5), ("floor", 0.05)):
        m.mat_rgba[m.material(name).id, :3] = rng.uniform(lo, 1.0, size=3)
    for i in range(distractors):
        m.geom_rgba[m.geom(f"distractor{i}").id, :3] = rng.uniform(0.05, 1.0, size=3)
