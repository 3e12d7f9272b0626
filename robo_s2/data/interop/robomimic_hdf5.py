"""robomimic HDF5 datasets <-> robo_s2 demo stores.

robomimic's layout (robomimic 0.3, robosuite datasets)::

    data/                    attrs: total (frames), env_args (JSON: env_name, type, env_kwargs)
      demo_<i>/              attrs: num_samples; demos are ordered by the integer i
        actions (N,A)  rewards (N,)  dones (N,)  states (N,S)
        obs/<key>            images uint8 (N,H,W,3), low-dim float (N,D)
        next_obs/<key>       (optional) the observation after each step
    mask/<filter>            demo names (bytes), e.g. train / valid

Import maps chosen keys into a store: ``image`` (``image_key``), ``image_<camera>`` (each of
``extra_image_keys``; ``robot0_eye_in_hand_image`` becomes ``image_robot0_eye_in_hand``), ``proprio``
(``proprio_keys`` concatenated in order), ``action`` (``action_key``) and ``state`` (``states``,
keeping its float64). Low-dim data becomes float32. The store records the source's ``env_args``,
the demo names in order, the filter masks as episode indices and which proprio columns hold which
key (``attrs["robomimic"]``). ``next_obs``, per-demo ``model_file`` XML and the rewards/dones (unless
``extra_keys`` asks for them) are not imported; the result lists every dataset left out and every
dtype change (``ImportResult.not_taken`` / ``changed``). ``extra_keys=all`` takes every dataset of
the demos: the other cameras as ``image_<camera>``, ``rewards`` / ``dones`` as ``reward`` / ``done``
(the keys ``robo-s2 collect`` writes), the other datasets under their path with ``/`` as ``_``
(``obs/object`` -> ``obs_object``, ``next_obs/object`` -> ``next_obs_object``), keeping their
per-step shape (and integer dtypes); only ``next_obs`` images stay out (the next frame is the next
step's ``obs`` image, and export rebuilds ``next_obs`` from it).

Export writes a file that robomimic's ``SequenceDataset`` reads: obs key ``proprio`` (or the original
keys, split back, for a store imported from robomimic), ``image`` as ``agentview_image``,
``image_<camera>`` as ``<camera>_image``, ``state`` as ``states``, every key imported from a
robomimic dataset back at the path it came from (``attrs["robomimic"]["extra_keys"]``), ``next_obs``
(the recorded ones where the store holds them, else each obs shifted by one step, the last
repeated) and ``rewards``/``dones`` (the store's ``reward``/``done`` if present, else zeros, with
``dones`` 1 at the last step). A root-level dataset ``robo_s2_meta`` (ignored by robomimic) keeps
the store's attributes and the key layout, so importing the file back (with the ``auto`` defaults)
restores the store exactly; ``extra_keys=all`` then export gives every dataset back at its path.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from robo_s2.core.io import replace_path
from robo_s2.core.schema import short_repr, validated
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
    is_foreign,
    mapping_of,
    path_size,
)
from robo_s2.data.windows import split_episodes, store_split
from robo_s2.errors import UserError

AUTO = "auto"
ALL = "all"  # extra_keys=all: every dataset of the demos
# per-demo datasets with a conventional store key (the others: their path with / as _)
CONVENTIONAL = {"rewards": "reward", "dones": "done"}
ROBOSUITE_IMAGE_KEY = "agentview_image"
ROBOSUITE_PROPRIO_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
META_DATASET = "robo_s2_meta"  # root-level JSON written by export (robomimic never reads it)
GYM_ENV_TYPE = 2  # robomimic.envs.env_base.EnvType.GYM_TYPE
_DEMO_RE = re.compile(r"demo_(\d+)")
_READ_ERRORS = (OSError, RuntimeError, ValueError, TypeError)


# ------------------------------------------------------------------------------------------------
# reading


def _open(src: Path) -> Any:
    import h5py

    if not src.exists():
        raise UserError(f"no such file: {src}; pass src=<path to a robomimic .hdf5 file>")
    if src.is_dir():
        raise UserError(f"{src} is a directory, not a robomimic HDF5 file; pass the .hdf5 file")
    try:
        return h5py.File(src, "r")
    except _READ_ERRORS as e:
        raise UserError(
            f"{src} is not a readable HDF5 file ({brief_error(e)}); it may be truncated or "
            "corrupt: download or export it again"
        ) from None


def _demo_order(names: Sequence[str], where: str) -> list[str]:
    bad = [n for n in names if not _DEMO_RE.fullmatch(n)]
    if bad:
        raise UserError(
            f"{where} holds {bad[:5]}, which are not robomimic demo names (demo_<integer>); "
            "rename them or remove them from the file"
        )
    return sorted(names, key=lambda n: int(n[5:]))


def _demo_names(f: Any, src: Path) -> list[str]:
    import h5py

    data = f.get("data")
    if not isinstance(data, h5py.Group):
        raise UserError(
            f"{src} has no data/ group, so it is not a robomimic dataset (top-level keys: "
            f"{sorted(f.keys())})"
        )
    names = _demo_order(list(data.keys()), f"{src}: data/")
    if not names:
        raise UserError(f"{src} holds no demos (data/ is empty)")
    return names


def _masks(f: Any, src: Path) -> dict[str, list[str]]:
    import h5py

    group = f.get("mask")
    if not isinstance(group, h5py.Group):
        return {}
    out = {}
    for key in group:
        try:
            raw = np.asarray(group[key][()]).ravel()
        except _READ_ERRORS as e:
            raise UserError(f"{src}: cannot read mask/{key} ({brief_error(e)})") from None
        out[key] = [v.decode() if isinstance(v, bytes) else str(v) for v in raw.tolist()]
    return out


def _env_args(f: Any, src: Path) -> dict[str, Any]:
    raw = f["data"].attrs.get("env_args")
    if raw is None:
        return {}
    try:
        env_args = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{src}: data.attrs['env_args'] is not JSON") from None
    if not isinstance(env_args, dict):
        return {}
    fix = "the file is corrupt: download or export it again"
    validated(_EnvArgs, env_args, f"{src}: data.attrs['env_args'] is not robomimic's", fix)
    return env_args


class _EnvKwargs(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    control_freq: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    controller_configs: dict[str, Any] | None = None


class _EnvArgs(BaseModel):
    """What the import reads of robomimic's ``env_args`` (other keys pass)."""

    model_config = ConfigDict(strict=True, extra="allow")
    env_name: str | None = None
    type: int | None = None
    env_kwargs: _EnvKwargs | None = None


def _meta(f: Any) -> dict[str, Any] | None:
    if META_DATASET not in f:
        return None
    try:
        raw = f[META_DATASET][()]
        meta = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (*_READ_ERRORS, KeyError):
        return None
    return meta if isinstance(meta, dict) else None


def camera_name(obs_key: str) -> str:
    """``agentview_image`` -> ``agentview`` (a key without the suffix is kept whole)."""
    return (
        obs_key[: -len("_image")] if obs_key.endswith("_image") and obs_key != "_image" else obs_key
    )


def _action_semantics(env_args: Mapping[str, Any], key: str, dim: int) -> list[str]:
    ctrl = (env_args.get("env_kwargs") or {}).get("controller_configs") or {}
    if isinstance(ctrl, Mapping) and ctrl.get("type") == "OSC_POSE" and dim == 7:
        if ctrl.get("control_delta", True):
            return [
                "eef_dx",
                "eef_dy",
                "eef_dz",
                "eef_drot_x",
                "eef_drot_y",
                "eef_drot_z",
                "gripper",
            ]
        return ["eef_x", "eef_y", "eef_z", "eef_rot_x", "eef_rot_y", "eef_rot_z", "gripper"]
    return column_names(key, (dim,))


def _as_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence | np.ndarray) or hasattr(value, "__iter__"):
        return [str(v) for v in value]
    raise UserError(f"{name}={value!r} must be a list of keys, e.g. {name}=[a,b]")


def _resolve_layout(
    meta_layout: Mapping[str, Any] | None,
    image_key: str | None,
    extra_image_keys: Any,
    proprio_keys: Any,
    extra_keys: Any,
) -> tuple[str | None, list[str], list[str], dict[str, str]]:
    """The ``auto`` choices: what a robo_s2 export recorded, else robosuite's keys."""
    layout = meta_layout or {}
    images = dict(layout.get("images") or {})
    if image_key == AUTO:
        image_key = images.get("image") if layout else ROBOSUITE_IMAGE_KEY
    if extra_image_keys == AUTO:
        extra_image_keys = [v for k, v in images.items() if k != "image"]
    if proprio_keys == AUTO:
        proprio_keys = (
            [p[0] for p in layout.get("proprio", [])] if layout else list(ROBOSUITE_PROPRIO_KEYS)
        )
    if extra_keys == AUTO:
        extra_keys = dict(layout.get("extra") or {})
    if extra_keys is None:
        extra_keys = {}
    if not isinstance(extra_keys, Mapping):
        raise UserError(
            f"extra_keys={extra_keys!r} must map dataset paths to store keys, e.g. "
            "extra_keys={rewards:reward,dones:done}"
        )
    extra = {str(k): str(v) for k, v in extra_keys.items()}
    return (
        image_key,
        _as_list(extra_image_keys, "extra_image_keys"),
        _as_list(proprio_keys, "proprio_keys"),
        extra,
    )


def _missing(group: Any, key: str, where: str, option: str) -> UserError:
    keys = sorted(group.keys())
    return UserError(
        f"{where} has no {key!r}; the keys there are {keys}; pass {option} with one of them"
    )


def import_robomimic(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    image_key: str | None = AUTO,
    extra_image_keys: Sequence[str] | str = AUTO,
    proprio_keys: Sequence[str] | str = AUTO,
    action_key: str = "actions",
    extra_keys: Mapping[str, str] | str | None = AUTO,
    filter_key: str | None = None,
    env_id: str | None = None,
    skip_bad: bool = False,
    zarr_format: int = 3,
    on_episode: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Import a robomimic HDF5 file into the demo store ``out`` (resuming an interrupted import).

    ``auto`` keys are robosuite's (``agentview_image``; ``robot0_eef_pos``, ``robot0_eef_quat``,
    ``robot0_gripper_qpos``; no extra cameras), or what robo_s2 recorded when it exported the file.
    ``image_key=None`` imports no images (robomimic's low-dim datasets). ``filter_key`` imports only
    the demos of that mask. ``extra_keys`` maps more per-demo datasets (``rewards``, ``obs/object``)
    to store keys. ``env_id`` overrides the foreign env's name (default: ``env_args.env_name``).
    """
    src_path = Path(src).expanduser().resolve()
    try:
        f = _open(src_path)
        try:
            return _import(
                f, src_path, Path(out).expanduser(), image_key, extra_image_keys, proprio_keys,
                action_key, extra_keys, filter_key, env_id, skip_bad, zarr_format, on_episode,
            )  # fmt: skip
        finally:
            f.close()
    except UserError as e:
        raise finish_error(e) from None


@dataclass(frozen=True)
class _DemoKeys:
    """Which datasets of a robomimic demo become which store keys."""

    image_keys: dict[str, str]  # our key -> obs key
    proprio: list[str]  # obs keys, concatenated in order
    action_key: str
    state_key: str | None
    extras: dict[str, str]  # dataset path -> our key


def _import(
    f: Any,
    src: Path,
    out: Path,
    image_key: str | None,
    extra_image_keys: Any,
    proprio_keys: Any,
    action_key: str,
    extra_keys: Any,
    filter_key: str | None,
    env_id: str | None,
    skip_bad: bool,
    zarr_format: int,
    on_episode: Callable[[ImportResult], None] | None,
) -> ImportResult:
    all_names = _demo_names(f, src)
    masks = _masks(f, src)
    env_args = _env_args(f, src)
    meta = _meta(f)
    meta_layout = meta.get("layout") if meta else None
    take_all = isinstance(extra_keys, str) and extra_keys == ALL
    image_key, extra_images, proprio, extras = _resolve_layout(
        meta_layout, image_key, extra_image_keys, proprio_keys, AUTO if take_all else extra_keys
    )
    if image_key in ("", "null", "none", "None"):
        image_key = None
    names = _select_demos(src, all_names, masks, filter_key)
    if take_all:
        extra_images, extras = _take_all(
            f["data"][names[0]], image_key, extra_images, proprio, action_key, extras
        )
    first, obs, state_key = _check_first_demo(
        f, src, names[0], image_key, extra_images, proprio, action_key, extras
    )
    image_keys = _image_key_map(image_key, extra_images)
    keys = _DemoKeys(image_keys, proprio, action_key, state_key, extras)
    layout_cols = _proprio_layout(obs, proprio)
    action_dim = int(np.prod(first[action_key].shape[1:])) if first[action_key].ndim > 1 else 1
    image_shape = list(obs[image_key].shape[1:]) if image_key else None
    clash = sorted(set(extras.values()) & {*image_keys, "action", "proprio", "state"})
    if clash:
        raise UserError(f"extra_keys maps onto store keys that are already taken: {clash}")

    robomimic_info = _robomimic_info(env_args, keys, layout_cols, filter_key)
    attrs = _import_attrs(src, env_args, env_id, keys, layout_cols, action_dim, image_shape)
    attrs["robomimic"] = robomimic_info
    resolved = (image_key, extra_images, proprio, extras)
    if meta and isinstance(meta.get("attrs"), Mapping) and meta_layout:
        if _resolve_layout(meta_layout, AUTO, AUTO, AUTO, AUTO) == resolved:
            attrs = _restored_attrs(attrs, meta["attrs"], robomimic_info, src)
    config = _import_config(src, len(all_names), resolved, action_key, filter_key)
    result = ImportResult(
        src=str(src), out=str(out), format="robomimic", n_source=len(names),
        take_with="" if take_all else "extra_keys=all, or extra_keys={<dataset path>: <store key>}",
    )  # fmt: skip
    result.not_taken, result.changed = _what_changes(first, keys)
    return ingest(
        out, config=config, attrs=attrs, names=names, load=partial(_load_demo, f, src, keys),
        commit_attrs=partial(_demo_attrs, robomimic_info, masks), result=result,
        zarr_format=zarr_format, skip_bad=skip_bad, on_episode=on_episode,
    )  # fmt: skip


def _select_demos(
    src: Path, all_names: list[str], masks: dict[str, list[str]], filter_key: str | None
) -> list[str]:
    """The demos to import: all of them, or those of the mask ``filter_key`` (in file order)."""
    if filter_key is None:
        return all_names
    if filter_key not in masks:
        raise UserError(
            f"{src} has no filter key {filter_key!r}; its masks are {sorted(masks) or 'none'}"
            " (or leave filter_key=null to import every demo)"
        )
    chosen = set(masks[filter_key])
    unknown = sorted(chosen - set(all_names))
    if unknown:
        raise UserError(f"{src}: mask/{filter_key} names demos not in data/: {unknown[:5]}")
    names = [n for n in all_names if n in chosen]
    if not names:
        raise UserError(f"{src}: mask/{filter_key} is empty; choose another filter_key")
    return names


def _check_first_demo(
    f: Any,
    src: Path,
    name: str,
    image_key: str | None,
    extra_images: list[str],
    proprio: list[str],
    action_key: str,
    extras: dict[str, str],
) -> tuple[Any, Any, str | None]:
    """Check the key mapping against the demo ``name``, where the options can be named.

    Returns the demo's group, its obs/ group and the state dataset's name (None without states).
    """
    import h5py

    first = f["data"][name]
    where = f"{src}: data/{name}"
    obs = first.get("obs")
    if not isinstance(obs, h5py.Group):
        raise UserError(f"{where} has no obs/ group (keys there: {sorted(first.keys())})")
    if action_key not in first:
        raise _missing(first, action_key, where, "action_key=")
    image_obs = [k for k in obs if obs[k].ndim == 4]
    if image_key is not None and image_key not in obs:
        if not image_obs:
            raise UserError(
                f"{where}/obs has no images (obs keys: {sorted(obs.keys())}), so {image_key!r} "
                "cannot be imported; use an image dataset (e.g. robomimic's image.hdf5), or pass "
                "image_key=null to import without images"
            )
        raise _missing(obs, image_key, f"{where}/obs", "image_key=")
    for key in extra_images:
        if key not in obs:
            raise _missing(obs, key, f"{where}/obs", "extra_image_keys=[...]")
    for key in proprio:
        if key not in obs:
            raise _missing(obs, key, f"{where}/obs", "proprio_keys=[...]")
    for path in extras:
        if path not in first:
            raise UserError(
                f"{where} has no {path!r} for extra_keys; datasets there: "
                f"{sorted(first.keys())} (and obs/<key>)"
            )
    if not proprio:
        raise UserError("proprio_keys is empty; name the low-dim obs keys that form proprio")
    state_key = "states" if isinstance(first.get("states"), h5py.Dataset) else None
    return first, obs, state_key


def _datasets(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every dataset under ``group`` by its path (``obs/object``)."""
    import h5py

    out: dict[str, Any] = {}
    for name, node in group.items():
        if isinstance(node, h5py.Group):
            out.update(_datasets(node, f"{prefix}{name}/"))
        elif isinstance(node, h5py.Dataset):
            out[f"{prefix}{name}"] = node
    return out


def _is_frames(ds: Any) -> bool:
    return ds.ndim == 4 and ds.shape[-1] == 3


def _take_all(
    demo: Any,
    image_key: str | None,
    extra_images: list[str],
    proprio: list[str],
    action_key: str,
    extras: dict[str, str],
) -> tuple[list[str], dict[str, str]]:
    """``extra_keys=all``: (every camera besides ``image_key``, every other dataset -> store key)."""
    images = list(extra_images)
    extras = dict(extras)
    taken = {action_key, "states", *extras, *(f"obs/{k}" for k in (image_key, *images, *proprio))}
    for path, ds in _datasets(demo).items():
        if path in taken:
            continue
        if path.startswith("obs/") and _is_frames(ds):
            images.append(path[len("obs/") :])
        elif not _is_frames(ds):
            extras[path] = CONVENTIONAL.get(path, path.replace("/", "_"))
    return images, extras


def _what_changes(demo: Any, keys: _DemoKeys) -> tuple[list[str], list[str]]:
    """(the demo's datasets and attributes the import leaves out, the dtype changes it makes)."""
    datasets = _datasets(demo)
    taken = {keys.action_key, *keys.extras, *(f"obs/{k}" for k in keys.image_keys.values())}
    taken |= {f"obs/{k}" for k in keys.proprio} | ({keys.state_key} if keys.state_key else set())
    not_taken = [
        array_brief(path, ds.shape, ds.dtype) for path, ds in datasets.items() if path not in taken
    ]
    not_taken += [f"data/<demo>.attrs[{a}]" for a in sorted(demo.attrs) if a != "num_samples"]
    lowdim = [keys.action_key, *(f"obs/{k}" for k in keys.proprio), *keys.extras]
    changed = [
        dtype_change(p, datasets[p].dtype, np.float32)
        for p in lowdim
        if p in datasets and not (p in keys.extras and datasets[p].dtype.kind in "biu")
    ]
    changed += [
        dtype_change(f"obs/{k}", datasets[f"obs/{k}"].dtype, np.uint8)
        for k in keys.image_keys.values()
    ]
    return not_taken, [c for c in changed if c]


def _image_key_map(image_key: str | None, extra_images: list[str]) -> dict[str, str]:
    """Our image keys -> obs keys: ``image`` for ``image_key``, ``image_<camera>`` for the rest."""
    image_keys: dict[str, str] = {}
    if image_key is not None:
        image_keys["image"] = image_key
    for key in extra_images:
        ours = f"image_{camera_name(key)}"
        if ours in image_keys or key == image_key:
            raise UserError(f"extra_image_keys lists {key!r} twice (or it is image_key)")
        image_keys[ours] = key
    return image_keys


def _proprio_layout(obs: Any, proprio: list[str]) -> list[list[Any]]:
    """``[[obs key, start column, stop column, per-step shape]]`` of the proprio obs keys."""
    layout_cols, col = [], 0
    for key in proprio:
        shape = list(obs[key].shape[1:])
        width = int(np.prod(shape)) if shape else 1
        layout_cols.append([key, col, col + width, shape])
        col += width
    return layout_cols


def _import_attrs(
    src: Path,
    env_args: dict[str, Any],
    env_id: str | None,
    keys: _DemoKeys,
    layout_cols: list[list[Any]],
    action_dim: int,
    image_shape: list[int] | None,
) -> dict[str, Any]:
    """The imported store's attributes, all but ``robomimic``."""
    env_kwargs = env_args.get("env_kwargs") or {}
    env_name = env_id or env_args.get("env_name") or "unknown"
    return {
        "source": f"robomimic HDF5 {src}",
        "env": {
            "id": env_name,
            "foreign": True,
            "format": "robomimic",
            "type": env_args.get("type"),
        },
        "control_hz": env_kwargs.get("control_freq") if isinstance(env_kwargs, Mapping) else None,
        "action_semantics": _action_semantics(env_args, keys.action_key, action_dim),
        "proprio_semantics": [
            n for key, _, _, shape in layout_cols for n in column_names(key, shape)
        ],
        "state_semantics": None,
        "cameras": [camera_name(v) for v in keys.image_keys.values()],
        "image_keys": {camera_name(v): k for k, v in keys.image_keys.items()},
        "image_shape": image_shape,
    }


def _robomimic_info(
    env_args: dict[str, Any], keys: _DemoKeys, layout_cols: list[list[Any]], filter_key: str | None
) -> dict[str, Any]:
    """``attrs["robomimic"]`` before any demo is imported."""
    return {
        "env_args": env_args,
        "image_keys": keys.image_keys,
        "proprio_layout": layout_cols,
        "action_key": keys.action_key,
        "state_key": keys.state_key,
        "extra_keys": keys.extras,
        "filter_key": filter_key,
        "demos": [],
        "masks": {},
    }


def _restored_attrs(
    attrs: dict[str, Any],
    exported: Mapping[str, Any],
    robomimic_info: dict[str, Any],
    src: Path,
) -> dict[str, Any]:
    """A file robo_s2 exported, read back with its own layout: the store's attrs restored."""
    base = {k: v for k, v in exported.items() if k not in BOOKKEEPING_ATTRS}
    attrs = {**attrs, **base, "robomimic": robomimic_info}
    attrs["source"] = f"robomimic HDF5 {src} (exported by robo_s2 from {base.get('source')})"
    return attrs


def _import_config(
    src: Path,
    n_demos: int,
    resolved: tuple[str | None, list[str], list[str], dict[str, str]],
    action_key: str,
    filter_key: str | None,
) -> dict[str, Any]:
    """What identifies the import: resuming needs the same source and key mapping."""
    image_key, extra_images, proprio, extras = resolved
    return {
        "format": "robomimic",
        "src": str(src),
        "src_bytes": src.stat().st_size,
        "n_demos": n_demos,
        "image_key": image_key,
        "extra_image_keys": extra_images,
        "proprio_keys": proprio,
        "action_key": action_key,
        "extra_keys": extras,
        "filter_key": filter_key,
    }


def _demo_attrs(
    robomimic_info: dict[str, Any], masks: dict[str, list[str]], done: list[str]
) -> dict[str, Any]:
    """``attrs["robomimic"]`` once the demos ``done`` are imported (masks as episode indices)."""
    index = {n: i for i, n in enumerate(done)}
    info = dict(robomimic_info)
    info["demos"] = done
    info["masks"] = {k: [index[n] for n in v if n in index] for k, v in masks.items()}
    return {"robomimic": info}


def _load_demo(f: Any, src: Path, keys: _DemoKeys, name: str) -> dict[str, np.ndarray]:
    """The store episode of the demo ``name``: its arrays converted, checked for one length."""
    where = f"{name} of {src}"
    try:
        g = f["data"][name]
        ep, parts, lengths = _read_demo(g, where, keys)
        num_samples = g.attrs.get("num_samples")
    except _READ_ERRORS as e:
        raise UserError(
            f"cannot read {where} ({brief_error(e)}); the file is truncated or corrupt: download "
            "or export it again"
        ) from None
    if len(set(lengths.values())) > 1:
        raise UserError(
            f"{where} has arrays of different lengths ({lengths}); every array of a demo needs "
            "one row per step"
        )
    n = next(iter(lengths.values()))
    if num_samples is not None:
        value = np.asarray(num_samples)
        if value.shape != () or value.dtype.kind not in "iu":
            raise UserError(
                f"{where}.attrs['num_samples'] is {short_repr(num_samples)}, not a whole number; "
                "the file is corrupt: download or export it again"
            )
        if int(value) != n:
            raise UserError(
                f"{where} says num_samples={int(value)} but its arrays have {n} steps; the "
                "demo is inconsistent"
            )
    if parts:
        ep["proprio"] = np.concatenate(parts, axis=1)
    return ep


# a dataset may declare at most this many times the bytes it stores (gzip'd frames of a rendered
# scene shrink 3-20x, constant arrays far more, but only when small): beyond, it is refused unread
MAX_EXPANSION = 1000
SMALL_DATASET = 64 * 2**20  # bytes: datasets up to this size are read without the check


def _read(ds: Any, where: str) -> np.ndarray:
    """The whole dataset ``ds``, after checking that its declared size is backed by bytes in the
    file (a header declaring 10^9 rows over nothing is one line, not a MemoryError)."""
    declared = int(np.prod(ds.shape, dtype=np.float64) * ds.dtype.itemsize)
    if declared > SMALL_DATASET:
        stored = int(ds.id.get_storage_size())
        if declared > MAX_EXPANSION * max(stored, 1):
            raise UserError(
                f"{where}: {ds.name} declares shape {tuple(ds.shape)} ({declared / 2**30:.1f} GiB) but the "
                f"file holds {stored:,} bytes of it; the file is truncated or corrupt: download "
                "or export it again"
            )
    return ds[()]


def _read_demo(
    g: Any, where: str, keys: _DemoKeys
) -> tuple[dict[str, np.ndarray], list[np.ndarray], dict[str, int]]:
    """(episode without proprio, the proprio parts, the length of each dataset read)."""
    import h5py

    o = g.get("obs")
    if not isinstance(o, h5py.Group):
        raise UserError(f"{where} has no obs/ group (keys there: {sorted(g.keys())})")
    action_key = keys.action_key
    if action_key not in g:
        raise _missing(g, action_key, where, "action_key=")
    ep = {"action": as_lowdim(_read(g[action_key], where), f"{where}: {action_key}")}
    for ours, key in keys.image_keys.items():
        if key not in o:
            raise _missing(o, key, f"{where}: obs/", "image keys")
        ep[ours] = as_image(_read(o[key], where), f"{where}: obs/{key}")
    parts = []
    for key in keys.proprio:
        if key not in o:
            raise _missing(o, key, f"{where}: obs/", "proprio_keys=[...]")
        parts.append(as_lowdim(_read(o[key], where), f"{where}: obs/{key}"))
    lengths = {f"obs/{k}": len(p) for k, p in zip(keys.proprio, parts, strict=True)}
    lengths.update({f"obs/{keys.image_keys[k]}": len(ep[k]) for k in keys.image_keys})
    lengths[action_key] = len(ep["action"])
    state_key = keys.state_key
    if state_key is not None:
        if state_key not in g:
            raise _missing(g, state_key, where, "a file whose demos all have states")
        raw = _read(g[state_key], where)
        dtype = np.float64 if np.asarray(raw).dtype == np.float64 else np.float32
        ep["state"] = as_lowdim(raw, f"{where}: {state_key}", dtype=dtype)
        lengths[state_key] = len(ep["state"])
    for path, ours in keys.extras.items():
        if path not in g:
            raise _missing(g, path, where, "extra_keys")
        raw = _read(g[path], where)
        if raw.dtype.kind in "biu" and raw.ndim >= 1:  # dones, counters: kept as they are
            ep[ours] = np.asarray(raw)
        else:
            x = as_lowdim(raw, f"{where}: {path}", flatten=False)
            ep[ours] = x.reshape(len(x)) if raw.ndim == 1 else x  # rewards (N,) stay (N,)
        lengths[path] = len(ep[ours])
    return ep, parts, lengths


# ------------------------------------------------------------------------------------------------
# writing


def _export_layout(
    store: Any, image_key: str, proprio_key: str, split_proprio: bool
) -> tuple[dict[str, str], list[list[Any]], dict[str, str]]:
    """(images: our key -> obs key, proprio: [[obs key, start, stop, shape]], extra: path -> ours)."""
    attrs = store.attrs
    rm = mapping_of(attrs.get("robomimic"))
    recorded_images = rm.get("image_keys") or {}
    keys = store.keys()
    images: dict[str, str] = {}
    for key in keys:
        if key == "image":
            obs_key = (
                image_key if image_key != AUTO else recorded_images.get(key, ROBOSUITE_IMAGE_KEY)
            )
        elif key.startswith("image_"):
            obs_key = recorded_images.get(key, f"{key[len('image_') :]}_image")
        else:
            continue
        images[key] = obs_key
    proprio: list[list[Any]] = []
    if "proprio" in keys:
        width = int(np.prod(store.array("proprio").shape[1:]))
        recorded = rm.get("proprio_layout") or []
        if (
            split_proprio
            and recorded
            and recorded[-1][2] == width
            and all(p[1] == q[2] for p, q in zip(recorded[1:], recorded[:-1], strict=False))
        ):
            proprio = [list(p) for p in recorded]
        else:
            proprio = [[proprio_key, 0, width, [width]]]
    extra: dict[str, str] = {}
    taken = {*images, "proprio", "action", "state"}
    # a key imported from robomimic goes back to the dataset path it came from
    came_from = {str(ours): str(path) for path, ours in mapping_of(rm.get("extra_keys")).items()}
    conventional = {ours: path for path, ours in CONVENTIONAL.items()}
    for key in keys:
        if key in taken:
            continue
        extra[came_from.get(key) or conventional.get(key) or f"obs/{key}"] = key
    names = [*images.values(), *(p[0] for p in proprio), *(p[4:] for p in extra if p[:4] == "obs/")]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(
            f"obs keys {dupes} would be written twice; choose other image_key/proprio_key"
        )
    return images, proprio, extra


def export_robomimic(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    image_key: str = AUTO,
    proprio_key: str = "proprio",
    split_proprio: bool = True,
    next_obs: bool = True,
    compression: str | None = "gzip",
    overwrite: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    on_episode: Callable[[ExportResult], None] | None = None,
) -> ExportResult:
    """Write the store as a robomimic HDF5 file at ``out`` (via a temporary file beside it).

    ``image_key`` names the obs key of ``image`` (``auto``: the original key of a store imported from
    robomimic, else ``agentview_image``); ``proprio`` becomes ``proprio_key``, or is split back into
    its original keys (``split_proprio``) when the store came from robomimic.

    ``mask/train`` and ``mask/valid`` are always written (robomimic's ``validate=True`` needs them):
    the store's own split when it has one (``robo_s2.data.windows.store_split``), else the seeded
    split ``robo-s2 train`` draws with the same ``val_fraction`` and seed. ``rewards`` are the
    store's recorded rewards, else sparse from the recorded success (1 at an episode's last step
    when every kept episode succeeded and ended on success), else zeros - said in ``notes``.
    """
    import time

    import h5py

    from robo_s2.data.store import DemoStore

    start = time.perf_counter()
    if compression not in (None, "gzip", "lzf"):
        raise UserError(f"compression={compression!r}: use gzip, lzf or null")
    out = Path(out).expanduser()
    s = DemoStore.open(store, mode="r")
    if "action" not in s.keys():
        raise UserError(f"{s.path} has no data/action (keys: {s.keys()}); nothing to export")
    if s.n_episodes == 0:
        raise UserError(f"{s.path} holds no episodes; nothing to export")
    check_export_target(out, overwrite)
    attrs = s.attrs
    rm = mapping_of(attrs.get("robomimic"))
    images, proprio, extra = _export_layout(s, image_key, proprio_key, split_proprio)
    env_args = rm.get("env_args") or _gym_env_args(attrs)
    demo_names = _export_demo_names(rm, s.n_episodes)
    masks, split_note = _export_masks(rm, attrs, demo_names, val_fraction, split_seed)
    layout = _layout_record(s, images, proprio, extra)
    result = ExportResult(
        store=str(s.path), out=str(out), format="robomimic", layout=layout,
        total_episodes=s.n_episodes, notes=[split_note],
    )  # fmt: skip
    sparse = "reward" not in s.keys() and _succeeded_at_last_step(attrs)
    if "reward" not in s.keys():
        result.notes.append(
            "rewards: sparse from the recorded success (1 at each episode's last step)" if sparse
            else "rewards: the store records neither rewards nor per-episode success; written as zeros"
        )  # fmt: skip
    meta = {"attrs": attrs, "layout": layout, "demos": demo_names}

    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with h5py.File(tmp, "w") as f:
            _write_hdf5(
                f, s, demo_names, env_args, masks, meta, images, proprio, extra, next_obs,
                compression, sparse, result, on_episode,
            )  # fmt: skip
        replace_path(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    result.bytes = path_size(out)
    result.seconds = time.perf_counter() - start
    return result


def _gym_env_args(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """robomimic's ``env_args`` for a store that did not come from robomimic."""
    env = mapping_of(attrs.get("env"))
    return {
        "env_name": env.get("id", "unknown"),
        "type": GYM_ENV_TYPE,
        "env_kwargs": env.get("kwargs", {}),
    }


def _export_demo_names(rm: Mapping[str, Any], n_episodes: int) -> list[str]:
    """The demo names recorded at import when they still fit the store, else ``demo_<i>``."""
    recorded = [str(n) for n in rm.get("demos") or []]
    if (
        len(recorded) == n_episodes
        and len(set(recorded)) == len(recorded)
        and all(_DEMO_RE.fullmatch(n) for n in recorded)
        and _demo_order(recorded, "") == recorded
    ):
        return recorded
    return [f"demo_{i}" for i in range(n_episodes)]


def _export_masks(
    rm: Mapping[str, Any],
    attrs: Mapping[str, Any],
    demo_names: list[str],
    val_fraction: float,
    split_seed: int,
) -> tuple[dict[str, list[str]], str]:
    """The filter masks recorded at import (episode indices) as demo names, with ``train`` and
    ``valid`` always present, and a note saying where those two came from."""
    n = len(demo_names)
    masks = {
        k: [demo_names[i] for i in v if 0 <= int(i) < n] for k, v in (rm.get("masks") or {}).items()
    }
    own = store_split(attrs, n)
    if own is not None:
        note = "mask/train, mask/valid: the store's own split"
    else:
        own = split_episodes(n, val_fraction, split_seed)
        note = (
            f"mask/train, mask/valid: a seeded split (val_fraction={val_fraction}, seed="
            f"{split_seed}; what robo-s2 train draws with data.val_fraction={val_fraction} seed={split_seed})"
        )
    masks["train"] = [demo_names[i] for i in own.train]
    masks["valid"] = [demo_names[i] for i in own.val]
    return masks, note


def _succeeded_at_last_step(attrs: Mapping[str, Any]) -> bool:
    """Whether every episode of the store is known to end at its success step: collected here
    without keeping failures, in an env that ends an episode on success."""
    collect = mapping_of(attrs.get("collect"))
    env = mapping_of(attrs.get("env"))
    return (
        not is_foreign(attrs)
        and collect.get("keep_failed") is False
        and env.get("terminate_on_success") is True
    )


def _layout_record(
    s: Any, images: dict[str, str], proprio: list[list[Any]], extra: dict[str, str]
) -> dict[str, Any]:
    """Where each store key went in the file (the result's and ``robo_s2_meta``'s ``layout``)."""
    return {
        "images": images,
        "proprio": proprio,
        "action": "actions",
        "state": "states" if "state" in s.keys() else None,
        "extra": {path: ours for path, ours in extra.items()},
    }


def _write_hdf5(
    f: Any,
    s: Any,
    demo_names: list[str],
    env_args: Mapping[str, Any],
    masks: dict[str, list[str]],
    meta: dict[str, Any],
    images: dict[str, str],
    proprio: list[list[Any]],
    extra: dict[str, str],
    next_obs: bool,
    compression: str | None,
    sparse_rewards: bool,
    result: ExportResult,
    on_episode: Callable[[ExportResult], None] | None,
) -> None:
    """Fill the open file ``f``: one demo per store episode, then the masks and the metadata."""
    data = f.create_group("data")
    data.attrs["env_args"] = json.dumps(env_args)
    for i, name in enumerate(demo_names):
        ep = s.episode(i)
        _write_demo(
            data.create_group(name), ep, images, proprio, extra, next_obs, compression,
            sparse_rewards,
        )  # fmt: skip
        result.n_episodes += 1
        result.n_frames += len(ep["action"])
        if on_episode is not None:
            on_episode(result)
    data.attrs["total"] = result.n_frames
    for key, names in masks.items():
        f.create_dataset(f"mask/{key}", data=np.array(names, dtype="S"))
    f.create_dataset(META_DATASET, data=json.dumps(meta))


def _write_demo(
    g: Any,
    ep: dict[str, np.ndarray],
    images: dict[str, str],
    proprio: list[list[Any]],
    extra: dict[str, str],
    next_obs: bool,
    compression: str | None,
    sparse_rewards: bool = False,
) -> None:
    n = len(ep["action"])
    g.attrs["num_samples"] = n
    g.create_dataset("actions", data=ep["action"])
    obs: dict[str, np.ndarray] = {}
    for ours, key in images.items():
        obs[key] = ep[ours]
    for key, a, b, shape in proprio:
        obs[key] = ep["proprio"][:, a:b].reshape(n, *shape)
    recorded_next: dict[str, np.ndarray] = {}  # next_obs the store holds (imported with it)
    for path, ours in extra.items():
        if path.startswith("obs/"):
            obs[path[4:]] = ep[ours]
        elif path.startswith("next_obs/"):
            recorded_next[path[len("next_obs/") :]] = ep[ours]
        elif path not in CONVENTIONAL:
            g.create_dataset(path, data=ep[ours])
    groups = [("obs", obs)]
    if next_obs:  # the recorded next_obs where there is one, else each obs shifted by a step
        shifted = {k: np.concatenate([v[1:], v[-1:]]) for k, v in obs.items()}
        groups.append(("next_obs", {**shifted, **recorded_next}))
    for group_name, arrays in groups:
        group = g.create_group(group_name)
        for key, x in arrays.items():
            if x.ndim == 4:
                group.create_dataset(key, data=x, chunks=(1, *x.shape[1:]), compression=compression)
            else:
                group.create_dataset(key, data=x)
    if "reward" in ep and "rewards" in extra:
        rewards = ep["reward"].reshape(n).astype(np.float64)
    else:
        rewards = np.zeros(n)
        rewards[-1] = float(sparse_rewards)
    if "done" in ep and "dones" in extra:
        dones = ep["done"].reshape(n).astype(np.int64)
    else:
        dones = np.zeros(n, dtype=np.int64)
        dones[-1] = 1
    g.create_dataset("rewards", data=rewards)
    g.create_dataset("dones", data=dones)
    if "state" in ep:
        g.create_dataset("states", data=ep["state"])


def import_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`import_robomimic`'s options from ``robo-s2 import``'s config (``configs/import.yaml``)."""
    return {
        "image_key": cfg["image_key"],
        "extra_image_keys": cfg["extra_image_keys"],
        "proprio_keys": cfg["proprio_keys"],
        "action_key": str(cfg["action_key"]),
        "extra_keys": cfg["extra_keys"],
        "filter_key": cfg["filter_key"],
        "env_id": cfg["env_id"],
    }


def export_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`export_robomimic`'s options from ``robo-s2 export``'s config (``configs/export.yaml``)."""
    return {
        "image_key": str(cfg["image_key"]) if cfg["image_key"] else "auto",
        "proprio_key": str(cfg["proprio_key"]),
        "split_proprio": bool(cfg["split_proprio"]),
        "next_obs": bool(cfg["next_obs"]),
        "compression": cfg["compression"],
        "overwrite": bool(cfg["overwrite"]),
        "val_fraction": float(cfg["val_fraction"]),
        "split_seed": int(cfg["split_seed"]),
    }
