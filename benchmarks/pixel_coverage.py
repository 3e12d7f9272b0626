"""How many pixels of the policies' camera the cube covers, per image size, for env configs.

    python benchmarks/pixel_coverage.py [--env cube_pick cube_pick_small ...] [--sizes 64 112 224]
        [--n 100] [--seed 0] [--json out.json] [--montage out.png]

For each env config (``configs/env/<name>.yaml`` or a YAML path) it places the cube at ``--n``
random placements (``env.reset(seed=seed + i)``: the env's own draw, yaw included) plus the four
corners and the centre of its ``cube_region``, and renders the front camera (the one the policies
see) in the start posture with MuJoCo's segmentation rendering at each size. The count is of the
pixels whose geom is the cube: what the camera sees of it, occlusion by the arm included. The scene
is the env's own (its model, so its render profile); segmentation draws flat ids, so shadows do not
change the count (with MSAA, anti-aliased edge pixels would be missed: the configs here use none).
Prints min / median / max (and mean) pixels per size and config, how many placements showed no
cube pixel (``zero``), the cube's smallest distance to the image border (``edge``, pixels: the
camera sees the whole region when it is > 0) and the placement with the fewest pixels;
``--montage`` writes that placement's images at every size, a row per config.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

from envs import panda_mjcf as P
from envs.cube_pick import CubePickEnv
from envs.headless_gl import ensure_gl_backend, load_triton_before_mesa
from robo_s2.experiments.runner import git_commit
from robo_s2.paths import env_config

CAMERA = "front"


# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"n": 2, "sizes": [16, 32]}


def segmentation_renderers(env: CubePickEnv, sizes: Sequence[int]) -> dict[int, mujoco.Renderer]:
    """A segmentation renderer per image size over the env's model (as the env makes its own)."""
    ensure_gl_backend()
    load_triton_before_mesa()
    renderers = {}
    for size in sizes:
        r = mujoco.Renderer(env.model, int(size), int(size))
        r.enable_segmentation_rendering()
        renderers[int(size)] = r
    return renderers


def cube_mask(env: CubePickEnv, renderer: mujoco.Renderer, camera: str = CAMERA) -> np.ndarray:
    """Boolean (H, W) mask of the pixels of ``camera`` whose visible geom is the cube, in the env's
    current state."""
    renderer.update_scene(env.data, camera=camera)
    seg = renderer.render()  # (H, W, 2): object id, object type
    cube = env.model.geom(P.CUBE_GEOM).id
    return (seg[..., 0] == cube) & (seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM))


def cube_pixels(env: CubePickEnv, renderer: mujoco.Renderer, camera: str = CAMERA) -> int:
    """How many pixels of ``camera`` show the cube, in the env's current state."""
    return int(cube_mask(env, renderer, camera).sum())


def edge_margin(mask: np.ndarray) -> int:
    """Distance (pixels) from the mask's nearest pixel to the image border; -1 for an empty mask."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return -1
    h, w = mask.shape
    return int(min(rows.min(), cols.min(), h - 1 - rows.max(), w - 1 - cols.max()))


def region_points(
    region: Sequence[Sequence[float]],
) -> list[tuple[str, tuple[float, float]]]:
    """The four corners and the centre of ``((x_min, x_max), (y_min, y_max))``."""
    (x0, x1), (y0, y1) = region
    return [
        ("corner x_min y_min", (x0, y0)),
        ("corner x_min y_max", (x0, y1)),
        ("corner x_max y_min", (x1, y0)),
        ("corner x_max y_max", (x1, y1)),
        ("centre", ((x0 + x1) / 2, (y0 + y1) / 2)),
    ]


def coverage(
    env_kwargs: dict[str, Any],
    sizes: Sequence[int] = (64, 112, 224),
    n: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Cube pixels per size over ``n`` seeded random placements plus the region's corners and
    centre: ``{"placements": [(x, y, yaw, label)], "pixels": {size: int array}, "edge_margin":
    {size: int array}}`` (the cube's distance to the image border, pixels; -1 where unseen)."""
    kwargs = {**env_kwargs, "render_images": False, "render_mode": None}
    kwargs["image_size"] = max(int(s) for s in sizes)
    env = CubePickEnv(**kwargs)
    renderers = segmentation_renderers(env, sizes)
    placements: list[tuple[float, float, float, str]] = []
    pixels: dict[int, list[int]] = {int(s): [] for s in sizes}
    margins: dict[int, list[int]] = {int(s): [] for s in sizes}
    try:
        todo: list[tuple[int, dict[str, Any] | None, str]] = [
            (seed + i, None, "random") for i in range(n)
        ]
        todo += [
            (seed + n + j, {"cube_pos": pos}, label)
            for j, (label, pos) in enumerate(region_points(env.cube_region))
        ]
        for episode_seed, options, label in todo:
            _, info = env.reset(seed=episode_seed, options=options)
            x, y, yaw = info["cube_placement"]
            placements.append((x, y, yaw, label))
            for size, renderer in renderers.items():
                mask = cube_mask(env, renderer)
                pixels[size].append(int(mask.sum()))
                margins[size].append(edge_margin(mask))
    finally:
        for r in renderers.values():
            r.close()
        env.close()
    return {
        "placements": placements,
        "pixels": {s: np.array(v) for s, v in pixels.items()},
        "edge_margin": {s: np.array(v) for s, v in margins.items()},
    }


def montage(
    env_kwargs: dict[str, Any], placement: Sequence[float], sizes: Sequence[int] = (64, 112, 224)
) -> np.ndarray:
    """The front camera's RGB image of one placement ``(x, y, yaw)`` at each size, side by side,
    each scaled up (nearest pixel) to the largest size: what the encoders get to see."""
    kwargs = {**env_kwargs, "render_images": False, "render_mode": None}
    top = max(int(s) for s in sizes)
    env = CubePickEnv(**{**kwargs, "image_size": top})
    x, y, yaw = (float(v) for v in placement[:3])
    env.reset(seed=0, options={"cube_pos": (x, y), "cube_yaw": yaw})
    ensure_gl_backend()
    load_triton_before_mesa()
    tiles = []
    try:
        for size in sizes:
            with mujoco.Renderer(env.model, int(size), int(size)) as renderer:
                renderer.update_scene(env.data, camera=CAMERA)
                image = renderer.render()
            idx = np.arange(top) * int(size) // top
            tiles.append(image[idx][:, idx])
    finally:
        env.close()
    return np.concatenate(tiles, axis=1)


def summarise(pixels: np.ndarray) -> dict[str, float]:
    return {
        "min": int(pixels.min()),
        "median": float(np.median(pixels)),
        "max": int(pixels.max()),
        "mean": float(pixels.mean()),
        "zero": int((pixels == 0).sum()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", nargs="+", default=["cube_pick"], help="configs/env names")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 112, 224])
    parser.add_argument("--n", type=int, default=100, help="random placements per config")
    parser.add_argument("--seed", type=int, default=0, help="first placement seed")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--montage",
        type=Path,
        default=None,
        help="PNG of each config's fewest-pixel placement at every size (a row per config)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)

    results, rows = [], []
    print(
        f"{'env':<24}{'size':>6}{'min':>7}{'median':>8}{'max':>7}{'mean':>8}{'zero':>6}"
        f"{'edge':>6}  smallest at (x, y, yaw)"
    )
    for name in args.env:
        try:
            env_kwargs = env_config(name)
        except FileNotFoundError as exc:
            raise SystemExit(str(exc)) from None
        cov = coverage(env_kwargs, args.sizes, args.n, args.seed)
        label_name = Path(name).stem
        per_size = {}
        for size, px in cov["pixels"].items():
            s = summarise(px)
            margin = cov["edge_margin"][size]
            s["min_edge_margin"] = int(margin[margin >= 0].min()) if (margin >= 0).any() else -1
            x, y, yaw, label = cov["placements"][int(np.argmin(px))]
            print(
                f"{label_name:<24}{size:>5}²{s['min']:>7}{s['median']:>8.1f}{s['max']:>7}"
                f"{s['mean']:>8.1f}{s['zero']:>6}{s['min_edge_margin']:>6}  ({x:.3f}, {y:+.3f}, {yaw:+.2f}) {label}"
            )
            per_size[str(size)] = {**s, "pixels": px.tolist(), "edge_margin": margin.tolist()}
        if args.montage is not None:
            fewest = cov["placements"][int(np.argmin(cov["pixels"][min(cov["pixels"])]))]
            rows.append(montage(env_kwargs, fewest, args.sizes))
            print(f"{label_name:<24}montage: ({fewest[0]:.3f}, {fewest[1]:+.3f}, {fewest[2]:+.2f})")
        results.append(
            {
                "env": name,
                "env_kwargs": env_kwargs,
                "n_placements": len(cov["placements"]),
                "placements": cov["placements"],
                "sizes": per_size,
            }
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"argv": sys.argv[1:] if argv is None else argv, "commit": git_commit()}
        args.json.write_text(json.dumps({**record, "results": results}, indent=2) + "\n")
    if args.montage is not None:
        import imageio.v3 as iio

        args.montage.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(args.montage, np.concatenate(rows, axis=0))


if __name__ == "__main__":
    main()
