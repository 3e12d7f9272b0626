"""What the import/export formats share: the import engine (resumable, crash-safe), array checks,
foreign-store detection and atomic export targets. The face is :mod:`robo_s2.data.interop`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robo_s2.core.entry_points import load_entry_point
from robo_s2.errors import ImportFailure, UserError

if TYPE_CHECKING:
    from robo_s2.data.store import DemoStore

# The id of robo_s2's own env (envs.ENV_ID; not imported at module level: workers that import
# this module need no gymnasium). Other registered tasks (envs.TASKS) are native too.
NATIVE_ENV_ID = "robo_s2/CubePick-v0"

# Store attributes that only describe an import in progress: never carried over from a source.
BOOKKEEPING_ATTRS = ("import", "import_progress", "created", "robo_s2_version")


# ------------------------------------------------------------------------------------------------
# foreign stores


@dataclass(frozen=True)
class Format:
    """A foreign format: its module holds ``import_<name>`` / ``export_<name>`` and
    ``import_options`` / ``export_options`` (their keywords from the command's config); loaded on
    first use (h5py, zarr, imagecodecs; pyarrow and av for lerobot)."""

    title: str
    module: str

    def function(self, name: str) -> Any:
        return load_entry_point(f"{self.module}:{name}")


# the foreign formats, by the name format= takes; the file names that say which one a path is below
FORMATS: dict[str, Format] = {
    "robomimic": Format("robomimic HDF5", "robo_s2.data.interop.robomimic_hdf5"),
    "dp": Format("diffusion_policy zarr", "robo_s2.data.interop.dp_zarr"),
    "lerobot": Format("LeRobotDataset", "robo_s2.data.interop.lerobot"),
}
HDF5_SUFFIXES = (".hdf5", ".h5", ".hdf")


def format_of(fmt: str, path: Path, reading: bool) -> str:
    """The format of ``path`` (``fmt``, or with ``auto`` from its name: robomimic for
    .hdf5/.h5/.hdf, lerobot for a directory holding meta/info.json (a LeRobotDataset), dp for
    .zarr directories and .zarr.zip archives - and, when ``reading``, any other directory). A name
    that says none is a :class:`UserError` asking for ``format=``."""
    if fmt in FORMATS:
        return fmt
    what = "a source" if reading else "an export"
    if fmt != "auto":
        raise UserError(f"format={fmt!r} is not {what} format; use auto, {' or '.join(FORMATS)}")
    if path.suffix.lower() in HDF5_SUFFIXES:
        return "robomimic"
    if is_lerobot_dir(path):
        return "lerobot"
    if path.name.endswith((".zarr", ".zip")) or (reading and path.is_dir()):
        return "dp"
    raise UserError(
        f"cannot tell the format of {path} from its name; name it .hdf5 (robomimic) or .zarr / "
        ".zarr.zip (diffusion_policy), or pass format=robomimic|dp|lerobot"
    )


def is_lerobot_dir(path: Path) -> bool:
    """Whether ``path`` is a LeRobotDataset directory (it has meta/info.json, or lerobot's task
    list: one whose info.json is missing still reads as lerobot, to say so)."""
    meta = path / "meta"
    return any((meta / name).is_file() for name in ("info.json", "tasks.parquet", "tasks.jsonl"))


def mapping_of(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping (an attribute read from a store), else an empty one."""
    return value if isinstance(value, Mapping) else {}


def _store_attrs(store: DemoStore | str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(store, Mapping):
        return dict(store)
    if isinstance(store, str | os.PathLike):
        from robo_s2.data.store import DemoStore

        return DemoStore.open(store, mode="r").attrs
    return store.attrs


def is_foreign(store: DemoStore | str | os.PathLike | Mapping[str, Any]) -> bool:
    """True when the store's demos were not recorded in robo_s2's own env.

    ``store`` is a :class:`DemoStore`, a store path, or a store's attributes. Imported stores carry
    ``attrs["env"] = {"id": <their env>, "foreign": True}``; a store without an ``env`` description
    is foreign too (nothing says our env could replay it).
    """
    env = _store_attrs(store).get("env")
    if not isinstance(env, Mapping):
        return True
    from envs import TASKS

    return bool(env.get("foreign", False)) or env.get("id") not in TASKS


def require_native_env(
    store: DemoStore | str | os.PathLike | Mapping[str, Any], what: str = "evaluate"
) -> None:
    """Raise a one-line :class:`UserError` when ``store`` is foreign (see :func:`is_foreign`)."""
    attrs = _store_attrs(store)
    if not is_foreign(attrs):
        return
    env = mapping_of(attrs.get("env"))
    where = f"env {env.get('id')!r}" if env.get("id") else "an unknown env"
    source = attrs.get("source") or "an unknown source"
    raise UserError(
        f"cannot {what}: the demos come from {where} ({source}), and robo_s2 can only run its own "
        f"MuJoCo env ({NATIVE_ENV_ID}); train on them, but evaluate policies trained on demos "
        "collected here (robo-s2 collect)"
    )


# ------------------------------------------------------------------------------------------------
# results


@dataclass
class ImportResult:
    src: str
    out: str
    format: str  # "robomimic", "dp" or "lerobot"
    n_source: int = 0  # episodes selected in the source
    n_new: int = 0
    n_total: int = 0
    n_frames: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    done_before: int = 0  # source episodes already handled when this run started
    # source keys the import did not take ("obs/object"), and how it changed the ones it took
    # ("obs/robot0_eef_pos float64 -> float32"): the import's last line states both
    not_taken: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    take_with: str = "keys=all"  # the option that takes what was not taken ("" = none does)


@dataclass
class ExportResult:
    store: str
    out: str
    format: str  # "robomimic", "dp" (zarr v2 ...) or "lerobot"
    n_episodes: int = 0  # written so far
    n_frames: int = 0
    total_episodes: int = 0  # in the store
    bytes: int = 0
    seconds: float = 0.0
    layout: dict[str, Any] = field(default_factory=dict)  # our key -> what it became
    notes: list[str] = field(default_factory=list)  # what the export chose or could not know


# ------------------------------------------------------------------------------------------------
# validation shared by the importers


def brief_error(e: BaseException) -> str:
    """The message of a library error on one line, cut to 160 characters (for a UserError)."""
    text = " ".join(str(e).split())
    return text if len(text) <= 160 else text[:157] + "..."


def as_image(x: np.ndarray, where: str) -> np.ndarray:
    """Frames as ``uint8 (T,H,W,3)``; integer-valued float/int frames in 0..255 convert exactly.

    Anything else (floats in [0, 1], channels-first, grey) is a UserError naming ``where``.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise UserError(f"{where} has dtype {x.dtype}; images must be uint8 (T,H,W,3)")
    if x.ndim != 4 or x.shape[-1] != 3:
        hint = (
            " (channels-first? images must be channels-last)"
            if x.ndim == 4 and x.shape[1] == 3
            else ""
        )
        raise UserError(f"{where} has shape {x.shape}; images must be (T,H,W,3){hint}")
    if x.dtype == np.uint8:
        return x
    if x.size:
        lo, hi = x.min(), x.max()
        exact = x.dtype.kind != "f" or bool(np.all(np.isfinite(x)) and np.all(np.round(x) == x))
        if not exact or lo < 0 or hi > 255:
            raise UserError(
                f"{where} is {x.dtype} in [{lo:g}, {hi:g}], not uint8 0..255; convert the images to "
                "uint8 first (for floats in [0,1]: (x * 255).round().astype(np.uint8))"
            )
    return x.astype(np.uint8)


def as_lowdim(
    x: np.ndarray, where: str, dtype: np.dtype | type = np.float32, flatten: bool = True
) -> np.ndarray:
    """A low-dim array as ``dtype (T, D)`` (``(T,)`` becomes ``(T,1)``; more axes are flattened,
    or with ``flatten=False`` kept: a ``(T, 9, 2)`` array stays ``(T, 9, 2)``).

    Non-numeric data and non-finite values are UserErrors naming ``where`` and the step.
    """
    x = np.asarray(x)
    if x.dtype.kind not in "biuf" or x.ndim < 1:
        raise UserError(f"{where} is {x.dtype} {x.shape}; expected numbers with a time axis")
    shape = x.shape if x.ndim > 1 and not flatten else (x.shape[0], -1)
    x = x.reshape(x.shape[0], -1)
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            t, j = (int(v) for v in np.argwhere(bad)[0])
            raise UserError(
                f"{where} has a non-finite value ({x[t, j]}) at step {t} (column {j}); fix or drop "
                "this episode"
            )
    with np.errstate(over="ignore"):
        y = x.astype(dtype)
    if not np.isfinite(y).all():
        raise UserError(f"{where} overflows {np.dtype(dtype)}; rescale it")
    return y.reshape(shape)


def array_brief(name: str, shape: Sequence[int], dtype: Any) -> str:
    """``name`` with its per-step shape and dtype, as the import's closing lines state it."""
    row = tuple(int(s) for s in shape[1:])
    return f"{name} {row} {np.dtype(dtype)}" if row else f"{name} (scalar) {np.dtype(dtype)}"


def dtype_change(name: str, src: Any, dst: Any) -> str | None:
    """``"name float64 -> float32"`` when the import stores ``name`` in another dtype, else None."""
    src, dst = np.dtype(src), np.dtype(dst)
    return None if src == dst else f"{name} {src} -> {dst}"


def column_names(key: str, shape: Sequence[int]) -> list[str]:
    """Names of the flattened columns of a per-step array of ``shape`` (``key[i]``, ``key[i,j]``)."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        return [key]
    return [f"{key}[{','.join(str(i) for i in idx)}]" for idx in np.ndindex(*shape)]


# ------------------------------------------------------------------------------------------------
# the import loop shared by both formats


def _config_mismatch(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(given))
    return [
        f"{k}: stored {stored.get(k)!r}, given {given.get(k)!r}"
        for k in keys
        if stored.get(k) != given.get(k)
    ]


def ingest(
    out: str | os.PathLike,
    *,
    config: dict[str, Any],
    attrs: dict[str, Any],
    names: list[str],
    load: Callable[[str], dict[str, np.ndarray]],
    commit_attrs: Callable[[list[str]], dict[str, Any]] | None = None,
    result: ImportResult,
    zarr_format: int = 3,
    skip_bad: bool = False,
    on_episode: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Append the source episodes ``names`` (read by ``load(name)``) to the store at ``out``.

    ``config`` identifies the import (source path and size, key mapping); an existing store at
    ``out`` must have been started by the same import, which this call then resumes after the last
    committed episode. ``commit_attrs(imported_names)`` gives attributes committed with each episode
    (e.g. robomimic's filter masks as episode indices).
    """
    config = json.loads(json.dumps(config))  # as it reads back from the store (lists, not tuples)
    out = Path(out).expanduser()
    try:
        return _ingest(
            out, config, attrs, names, load, commit_attrs, result, zarr_format, skip_bad,
            on_episode,
        )  # fmt: skip
    except ImportFailure:
        raise
    except UserError as e:  # its message says what became of out: no "nothing was written" to add
        raise ImportFailure(str(e)) from e


def finish_error(e: UserError) -> ImportFailure:
    """A setup error of an importer (raised before ``out`` was touched) says so."""
    if isinstance(e, ImportFailure):
        return e
    return ImportFailure(f"{e}; nothing was written")


def _ingest(
    out: Path,
    config: dict[str, Any],
    attrs: dict[str, Any],
    names: list[str],
    load: Callable[[str], dict[str, np.ndarray]],
    commit_attrs: Callable[[list[str]], dict[str, Any]] | None,
    result: ImportResult,
    zarr_format: int,
    skip_bad: bool,
    on_episode: Callable[[ImportResult], None] | None,
) -> ImportResult:
    from robo_s2.data.store import DemoStore

    was_empty_dir = out.is_dir() and not any(out.iterdir())
    existed = out.exists() and not was_empty_dir
    start = time.perf_counter()
    store = DemoStore.open_or_create(out, attrs={**attrs, "import": config}, format=zarr_format)
    try:
        imported, skipped, first = _resume_point(store, out, config, names)
    except BaseException:
        store.close()
        raise
    result.done_before = first
    result.n_total, result.n_frames = store.n_episodes, store.n_frames
    result.skipped = list(skipped)
    if on_episode is not None:
        on_episode(result)  # the starting point (a progress bar's total and initial count)
    try:
        _append_episodes(
            store, names, first, imported, skipped, load, commit_attrs, result, skip_bad,
            on_episode,
        )  # fmt: skip
    except BaseException as exc:
        n = _close_failed_import(store, out, was_empty_dir)
        if isinstance(exc, UserError):
            raise UserError(f"{exc}; {_failure_tail(out, n, existed)}") from None
        raise
    store.close()
    result.seconds = time.perf_counter() - start
    return result


def _resume_point(
    store: DemoStore, out: Path, config: dict[str, Any], names: list[str]
) -> tuple[list[str], list[str], int]:
    """(source episodes imported, skipped, index of the next one) of the import ``store`` holds."""
    stored = store.attrs.get("import")
    if not isinstance(stored, Mapping):
        raise UserError(
            f"{out} already holds a demo store that was not made by robo-s2 import; choose a "
            "new out= for the import (nothing was written)"
        )
    if stored != config:
        if stored.get("src") != config.get("src"):
            raise UserError(
                f"{out} is being imported from {stored.get('src')}, not {config.get('src')}; "
                f"re-run with src={stored.get('src')} to resume it, or choose a new out= "
                "(nothing was written)"
            )
        diffs = "; ".join(_config_mismatch(stored, config)[:3])
        raise UserError(
            f"{out} was started by a different import ({diffs}); re-run with the same "
            "settings to resume it, or choose a new out= (nothing was written)"
        )
    progress = dict(store.attrs.get("import_progress") or {})
    imported = [str(n) for n in progress.get("imported", [])]
    skipped = [str(n) for n in progress.get("skipped", [])]
    first = int(progress.get("next_index", 0))
    if len(imported) != store.n_episodes or not 0 <= first <= len(names):
        raise UserError(
            f"{out}: its import progress ({len(imported)} episodes imported, next source "
            f"episode {first} of {len(names)}) does not match its {store.n_episodes} episodes;"
            " the store is inconsistent: delete it and import again"
        )
    return imported, skipped, first


def _progress_attrs(names: list[str], k: int, done: list[str], bad: list[str]) -> dict[str, Any]:
    return {
        "import_progress": {
            "next_index": k,
            "next_demo": names[k] if k < len(names) else None,
            "n_source": len(names),
            "imported": done,
            "skipped": bad,
        }
    }


def _append_episodes(
    store: DemoStore,
    names: list[str],
    first: int,
    imported: list[str],
    skipped: list[str],
    load: Callable[[str], dict[str, np.ndarray]],
    commit_attrs: Callable[[list[str]], dict[str, Any]] | None,
    result: ImportResult,
    skip_bad: bool,
    on_episode: Callable[[ImportResult], None] | None,
) -> None:
    """Append ``names[first:]`` to ``store``, extending ``imported``/``skipped`` as it goes."""
    for k in range(first, len(names)):
        name = names[k]
        try:
            _append_episode(store, names, k, imported, skipped, load, commit_attrs, result.src)
        except UserError:
            if not skip_bad:
                raise
            skipped.append(name)
            store.update_attrs(_progress_attrs(names, k + 1, imported, skipped))
            result.skipped = list(skipped)
            if on_episode is not None:
                on_episode(result)
            continue
        imported.append(name)
        result.n_new += 1
        result.n_total = store.n_episodes
        result.n_frames = store.n_frames
        if on_episode is not None:
            on_episode(result)
    if store.n_episodes == 0:
        raise UserError(
            f"no episode of {result.src} could be imported ({len(skipped)} skipped as bad); "
            "run without skip_bad=true to see why"
        )


def _append_episode(
    store: DemoStore,
    names: list[str],
    k: int,
    imported: list[str],
    skipped: list[str],
    load: Callable[[str], dict[str, np.ndarray]],
    commit_attrs: Callable[[list[str]], dict[str, Any]] | None,
    src: str,
) -> None:
    """Load source episode ``names[k]`` and append it, committing the progress with it."""
    name = names[k]
    episode = load(name)
    done = [*imported, name]
    extra = commit_attrs(done) if commit_attrs else {}
    commit = {**extra, **_progress_attrs(names, k + 1, done, skipped)}
    try:
        store.append_episode(episode, attrs=commit)
    except UserError as e:
        raise UserError(f"{name} of {src}: {e}") from None


def _close_failed_import(store: DemoStore, out: Path, was_empty_dir: bool) -> int:
    """Close ``store`` after a failure, removing it if it holds no episode; its episode count."""
    n = store.n_episodes
    store.close()
    if n == 0:
        shutil.rmtree(out, ignore_errors=True)
        if was_empty_dir:
            with contextlib.suppress(OSError):
                out.mkdir()
    return n


def _failure_tail(out: Path, n: int, existed: bool) -> str:
    """What a failed import left at ``out`` (``n`` episodes), for the end of its error."""
    if n == 0:
        return "nothing was written" if not existed else f"the empty {out} was removed"
    return (
        f"{out} keeps the {n} episodes imported before it; fix the source and re-run "
        "the same command to continue (or add skip_bad=true to leave bad episodes out)"
    )


# ------------------------------------------------------------------------------------------------
# writing exports atomically


def check_export_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise UserError(
            f"{out} already exists; choose a new out= or pass overwrite=true to replace it "
            "(nothing was written)"
        )
    if not out.parent.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)


def path_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
