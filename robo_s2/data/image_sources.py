"""Images for masked pre-training: demo-store frames, image folders and randomized-scene frames.

Every source yields uint8 ``(H, W, 3)`` images; :func:`load_images` turns a list of sources into one
in-memory pool ``(N, S, S, 3)``: each image is resized so its short side is ``S`` (area / bicubic
resampling, so mixed sizes are fine) and centre-cropped to a square. Each image carries a *group*
(its store episode, its file, its scene episode) so held-out images never share an episode with
training ones.

* **Demo stores** (ours, or imported ones): every ``data/`` array of uint8 ``(N, H, W, 3)`` frames
  (``image``, ``image_wrist``, ...: all camera views) or those named in ``image_keys``;
  ``frames_per_episode=k`` takes ``k`` evenly spaced frames of each episode instead of all.
* **Image folders**, searched recursively for ``.png .jpg .jpeg .bmp .gif .webp .tif .tiff .ppm``.
  A folder without such files is an error. Files that cannot be decoded are **skipped and counted**
  (the count and the first names are reported): one corrupt file among thousands should not stop a
  long run, and nothing is skipped silently; a folder where no file decodes is an error.
* **Randomized scenes** (:func:`scene_frames`): the cube-picking env with random lighting and
  colours, cube sizes and distractor objects, stepped by the scripted expert, every camera rendered,
  so the encoder is not tuned to the exact evaluation images.

:func:`augment` makes MAE's random-resized crops and horizontal flips for a whole batch in one
``grid_sample`` call, drawn from a ``torch.Generator`` (reproducible, resumable).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robo_s2.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class ImagePool:
    """Square uint8 images ``(N, S, S, 3)``, a group id per image, and where they came from."""

    images: np.ndarray
    groups: np.ndarray  # int64 (N,): images of one group (episode / file) stay on one side
    sources: list[str] = field(default_factory=list)  # one line per source, for the log
    skipped: list[str] = field(default_factory=list)  # unreadable files that were left out

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def split(self, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Image indices ``(train, held_out)``, split by group (seeded); none held out at 0."""
        from robo_s2.data.windows import split_episodes

        ids = np.arange(len(self))
        uniq = np.unique(self.groups)
        if len(uniq) < 2:  # one episode / file: nothing can be held out without sharing it
            return ids, ids[:0]
        split = split_episodes(len(uniq), val_fraction, seed)
        held = np.isin(self.groups, uniq[split.val])
        return ids[~held], ids[held]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> ``(size, size, 3)``: short side to ``size``, centre crop."""
    from PIL import Image

    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(image)
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    im = Image.fromarray(np.ascontiguousarray(image))
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
    im = im.resize((nw, nh), method)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def store_image_keys(store: Any) -> list[str]:
    """The ``data/`` arrays of a store that hold RGB frames (uint8 ``(N, H, W, 3)``)."""
    keys = []
    for k in store.keys():
        a = store.array(k)
        if len(a.shape) == 4 and a.shape[-1] == 3 and np.dtype(a.dtype) == np.uint8:
            keys.append(k)
    return keys


def is_store(path: Path) -> bool:
    """Whether ``path`` is a zarr demo store (v2 or v3 layout with ``meta/episode_ends``)."""
    meta = path / "meta" / "episode_ends"
    return (
        path.is_dir()
        and meta.is_dir()
        and any((path / n).exists() for n in ("zarr.json", ".zgroup"))
    )


def store_images(
    path: Path,
    size: int,
    image_keys: Sequence[str] | None = None,
    frames_per_episode: int | None = None,
    group_offset: int = 0,
) -> tuple[list[np.ndarray], list[int], str]:
    """Frames of one store (all camera views unless ``image_keys``), one group per episode."""
    from robo_s2.data.store import DemoStore

    store = DemoStore.open(path, mode="r")
    try:
        available = store_image_keys(store)
        keys = list(image_keys) if image_keys else available
        missing = [k for k in keys if k not in available]
        if missing or not keys:
            raise UserError(
                f"{path} has no image array {', '.join(missing) or '(none at all)'}; its image "
                f"arrays: {', '.join(available) or 'none'} (set image_keys= to some of them)"
            )
        if store.n_frames == 0:
            raise UserError(f"{path} has no frames; collect or import some episodes first")
        ends = np.asarray(store.episode_ends, dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        rows, groups = [], []
        for e, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
            if frames_per_episode and hi - lo > frames_per_episode:
                idx = np.unique(
                    np.linspace(lo, hi - 1, int(frames_per_episode)).round().astype(int)
                )
            else:
                idx = np.arange(lo, hi)
            rows.append(idx)
            groups.append(np.full(len(idx), group_offset + e))
        rows_all, groups_all = np.concatenate(rows), np.concatenate(groups)
        images, out_groups = [], []
        for k in keys:
            arr = store.array(k)
            frames = np.asarray(arr.get_orthogonal_selection((rows_all,)))
            images += [resize_square(f, size) for f in frames]
            out_groups += groups_all.tolist()
        what = f"{path}: {len(images)} frames ({', '.join(keys)}; {len(ends)} episodes)"
        return images, out_groups, what
    finally:
        store.close()


def folder_images(
    path: Path, size: int, group_offset: int = 0
) -> tuple[list[np.ndarray], list[int], str, list[str]]:
    """Every decodable image file under ``path`` (recursively); undecodable ones are skipped."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        others = sorted(p.name for p in path.rglob("*") if p.is_file())[:5]
        found = f"found only {', '.join(others)}" if others else "it is empty"
        raise UserError(
            f"image folder {path} has no images ({found}); expected files ending in "
            f"{' '.join(IMAGE_SUFFIXES)}, or a demo store"
        )
    images: list[np.ndarray] = []
    groups: list[int] = []
    skipped: list[str] = []
    for f in files:
        try:
            with Image.open(f) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            skipped.append(str(f))
            continue
        images.append(resize_square(rgb, size))
        groups.append(group_offset + len(groups))
    if not images:
        raise UserError(
            f"none of the {len(files)} image files in {path} could be decoded (e.g. {files[0]}); "
            "they are corrupt or not images"
        )
    what = f"{path}: {len(images)} images" + (
        f" ({len(skipped)} unreadable, skipped)" if skipped else ""
    )
    return images, groups, what, skipped


def load_images(
    paths: Sequence[str | Path],
    size: int,
    image_keys: Sequence[str] | None = None,
    frames_per_episode: int | None = None,
    max_images: int | None = None,
    seed: int = 0,
) -> ImagePool:
    """All images of ``paths`` (stores or image folders) as one square pool of side ``size``.

    ``max_images`` keeps a seeded random subset (after reading; bounds the memory of the pool)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise UserError("no image sources given; set images=<store or image folder>[,<more>...]")
    if frames_per_episode is not None and int(frames_per_episode) < 1:
        raise UserError(f"frames_per_episode={frames_per_episode} must be >= 1 (or null for all)")
    images: list[np.ndarray] = []
    groups: list[int] = []
    sources, skipped = [], []
    for raw in paths:
        p = Path(str(raw)).expanduser()
        offset = (max(groups) + 1) if groups else 0
        if not p.exists():
            raise UserError(f"image source {p} does not exist (give a demo store or image folder)")
        if is_store(p):
            ims, gs, what = store_images(p, size, image_keys, frames_per_episode, offset)
        elif p.is_dir():
            ims, gs, what, bad = folder_images(p, size, offset)
            skipped += bad
        else:
            raise UserError(f"image source {p} is a file; give a demo store or an image folder")
        images += ims
        groups += gs
        sources.append(what)
    pool = ImagePool(np.stack(images), np.asarray(groups, np.int64), sources, skipped)
    if max_images and len(pool) > int(max_images):
        keep = np.sort(np.random.default_rng(seed).choice(len(pool), int(max_images), False))
        pool = ImagePool(pool.images[keep], pool.groups[keep], sources, skipped)
    return pool


def scene_frames(
    n_episodes: int,
    size: int,
    seed: int = 0,
    frames_per_episode: int = 8,
    cameras: Sequence[str] = ("front", "wrist"),
    cube_sizes: Sequence[float] = (0.03, 0.04, 0.05),
    max_distractors: int = 3,
    randomize_yaw: bool = True,
    steps: tuple[int, int] = (20, 60),
    on_episode: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(N, size, size, 3)`` and episode ids of randomized cube-picking scenes.

    Each episode draws a cube size, 0..``max_distractors`` distractor objects and a lighting and
    colour scheme (:meth:`envs.cube_pick.CubePickEnv.randomize_appearance`), lets the scripted
    expert act for a length drawn from ``steps`` and renders every camera at
    ``frames_per_episode`` evenly spaced steps of it. Seeded."""
    from envs import make_env
    from envs.cube_pick import image_key
    from envs.expert import ScriptedExpert

    if n_episodes < 1 or frames_per_episode < 1:
        raise UserError("scenes.episodes and scenes.frames_per_episode must be >= 1")
    rng = np.random.default_rng(seed)
    envs: dict[tuple[float, int], Any] = {}  # the cube-picking task's envs (randomize_appearance)
    frames, groups = [], []
    try:
        for ep in range(int(n_episodes)):
            key = (float(rng.choice(cube_sizes)), int(rng.integers(0, max_distractors + 1)))
            if key not in envs:
                envs[key] = make_env({
                    "image_size": size, "cameras": tuple(cameras), "cube_size": key[0],
                    "distractors": key[1], "randomize_yaw": randomize_yaw,
                })  # fmt: skip
            env = envs[key]
            env.randomize_appearance(rng)
            ep_seed = int(rng.integers(2**31))
            obs, _ = env.reset(seed=ep_seed)
            expert = ScriptedExpert.for_env(env, seed=ep_seed)
            length = int(rng.integers(steps[0], steps[1] + 1))
            shots = set(np.linspace(0, length - 1, frames_per_episode).round().astype(int))
            for t in range(length):
                if t in shots:
                    for cam in cameras:
                        frames.append(obs[image_key(cam)])
                        groups.append(ep)
                obs, _, terminated, truncated, _ = env.step(expert.act(obs))
                if terminated or truncated:
                    obs, _ = env.reset(seed=ep_seed + 1)
            if on_episode is not None:
                on_episode(ep + 1)
    finally:
        for env in envs.values():
            env.close()
    return np.stack(frames), np.asarray(groups, np.int64)


def augment(
    images: Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
) -> Tensor:
    """Random-resized crops (area fraction in ``scale``, aspect in ``ratio``) and horizontal flips
    of uint8 ``(B, S, S, 3)`` images -> float ``(B, 3, size, size)`` in [0, 1], one bilinear
    ``grid_sample`` for the batch. Draws come from ``generator`` (CPU)."""
    b = images.shape[0]
    x = images.permute(0, 3, 1, 2).float() / 255.0
    u = torch.rand(b, 5, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / height as fractions of the side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (u[:, 2] * 2 - 1) * (1 - w)  # crop centre in [-1, 1] coordinates, crop inside the image
    cy = (u[:, 3] * 2 - 1) * (1 - h)
    flip = torch.where(u[:, 4] < hflip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
