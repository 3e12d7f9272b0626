"""diffusion_policy zarr (their ``ReplayBuffer`` layout) <-> robo_s2 demo stores.

Their layout: ``data/<key>`` arrays concatenated over time, ``meta/episode_ends`` (exclusive ends),
zarr format 2, as a directory or a ``.zarr.zip`` (zarr ``ZipStore``), Blosc-compressed; images may be
JPEG2000-encoded with ``imagecodecs`` codecs (``imagecodecs_jpeg2k``), which this module registers
when ``imagecodecs`` is installed.

Import reads the source directly with zarr (directory or zip, v2 or v3) and copies it episode by
episode into a fresh store through a key mapping ``{their key: our key}`` (a list of our keys to use
one array twice; ``proprio[0:2]`` takes columns 0..1 of theirs; several arrays mapped to one low-dim
key are concatenated in order). Without a mapping, one is chosen from the keys present:

- ``robo_s2``: a store written by robo_s2 (our key names): every array copied as is, its
  attributes kept;
- ``pusht`` (``img``, ``state``, ``action``): ``img`` -> image, ``state[0:2]`` (agent x, y) ->
  proprio, ``state`` -> state, ``action`` -> action;
- ``robomimic`` (their robomimic image cache): ``agentview_image`` -> image, ``robot0_eef_pos``,
  ``robot0_eef_quat``, ``robot0_gripper_qpos`` -> proprio, ``action`` -> action;
- otherwise the first of ``image``/``img``/``camera_0`` and of ``proprio``/``agent_pos``/
  ``robot_eef_pose`` with ``action``.

``keys=all`` is the chosen preset plus every other array under its own name (image arrays as
``image_<name>``). An array mapped alone onto a key other than ``proprio``/``action`` keeps its
per-step shape (``keypoint (9, 2)`` stays ``(T, 9, 2)``); low-dim data becomes float32 (``state``
keeps float64). The import's result lists the arrays it did not take and the dtype and shape
changes it made (``ImportResult.not_taken`` / ``changed``).

Export writes our store as a zarr v2 directory in their layout (or a ``.zarr.zip`` when ``out`` ends
in ``.zip``), Blosc/zstd, images one frame per chunk, our attributes in the root group's; ``keys``
renames arrays on the way (``{image: img}``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np

from robo_s2.core.io import replace_path
from robo_s2.data.interop.base import (
    BOOKKEEPING_ATTRS,
    ExportResult,
    ImportResult,
    array_brief,
    as_image,
    as_lowdim,
    brief_error,
    check_export_target,
    column_names,
    dtype_change,
    finish_error,
    ingest,
    mapping_of,
    path_size,
)
from robo_s2.data.store import PENDING as PENDING_ATTR
from robo_s2.data.store import is_image_key
from robo_s2.errors import UserError

_TARGET_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]*)(?:\[(-?\d*):(-?\d*)\])?")
# store keys whose arrays policies read as (T, D) columns: multi-axis sources are flattened into them
FLAT_KEYS = ("proprio", "action")
_IMAGE_CANDIDATES = ("image", "img", "agentview_image", "camera_0")
_PROPRIO_CANDIDATES = ("proprio", "agent_pos", "robot_eef_pose")
_ROBOMIMIC_PROPRIO = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
PUSHT_STATE = ["agent_x", "agent_y", "block_x", "block_y", "block_angle"]


def register_image_codecs() -> bool:
    """Register imagecodecs' numcodecs codecs (JPEG2000 ...); False when imagecodecs is missing."""
    try:
        from imagecodecs.numcodecs import register_codecs
    except ImportError:
        return False
    register_codecs()
    return True


# ------------------------------------------------------------------------------------------------
# reading a diffusion_policy store


class _Source:
    """A diffusion_policy zarr (directory or zip) opened read-only."""

    def __init__(self, src: Path) -> None:
        import zarr

        self.src = src
        if not src.exists():
            raise UserError(
                f"no such file or directory: {src}; pass src=<a diffusion_policy .zarr directory "
                "or .zarr.zip>"
            )
        self.zip = src.is_file()
        self.store: zarr.storage.ZipStore | zarr.storage.LocalStore
        try:
            if self.zip:
                if not zipfile.is_zipfile(src):
                    raise UserError(
                        f"{src} is neither a zarr directory nor a .zarr.zip (not a zip archive, or "
                        "a truncated one); pass a diffusion_policy store"
                    )
                self.store = zarr.storage.ZipStore(src, mode="r")
            else:
                self.store = zarr.storage.LocalStore(src, read_only=True)
            self.root = zarr.open_group(self.store, mode="r")
        except UserError:
            raise
        except Exception as e:  # zarr raises many types for unreadable metadata
            raise UserError(
                f"{src} is not a readable zarr store ({type(e).__name__}: {brief_error(e)}); "
                "it may be truncated or corrupt"
            ) from None
        self.codecs = register_image_codecs()
        self.arrays, self.unreadable = self._arrays()
        self.ends = self._episode_ends()

    def close(self) -> None:
        if self.zip:
            self.store.close()

    def _list(self, prefix: str) -> list[str]:
        from zarr.core.sync import sync

        async def collect() -> list[str]:
            return [name async for name in self.store.list_dir(prefix)]

        return sorted(sync(collect()))

    def _arrays(self) -> tuple[dict[str, Any], dict[str, str]]:
        import zarr

        data = self.root.get("data") if "data" in self._list("") else None
        if not isinstance(data, zarr.Group):
            raise UserError(
                f"{self.src} has no data/ group, so it is not in diffusion_policy's ReplayBuffer "
                f"layout (top level: {[n for n in self._list('') if not n.startswith('.')]})"
            )
        arrays, unreadable = {}, {}
        for name in self._list("data"):
            if name.startswith(".") or name == "zarr.json":
                continue
            try:
                node = data[name]
            except Exception as e:  # an unknown codec, unreadable metadata
                unreadable[name] = brief_error(e)
                continue
            if isinstance(node, zarr.Array) and node.ndim >= 1:
                arrays[name] = node
        return arrays, unreadable

    def _episode_ends(self) -> np.ndarray:
        import zarr

        meta = self.root.get("meta") if "meta" in self._list("") else None
        ends_arr = meta.get("episode_ends") if isinstance(meta, zarr.Group) else None
        if not isinstance(ends_arr, zarr.Array):
            raise UserError(f"{self.src} has no meta/episode_ends, so its episodes are unknown")
        try:
            ends = np.asarray(ends_arr[:])
        except Exception as e:
            raise UserError(
                f"cannot read meta/episode_ends of {self.src} ({brief_error(e)})"
            ) from None
        if ends.ndim != 1 or ends.dtype.kind not in "iu":
            raise UserError(
                f"{self.src}: meta/episode_ends is {ends.dtype} {ends.shape}, not 1-D int"
            )
        ends = ends.astype(np.int64)
        marker = self.root.attrs.get(PENDING_ATTR)
        if isinstance(marker, Mapping) and "n_episodes" in marker:  # a robo_s2 store mid-append
            ends = ends[: int(cast(int, marker["n_episodes"]))]  # JSON attrs: an int here
        if ends.size == 0:
            raise UserError(f"{self.src} holds no episodes (meta/episode_ends is empty)")
        if ends[0] <= 0 or np.any(np.diff(ends) <= 0):
            raise UserError(f"{self.src}: meta/episode_ends is not strictly increasing from > 0")
        return ends

    def require(self, key: str, option: str = "keys=") -> Any:
        if key in self.arrays:
            arr = self.arrays[key]
            if arr.shape[0] < int(self.ends[-1]):
                raise UserError(
                    f"{self.src}: data/{key} has {arr.shape[0]} rows but meta/episode_ends ends at "
                    f"{int(self.ends[-1])}; the store is truncated or corrupt"
                )
            return arr
        if key in self.unreadable:
            msg = self.unreadable[key]
            hint = (
                "; it is JPEG2000/imagecodecs-encoded: pip install imagecodecs"
                if "imagecodecs" in msg and not self.codecs
                else ""
            )
            raise UserError(f"{self.src}: cannot open data/{key} ({msg}){hint}")
        raise UserError(
            f"{self.src} has no data/{key}; its data keys are {sorted(self.arrays)}; pass "
            f"{option} with those, e.g. keys={{img:image,agent_pos:proprio,action:action}}"
        )


# ------------------------------------------------------------------------------------------------
# key mappings


def _parse_mapping(keys: Mapping[str, Any]) -> list[tuple[str, str, int | None, int | None]]:
    entries = []
    for theirs, targets in keys.items():
        targets = [targets] if isinstance(targets, str) else list(targets or [])
        if not targets:
            raise UserError(f"keys maps {theirs!r} to nothing; give our key, e.g. {theirs}: image")
        for target in targets:
            m = _TARGET_RE.fullmatch(str(target))
            if not m:
                raise UserError(
                    f"keys: {target!r} (for {theirs!r}) is not a store key (like image, proprio, "
                    "action, state, image_wrist, optionally with columns: proprio[0:2])"
                )
            name, a, b = m.group(1), m.group(2), m.group(3)
            sliced = m.group(2) is not None
            entries.append(
                (
                    str(theirs),
                    name,
                    int(a) if sliced and a else None,
                    int(b) if sliced and b else None,
                )
            )
    return entries


def _auto_mapping(source: _Source) -> tuple[str, dict[str, Any]]:
    names = set(source.arrays) | set(source.unreadable)
    if "action" not in names:
        raise UserError(
            f"cannot guess the key mapping of {source.src}: it has no data/action (keys: "
            f"{sorted(names)}); pass keys={{<their key>: <our key>, ...}}, e.g. "
            "keys={img:image,agent_pos:proprio,act:action}"
        )
    if names & {"image", "proprio"}:
        return "robo_s2", {k: k for k in sorted(source.arrays)}  # our own layout: every array
    if {"img", "state"} <= names and source.arrays.get("state") is not None:
        if tuple(source.arrays["state"].shape[1:]) == (5,):
            return "pusht", {"img": "image", "state": ["proprio[0:2]", "state"], "action": "action"}
    if "agentview_image" in names and set(_ROBOMIMIC_PROPRIO) <= names:
        mapping: dict[str, Any] = {"agentview_image": "image"}
        mapping.update({k: "proprio" for k in _ROBOMIMIC_PROPRIO})
        mapping["action"] = "action"
        return "robomimic", mapping
    image = next((k for k in _IMAGE_CANDIDATES if k in names), None)
    proprio = next((k for k in _PROPRIO_CANDIDATES if k in names), None)
    if image is None or proprio is None:
        raise UserError(
            f"cannot guess the key mapping of {source.src} (data keys: {sorted(names)}); pass "
            "keys={<their key>: <our key>, ...}, e.g. keys={img:image,agent_pos:proprio,"
            "action:action}"
        )
    return "generic", {image: "image", proprio: "proprio", "action": "action"}


def _column_slice(width: int, a: int | None, b: int | None, where: str) -> slice:
    sl = slice(a, b)
    start, stop, _ = sl.indices(width)
    if stop <= start:
        raise UserError(f"keys: columns [{a}:{b}] of {where} (width {width}) select nothing")
    return slice(start, stop)


def import_dp(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    keys: Mapping[str, Any] | None = None,
    env_id: str | None = None,
    skip_bad: bool = False,
    zarr_format: int = 3,
    on_episode: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Import a diffusion_policy zarr (directory or ``.zarr.zip``) into the demo store ``out``.

    ``keys`` maps their keys to ours (see the module docstring); ``None`` picks a preset, ``"all"``
    the preset plus every other array under its own name.
    ``env_id`` names the foreign env in ``attrs["env"]["id"]`` (default: from the preset/source).
    """
    src_path = Path(src).expanduser().resolve()
    try:
        source = _Source(src_path)
        try:
            return _import(
                source, Path(out).expanduser(), keys, env_id, skip_bad, zarr_format, on_episode
            )
        finally:
            source.close()
    except UserError as e:
        raise finish_error(e) from None


def _import(
    source: _Source,
    out: Path,
    keys: Mapping[str, Any] | None,
    env_id: str | None,
    skip_bad: bool,
    zarr_format: int,
    on_episode: Callable[[ImportResult], None] | None,
) -> ImportResult:
    src = source.src
    preset, mapping = _choose_mapping(source, keys)
    entries = _parse_mapping(mapping)
    if "action" not in {e[1] for e in entries}:
        raise UserError(
            f"keys={mapping} maps nothing to action; add their action array, e.g. action: action"
        )
    targets, semantics = _group_targets(source, entries)
    attrs = _import_attrs(source, preset, mapping, entries, targets, semantics, env_id)
    not_taken, changed = _what_changes(source, entries, targets)
    config = {
        "format": "dp",
        "src": str(src),
        "src_bytes": path_size(src),
        "n_episodes": int(source.ends.size),
        "keys": mapping,
    }
    ep_names = [f"episode_{i}" for i in range(source.ends.size)]
    result = ImportResult(
        src=str(src), out=str(out), format="dp", n_source=len(ep_names), not_taken=not_taken,
        changed=changed, take_with="keys=all, or name them in keys={...}",
    )  # fmt: skip
    return ingest(
        out, config=config, attrs=attrs, names=ep_names,
        load=partial(_load_episode, source, targets), result=result, zarr_format=zarr_format,
        skip_bad=skip_bad, on_episode=on_episode,
    )  # fmt: skip


def _choose_mapping(source: _Source, keys: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(preset, their key -> our key(s)): the given ``keys``, or a preset guessed from source
    (with ``all``, plus every other array under its own name)."""
    if keys is None or (isinstance(keys, str) and keys == "auto"):
        return _auto_mapping(source)
    if isinstance(keys, str) and keys == "all":
        preset, mapping = _auto_mapping(source)
        taken = {t for v in mapping.values() for t in ([v] if isinstance(v, str) else v)}
        for name in sorted(set(source.arrays) | set(source.unreadable)):
            if name in mapping:
                continue
            arr = source.arrays.get(name)
            is_frames = arr is not None and arr.ndim == 4 and arr.shape[-1] == 3
            ours = name if not is_frames or is_image_key(name) else f"image_{name}"
            if ours in taken:
                raise UserError(
                    f"keys=all: data/{name} would become {ours!r}, which the preset already "
                    f"fills; pass keys={{...}} naming a store key for it"
                )
            mapping[name] = ours
            taken.add(ours)
        return preset, mapping
    if not isinstance(keys, Mapping):
        raise UserError(
            f"keys={keys!r} must map their keys to ours, e.g. "
            "keys={img:image,agent_pos:proprio,action:action}"
        )
    return "custom", {str(k): v for k, v in keys.items()}


def _group_targets(
    source: _Source, entries: list[tuple[str, str, int | None, int | None]]
) -> tuple[dict[str, list[tuple[str, slice | None]]], dict[str, list[str]]]:
    """(our key -> [(their key, columns)], our key -> column names), in first-appearance order."""
    src = source.src
    targets: dict[str, list[tuple[str, slice | None]]] = {}
    semantics: dict[str, list[str]] = {}
    for theirs, ours, a, b in entries:
        arr = source.require(theirs)
        row = tuple(arr.shape[1:])
        if is_image_key(ours):
            if ours in targets or a is not None or b is not None:
                raise UserError(f"keys: image {ours!r} needs exactly one array, without columns")
            if len(row) != 3 or row[-1] != 3:
                raise UserError(
                    f"{src}: data/{theirs} is {arr.dtype} {(arr.shape[0], *row)}, not images "
                    f"(T,H,W,3); map it to a low-dim key, not {ours!r}"
                )
            targets[ours] = [(theirs, None)]
            continue
        width = int(np.prod(row)) if row else 1
        cols = column_names(theirs, row)
        sl = None
        if a is not None or b is not None:
            sl = _column_slice(width, a, b, f"data/{theirs}")
            cols = cols[sl]
        targets.setdefault(ours, []).append((theirs, sl))
        semantics.setdefault(ours, []).extend(cols)
    return targets, semantics


def _import_attrs(
    source: _Source,
    preset: str,
    mapping: dict[str, Any],
    entries: list[tuple[str, str, int | None, int | None]],
    targets: dict[str, list[tuple[str, slice | None]]],
    semantics: dict[str, list[str]],
    env_id: str | None,
) -> dict[str, Any]:
    """The imported store's attributes; a robo_s2 export gets its own attributes back."""
    from envs.cube_pick import camera_of

    src = source.src
    base: dict[str, Any] = {}
    src_attrs = dict(source.root.attrs.asdict())
    from_robo_s2 = "robo_s2_version" in src_attrs and preset == "robo_s2"
    if from_robo_s2:
        dropped = (*BOOKKEEPING_ATTRS, PENDING_ATTR, "robo_s2_export")
        base = {k: v for k, v in src_attrs.items() if k not in dropped}
    names_in_store = sorted(set(source.arrays) | set(source.unreadable))
    mapped = {e[0] for e in entries}
    image_targets = [k for k in targets if is_image_key(k)]
    first_image = source.arrays[targets["image"][0][0]] if "image" in targets else None
    if preset == "pusht":
        semantics.update(
            proprio=["agent_x", "agent_y"], state=list(PUSHT_STATE), action=["target_x", "target_y"]
        )
    default_env = {
        "pusht": "diffusion_policy:pusht",
        "robomimic": "diffusion_policy:robomimic",
    }.get(preset, f"diffusion_policy:{src.name.split('.')[0]}")
    attrs: dict[str, Any] = {
        "source": f"diffusion_policy zarr {src}",
        "env": {"id": env_id or default_env, "foreign": True, "format": "diffusion_policy"},
        "control_hz": 10 if preset == "pusht" else None,
        "action_semantics": semantics.get("action"),
        "proprio_semantics": semantics.get("proprio"),
        "state_semantics": semantics.get("state"),
        "cameras": [camera_of(k) for k in image_targets],
        "image_keys": {camera_of(k): k for k in image_targets},
        "image_shape": list(first_image.shape[1:]) if first_image is not None else None,
        "diffusion_policy": {
            "preset": preset,
            "keys": mapping,
            "unmapped": [k for k in names_in_store if k not in mapped],
            "n_episodes": int(source.ends.size),
            # the source's own root attributes (JSON already): export writes them back
            "root_attrs": {} if from_robo_s2 else src_attrs,
        },
    }
    if from_robo_s2:
        attrs = {**attrs, **base, "diffusion_policy": attrs["diffusion_policy"]}
        attrs["source"] = (
            f"diffusion_policy zarr {src} (exported by robo_s2 from {base.get('source')})"
        )
    return attrs


def _lowdim_dtype(ours: str, src: np.dtype) -> type:
    """What a low-dim source array becomes: float32, except ``state`` keeps its float64."""
    return np.float64 if ours == "state" and src == np.float64 else np.float32


def _what_changes(
    source: _Source,
    entries: list[tuple[str, str, int | None, int | None]],
    targets: dict[str, list[tuple[str, slice | None]]],
) -> tuple[list[str], list[str]]:
    """(the source arrays the import leaves out, the dtype and shape changes it makes)."""
    mapped = {e[0] for e in entries}
    not_taken = [
        array_brief(f"data/{k}", a.shape, a.dtype)
        for k, a in sorted(source.arrays.items())
        if k not in mapped
    ]
    not_taken += [f"data/{k} (unreadable: {msg})" for k, msg in sorted(source.unreadable.items())]
    changed = []
    for ours, parts in targets.items():
        if is_image_key(ours):
            change = dtype_change(f"data/{parts[0][0]}", source.arrays[parts[0][0]].dtype, np.uint8)
            changed += [change] if change else []
            continue
        for theirs, sl in parts:
            arr = source.arrays[theirs]
            change = dtype_change(f"data/{theirs}", arr.dtype, _lowdim_dtype(ours, arr.dtype))
            if change:
                changed.append(change)
            flat = len(parts) > 1 or sl is not None or ours in FLAT_KEYS
            if flat and arr.ndim > 2:
                changed.append(f"data/{theirs} {tuple(arr.shape[1:])} -> columns of {ours}")
    return not_taken, changed


def _load_episode(
    source: _Source, targets: dict[str, list[tuple[str, slice | None]]], name: str
) -> dict[str, np.ndarray]:
    """The store episode of the source's ``episode_<i>``, its arrays mapped onto our keys."""
    ends = source.ends
    i = int(name.rsplit("_", 1)[1])
    s, e = (int(ends[i - 1]) if i else 0), int(ends[i])
    where = f"{name} of {source.src}"
    ep: dict[str, np.ndarray] = {}
    for ours, parts in targets.items():
        cols = []
        for theirs, sl in parts:
            try:
                x = source.arrays[theirs][s:e]
            except Exception as exc:  # codec or I/O errors from a corrupt chunk
                raise UserError(
                    f"cannot read data/{theirs} of {where} ({type(exc).__name__}: "
                    f"{brief_error(exc)}); the store is truncated or corrupt"
                ) from None
            if is_image_key(ours):
                ep[ours] = as_image(x, f"{where}: data/{theirs}")
                continue
            dtype = _lowdim_dtype(ours, x.dtype)
            whole = len(parts) == 1 and sl is None and ours not in FLAT_KEYS
            y = as_lowdim(x, f"{where}: data/{theirs}", dtype=dtype, flatten=not whole)
            cols.append(y[:, sl] if sl is not None else y)
        if cols:
            ep[ours] = np.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
    return ep


# ------------------------------------------------------------------------------------------------
# export


def _blosc(dtype: np.dtype) -> Any:
    from numcodecs import Blosc

    shuffle = Blosc.SHUFFLE if np.dtype(dtype).itemsize > 1 else Blosc.NOSHUFFLE
    return Blosc(cname="zstd", clevel=3, shuffle=shuffle)


def export_dp(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    keys: Mapping[str, str] | None = None,
    overwrite: bool = False,
    on_episode: Callable[[ExportResult], None] | None = None,
) -> ExportResult:
    """Write the store as a diffusion_policy zarr v2 at ``out`` (a ``.zarr.zip`` if it ends in .zip).

    ``keys`` renames our arrays (``{image: img}``); the rest keep their names.
    """
    import zarr

    from robo_s2.data.store import DemoStore

    start = time.perf_counter()
    out = Path(out).expanduser()
    s = DemoStore.open(store, mode="r")
    if s.n_episodes == 0:
        raise UserError(f"{s.path} holds no episodes; nothing to export")
    names = _export_names(s, keys)
    check_export_target(out, overwrite)
    as_zip = out.name.endswith(".zip")
    fmt = "dp (zarr v2 zip)" if as_zip else "dp (zarr v2)"
    result = ExportResult(
        store=str(s.path), out=str(out), format=fmt, layout=names, total_episodes=s.n_episodes
    )
    tag = uuid.uuid4().hex[:8]
    tmp_dir = out.parent / f".{out.name}.tmp-{tag}"
    tmp_zip = out.parent / f".{out.name}.tmpzip-{tag}"
    try:
        root = zarr.open_group(str(tmp_dir), mode="w-", zarr_format=2)
        came_with = mapping_of(mapping_of(s.attrs.get("diffusion_policy")).get("root_attrs"))
        shadowed = sorted(set(came_with) & set(s.attrs))
        if shadowed:
            result.notes.append(
                f"root attributes {shadowed} hold robo_s2's values; the source's own are kept "
                "under diffusion_policy.root_attrs"
            )
        root.attrs.put(
            {**came_with, **s.attrs, "robo_s2_export": {"from": str(s.path), "keys": names}}
        )
        dst = _create_data_arrays(root, s, names)
        ends = s.episode_ends
        _copy_episodes(s, dst, ends, result, on_episode)
        _write_episode_ends(root, ends)
        if as_zip:
            _zip_dir(tmp_dir, tmp_zip)
            replace_path(tmp_zip, out)
        else:
            replace_path(tmp_dir, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_zip.unlink(missing_ok=True)
    result.bytes = path_size(out)
    result.seconds = time.perf_counter() - start
    return result


def _export_names(s: Any, keys: Mapping[str, str] | None) -> dict[str, str]:
    """Our key -> the array name it gets in the export (``keys`` renames, checked)."""
    rename = {str(k): str(v) for k, v in (keys or {}).items()}
    unknown = sorted(set(rename) - set(s.keys()))
    if unknown:
        raise UserError(f"keys renames {unknown}, which {s.path} lacks (its keys: {s.keys()})")
    names = {k: rename.get(k, k) for k in s.keys()}
    if len(set(names.values())) != len(names):
        raise UserError(f"keys={rename} gives two arrays the same name")
    for theirs in names.values():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", theirs):
            raise UserError(f"keys: {theirs!r} is not a valid array name")
    return names


def _create_data_arrays(root: Any, s: Any, names: dict[str, str]) -> dict[str, Any]:
    """The empty ``data/<name>`` arrays of the export, by our key, shaped for all frames."""
    data = root.create_group("data")
    dst = {}
    for ours, theirs in names.items():
        src_arr = s.array(ours)
        rows = max(1, min(int(src_arr.chunks[0]), s.n_frames))
        dst[ours] = data.create_array(
            theirs,
            shape=(s.n_frames, *src_arr.shape[1:]),
            chunks=(rows, *src_arr.shape[1:]),
            dtype=src_arr.dtype,
            compressors=_blosc(src_arr.dtype),
            fill_value=0,
        )
    return dst


def _copy_episodes(
    s: Any,
    dst: dict[str, Any],
    ends: np.ndarray,
    result: ExportResult,
    on_episode: Callable[[ExportResult], None] | None,
) -> None:
    for i in range(s.n_episodes):
        sl = s.episode_slice(i)
        for ours, arr in dst.items():
            arr[sl] = s.array(ours)[sl]
        result.n_episodes += 1
        result.n_frames = int(ends[i])
        if on_episode is not None:
            on_episode(result)


def _write_episode_ends(root: Any, ends: np.ndarray) -> None:
    meta = root.create_group("meta")
    ends_arr = meta.create_array(
        "episode_ends",
        shape=ends.shape,
        chunks=(max(1, min(ends.size, 4096)),),
        dtype="int64",
        compressors=_blosc(np.dtype(np.int64)),
        fill_value=0,
    )
    ends_arr[:] = ends


def _zip_dir(directory: Path, zip_path: Path) -> None:
    """Store the files under ``directory`` uncompressed in ``zip_path`` (a zarr ZipStore layout)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(directory).as_posix())


def import_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`import_dp`'s options from ``robo-s2 import``'s config (``configs/import.yaml``)."""
    return {"keys": cfg["keys"], "env_id": cfg["env_id"]}


def export_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`export_dp`'s options from ``robo-s2 export``'s config (``configs/export.yaml``)."""
    return {"keys": cfg["keys"], "overwrite": bool(cfg["overwrite"])}
