"""LeRobotDataset (Hugging Face lerobot, codebase v3.0; v2.1 read too) <-> robo_s2 demo stores.

Their layout (a directory): ``meta/info.json`` (``codebase_version``, ``fps``, ``features`` with
``dtype``/``shape``/``names``, totals, ``data_path``/``video_path`` templates), ``meta/stats.json``,
``meta/tasks.parquet`` (index: the task string, column ``task_index``), ``meta/episodes/chunk-*/
file-*.parquet`` (one row per episode: ``length``, ``tasks``, ``dataset_from_index``/
``dataset_to_index``, the data file and, per video feature, the video file and the episode's
``from_timestamp``/``to_timestamp`` in it), and ``data/chunk-*/file-*.parquet`` (one row per frame:
the features plus ``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``).
Camera features of dtype ``image`` are PNG bytes inside the data parquet; those of dtype ``video``
are mp4 files holding many episodes one after another. v2.1 keeps ``meta/episodes.jsonl``,
``meta/tasks.jsonl``, one parquet and one mp4 per episode.

Mapping: ``observation.images.<cam>`` -> ``image`` (the first selected camera) and ``image_<cam>``;
``observation.state`` -> ``proprio``; ``action`` -> ``action``; ``observation.environment_state``
-> ``state``; ``fps`` <-> ``attrs["control_hz"]``; feature ``names`` <-> ``attrs["<key>_semantics"]``;
each episode's tasks <-> ``attrs["episode_tasks"]``. An export also writes ``meta/robo_s2.json``
(our key, dtype and shape of every feature, and the store's attributes), which an import of it
reads back, so a store round-trips exactly (images too with ``video=false``).

Only JSON, JSON lines and parquet are read, and mp4 through PyAV: nothing loaded runs code.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import string
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from robo_s2.core.io import parse_json, read_json, replace_path
from robo_s2.core.schema import validated
from robo_s2.data.interop.base import (
    BOOKKEEPING_ATTRS,
    ExportResult,
    ImportResult,
    as_image,
    as_lowdim,
    brief_error,
    check_export_target,
    finish_error,
    ingest,
    mapping_of,
    path_size,
)
from robo_s2.data.store import is_image_key
from robo_s2.errors import UserError

CODEBASE_VERSION = "v3.0"
READABLE_VERSIONS = ("v2.0", "v2.1", "v3.0")
INFO_PATH = "meta/info.json"
ROBO_S2_META = "meta/robo_s2.json"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
# v2.1 (lerobot 0.3.x): one parquet and one mp4 per camera per episode, jsonl metadata
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
EXPORT_VERSIONS = ("3.0", "2.1")
CHUNKS_SIZE = 1000  # files per chunk directory
DATA_FILE_MB = 100  # a data / video file is closed once it passes this size
VIDEO_FILE_MB = 200
IMAGE_PREFIX = "observation.images."
# the columns every LeRobotDataset has besides its features
FRAME_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
# lerobot's conventional feature names for our keys (other keys keep their own name)
OUR_FEATURE = {
    "proprio": "observation.state",
    "action": "action",
    "state": "observation.environment_state",
    "reward": "next.reward",
    "done": "next.done",
}
# the keys an import takes by default (the others by keys=all or a list / mapping)
DEFAULT_IMPORT = ("proprio", "action", "state", "reward")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
# The default codec is lerobot's own (libsvtav1, with its encode_video_frames options): lerobot's
# dataset tools re-encode edited episodes to it, and merge_datasets concatenates video files
# without re-encoding, so an h264 export merged with an edited copy left 102 of 231 frames
# undecodable, an AV1 one none (docs/interop/lerobot_verify, check (c)).
DEFAULT_CODEC = "libsvtav1"
DEFAULT_CRF = {"libsvtav1": 30, "libx264": 18, "h264": 18, "libx265": 28, "hevc": 28}
CODEC_OPTIONS = {"libsvtav1": {"g": "2", "preset": "12"}}


def _pa() -> tuple[Any, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def _camera_of(key: str, attrs: Mapping[str, Any]) -> str:
    """The camera name of our image key (``image`` is the store's first camera)."""
    inverse = {v: k for k, v in mapping_of(attrs.get("image_keys")).items()}
    if key in inverse:
        return str(inverse[key])
    if key == "image":
        cams = attrs.get("cameras")
        return str(cams[0]) if isinstance(cams, list) and cams else "front"
    return key[len("image_") :]


def _names_of(value: Any, width: int) -> list[str] | None:
    """A feature's ``names`` as a flat list of ``width`` column names, when it says them."""
    if isinstance(value, Mapping) and len(value) == 1:
        value = next(iter(value.values()))
    if isinstance(value, list) and len(value) == width and all(isinstance(v, str) for v in value):
        return list(value)
    return None


# ------------------------------------------------------------------------------------------------
# reading a LeRobotDataset


@dataclass
class _Episode:
    index: int
    length: int
    tasks: list[str]
    data_file: Path
    start: int  # global index of the episode's first frame
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # feature -> (file, t0)


def _checked_episode_row(row: Any, video_keys: list[str], where: Path) -> dict[str, Any]:
    """An episode-list row with the fields the import reads typed and in range (pydantic)."""
    context = f"{where}: the episode list is corrupt"
    fix = "the dataset is corrupt: download or export it again"
    checked = validated(_EpisodeRow, row, context, fix).model_dump(by_alias=True)
    for key in video_keys:
        span = {
            f: row.get(f"videos/{key}/{f}")
            for f in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
        }
        checked.update(
            {
                f"videos/{key}/{f}": v
                for f, v in validated(_VideoSpan, span, context, fix)
                if v is not None
            }
        )
    return {**row, **checked}


class _EpisodeRow(BaseModel):
    """What the import reads of a v3.0 ``meta/episodes`` row (other columns pass)."""

    episode_index: int = Field(ge=0)
    length: int = Field(ge=1)
    tasks: list[str] | None = None
    data_chunk: int = Field(ge=0, alias="data/chunk_index")
    data_file: int = Field(ge=0, alias="data/file_index")
    start: int = Field(ge=0, alias="dataset_from_index")
    stop: int = Field(ge=0, alias="dataset_to_index")


class _VideoSpan(BaseModel):
    chunk_index: int = Field(ge=0)
    file_index: int = Field(ge=0)
    from_timestamp: float = Field(ge=0, allow_inf_nan=False)
    to_timestamp: float | None = Field(default=None, allow_inf_nan=False)


def _read_json(path: Path, what: str) -> Any:
    return read_json(path, what, "the dataset is corrupt: download or export it again")


def _read_jsonl(path: Path, row: type[BaseModel]) -> list[dict[str, Any]]:
    """The rows of a v2.1 ``meta/*.jsonl`` file, each checked against ``row``."""
    if not path.is_file():
        raise UserError(
            f"{path} is missing; a v2.1 LeRobotDataset lists its episodes and tasks there"
        )
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise UserError(f"cannot read {path} ({brief_error(e)}); it is corrupt") from None
    fix = "the dataset is corrupt: download or export it again"
    rows = []
    for i, line in enumerate(lines):
        if line.strip():
            rows.append(parse_json(line, f"{path} line {i + 1}", fix))
            validated(row, rows[-1], f"{path} line {i + 1}", fix)
    return rows


class _EpisodeLine(BaseModel):
    """What the import reads of a v2.1 ``meta/episodes.jsonl`` line (other keys pass)."""

    model_config = ConfigDict(strict=True, extra="allow")
    episode_index: Annotated[int, Field(ge=0, le=2**40)]
    length: Annotated[int, Field(ge=1, le=2**40)]
    tasks: list[str] | str | None = None


class _TaskLine(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    task_index: Annotated[int, Field(ge=0, le=2**40)]
    task: str


def _read_parquet(path: Path, what: str, columns: list[str] | None = None) -> Any:
    _, pq = _pa()
    if not path.is_file():
        raise UserError(f"{what} {path} is missing; the dataset is incomplete (download it again)")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, KeyError ...
        raise UserError(f"cannot read {what} {path} ({brief_error(e)}); it is corrupt") from None


class _Source:
    """A LeRobotDataset directory, its metadata read (v3.0, or v2.x)."""

    def __init__(self, src: Path) -> None:
        self.src = src
        if not src.is_dir():
            raise UserError(f"no such directory: {src}; pass src=<a LeRobotDataset directory>")
        info_path = src / INFO_PATH
        if not info_path.is_file():
            raise UserError(
                f"{src} has no {INFO_PATH}, so it is not a LeRobotDataset; pass its root directory "
                "(the one holding meta/ and data/)"
            )
        info = _read_json(info_path, "the dataset info")
        if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
            raise UserError(f"{info_path} has no features; the dataset info is corrupt")
        self.info = info
        self.version = str(info.get("codebase_version"))
        if self.version not in READABLE_VERSIONS:
            raise UserError(
                f"{src} is LeRobotDataset codebase_version {self.version!r}; robo-s2 reads "
                f"{', '.join(READABLE_VERSIONS)} (convert it with lerobot's conversion script first)"
            )
        try:
            self.fps = float(info["fps"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{info_path} has no numeric fps") from None
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise UserError(f"{info_path}: fps {info['fps']!r} must be a positive number")
        self.features: dict[str, dict[str, Any]] = {
            str(k): dict(v) for k, v in info["features"].items() if isinstance(v, Mapping)
        }
        meta = src / ROBO_S2_META
        self.robo_s2 = mapping_of(_read_json(meta, "robo_s2 metadata")) if meta.is_file() else {}
        self.chunks_size = int(info.get("chunks_size") or CHUNKS_SIZE)
        self._task_names: dict[int, str] | None = None
        self.episodes = self._episodes_v3() if self.version == "v3.0" else self._episodes_v2()
        if not self.episodes:
            raise UserError(f"{src} holds no episodes")
        self._table: tuple[Path, Any] | None = None
        self._video = _VideoReader()

    # metadata

    def _tasks_v3(self) -> dict[int, str]:
        table = _read_parquet(self.src / "meta/tasks.parquet", "the task list")
        cols = table.column_names
        if "task_index" not in cols:
            raise UserError(f"{self.src}/meta/tasks.parquet has no task_index column")
        names = table.column("task" if "task" in cols else "__index_level_0__").to_pylist()
        return {
            int(i): str(t)
            for i, t in zip(table.column("task_index").to_pylist(), names, strict=True)
        }

    def _episodes_v3(self) -> list[_Episode]:
        files = sorted((self.src / "meta/episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise UserError(
                f"{self.src} has no meta/episodes/chunk-*/file-*.parquet; the dataset is incomplete"
            )
        rows: list[dict[str, Any]] = []
        for f in files:
            table = _read_parquet(f, "the episode list")
            keep = [c for c in table.column_names if not c.startswith("stats/")]
            rows.extend(
                _checked_episode_row(r, self.video_keys, f) for r in table.select(keep).to_pylist()
            )
        rows.sort(key=lambda r: r["episode_index"])
        data_path = str(self.info.get("data_path") or DATA_PATH)
        video_path = str(self.info.get("video_path") or VIDEO_PATH)
        episodes = []
        spans: dict[tuple[str, Path], list[tuple[float, float, int, int]]] = {}
        for r in rows:
            try:
                data_file = self._file(
                    "data_path", data_path,
                    chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"]),
                )  # fmt: skip
                ep = _Episode(
                    index=int(r["episode_index"]),
                    length=int(r["length"]),
                    tasks=[str(t) for t in (r.get("tasks") or [])],
                    data_file=data_file,
                    start=int(r["dataset_from_index"]),
                )
                if int(r["dataset_to_index"]) - ep.start != ep.length:
                    raise UserError(
                        f"{self.src}: episode {ep.index} has length {ep.length} but spans frames "
                        f"{ep.start}..{r['dataset_to_index']}; the episode list is corrupt"
                    )
                for key in self.video_keys:
                    vfile = self._file(
                        "video_path", video_path, video_key=key,
                        chunk_index=int(r[f"videos/{key}/chunk_index"]),
                        file_index=int(r[f"videos/{key}/file_index"]),
                    )  # fmt: skip
                    t0 = float(r[f"videos/{key}/from_timestamp"])
                    ep.videos[key] = (vfile, t0)
                    t1 = float(r.get(f"videos/{key}/to_timestamp", t0 + ep.length / self.fps))
                    spans.setdefault((key, vfile), []).append((t0, t1, ep.index, ep.length))
            except KeyError as e:
                raise UserError(
                    f"{self.src}: the episode list has no {e} column; the dataset is corrupt"
                ) from None
            episodes.append(ep)
        for (key, vfile), in_file in spans.items():
            self._check_video_spans(key, vfile, sorted(in_file))
        return episodes

    def _check_video_spans(
        self, key: str, vfile: Path, spans: list[tuple[float, float, int, int]]
    ) -> None:
        """The episodes sharing one video file must tile it from t=0, each as long as its data
        rows, within half a frame: a shifted from_timestamp would take another episode's frames."""
        tol, end = 0.5 / self.fps, 0.0
        for t0, t1, index, length in spans:
            if abs(t0 - end) > tol or abs((t1 - t0) - length / self.fps) > tol:
                raise UserError(
                    f"{self.src}: episode {index}'s {key} frames span t={t0:.3f}-{t1:.3f} s of "
                    f"{vfile.name}, but its {length} data rows at {self.fps:g} fps belong at "
                    f"t={end:.3f}-{end + length / self.fps:.3f} s; the episode list and the "
                    "video disagree (the dataset is corrupt)"
                )
            end = t1

    def _file(self, key: str, template: str, **fields: Any) -> Path:
        """``meta/info.json``'s ``key`` template filled in: a path that must stay inside the
        dataset (symlinks resolved), else one line naming the key and the path."""
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            if not names <= set(fields):  # attribute or index lookups, unknown fields
                raise KeyError(", ".join(sorted(names - set(fields))))
            rel = template.format(**fields)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise UserError(
                f"{self.src}/meta/info.json: {key} {template!r} is not a path template this "
                f"importer fills ({type(exc).__name__}: {exc}); the dataset is corrupt"
            ) from None
        root = self.src.resolve()
        path = (self.src / rel).resolve()
        if not path.is_relative_to(root):
            raise UserError(
                f"{self.src}/meta/info.json: {key} {template!r} points outside the dataset "
                f"({path}); refusing to read it — fix the dataset's meta/info.json"
            )
        return path

    def _episodes_v2(self) -> list[_Episode]:
        data_path = str(
            self.info.get("data_path")
            or "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
        )
        video_path = str(
            self.info.get("video_path")
            or "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
        )
        episodes = []
        start = 0
        rows = sorted(
            _read_jsonl(self.src / "meta/episodes.jsonl", _EpisodeLine),
            key=lambda r: int(r["episode_index"]),
        )
        for r in rows:
            i = int(r["episode_index"])
            chunk = i // self.chunks_size
            tasks = r.get("tasks") or []
            ep = _Episode(
                index=i,
                length=int(r["length"]),
                tasks=[str(t) for t in (tasks if isinstance(tasks, list) else [tasks])],
                data_file=self._file("data_path", data_path, episode_chunk=chunk, episode_index=i),
                start=start,
            )
            for key in self.video_keys:
                vfile = self._file(
                    "video_path", video_path, episode_chunk=chunk, video_key=key, episode_index=i
                )
                ep.videos[key] = (vfile, 0.0)
            start += ep.length
            episodes.append(ep)
        return episodes

    def tasks(self) -> dict[int, str]:
        if self._task_names is None:
            if self.version == "v3.0":
                self._task_names = self._tasks_v3()
            else:
                rows = _read_jsonl(self.src / "meta/tasks.jsonl", _TaskLine)
                self._task_names = {int(r["task_index"]): str(r["task"]) for r in rows}
        return self._task_names

    def frame_tasks(self, rows: Any, where: str) -> list[str]:
        """An episode's tasks from its frames' ``task_index``, in order of first use: where
        lerobot's tools that rewrite the episode list without a ``tasks`` column
        (``convert_image_to_video_dataset``) leave them."""
        if "task_index" not in rows.column_names:
            return []
        names = self.tasks()
        used = dict.fromkeys(int(i) for i in rows.column("task_index").to_pylist())
        unknown = sorted(set(used) - set(names))
        if unknown:
            raise UserError(
                f"{where}: task_index {unknown[0]} is not in the dataset's task list; the "
                "dataset is corrupt"
            )
        return [names[i] for i in used]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") in ("image", "video")]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    def shape(self, key: str) -> tuple[int, ...]:
        try:
            return tuple(int(s) for s in self.features[key]["shape"])
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"{self.src}: feature {key!r} in {INFO_PATH} has no valid shape"
            ) from None

    # frames

    def _episode_table(self, ep: _Episode, columns: list[str]) -> Any:
        if self._table is None or self._table[0] != ep.data_file:
            self._table = (ep.data_file, _read_parquet(ep.data_file, "data file"))
        table = self._table[1]
        missing = [c for c in ["episode_index", *columns] if c not in table.column_names]
        if missing:
            raise UserError(
                f"{ep.data_file} has no column {missing[0]!r} though {INFO_PATH} lists it; the "
                "data file does not belong to this dataset or is corrupt"
            )
        import pyarrow.compute as pc

        rows = table.filter(pc.equal(table.column("episode_index"), ep.index))
        if rows.num_rows != ep.length:
            raise UserError(
                f"{ep.data_file} holds {rows.num_rows} frames of episode {ep.index}, but the episode "
                f"list says {ep.length}; the dataset is corrupt"
            )
        if "frame_index" in rows.column_names:
            frames = np.asarray(rows.column("frame_index").to_numpy())
            order = np.argsort(frames, kind="stable")
            if not np.array_equal(frames[order], np.arange(ep.length)):
                raise UserError(
                    f"{ep.data_file}: episode {ep.index}'s frame_index is not 0..{ep.length - 1}"
                )
            rows = rows.take(order)
        return rows

    def lowdim(self, rows: Any, key: str, where: str) -> np.ndarray:
        x = _list_column(rows.column(key).combine_chunks(), f"{where}: {key}")
        shape = self.shape(key)
        width = int(np.prod(shape)) if shape else 1
        got = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
        if got != width:
            raise UserError(
                f"{where}: {key} has {got} values per frame, but {INFO_PATH} says shape "
                f"{list(shape)}; the data does not match its info (fix info.json or the data)"
            )
        return x.reshape(x.shape[0], width)

    def images(self, rows: Any, key: str, where: str) -> np.ndarray:
        from PIL import Image

        values = rows.column(key).to_pylist()
        frames = []
        for t, v in enumerate(values):
            data = v.get("bytes") if isinstance(v, Mapping) else v
            if not isinstance(data, bytes | bytearray):
                raise UserError(
                    f"{where}: {key} frame {t} holds no image bytes (an image file path?); robo-s2 "
                    "reads images embedded in the parquet"
                )
            try:
                with Image.open(io.BytesIO(data)) as im:
                    frames.append(np.asarray(im.convert("RGB")))
            except Exception as e:
                raise UserError(
                    f"{where}: cannot decode {key} frame {t} ({brief_error(e)})"
                ) from None
        return self._check_frames(np.stack(frames), key, where)

    def video(self, ep: _Episode, key: str, where: str) -> np.ndarray:
        path, t0 = ep.videos[key]
        if not path.is_file():
            raise UserError(
                f"{where}: the video {path} of {key} is missing; download the dataset's videos "
                "too, or import without this camera (cameras=[...])"
            )
        frames = self._video.frames(path, t0, ep.length, self.fps, where)
        return self._check_frames(frames, key, where)

    def _check_frames(self, x: np.ndarray, key: str, where: str) -> np.ndarray:
        shape = self.shape(key)
        want = shape if shape[-1] == 3 else (*shape[1:], shape[0])  # (H,W,C), or (C,H,W) in info
        if tuple(x.shape[1:]) != tuple(want):
            raise UserError(
                f"{where}: {key} frames are {tuple(x.shape[1:])}, but {INFO_PATH} says shape "
                f"{list(shape)}; the data does not match its info"
            )
        return as_image(x, f"{where}: {key}")

    def close(self) -> None:
        self._video.close()
        self._table = None


class _VideoReader:
    """Frames of mp4 files decoded with PyAV, read on from where the last episode stopped."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.container: Any = None
        self.frames_iter: Any = None
        self.pending: Any = None

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
        self.path, self.container, self.frames_iter, self.pending = None, None, None, None

    def _open(self, path: Path, t0: float, where: str) -> None:
        import av

        self.close()
        try:
            self.container = av.open(str(path))
            stream = self.container.streams.video[0]
            if t0 > 0 and stream.time_base is not None:
                self.container.seek(int(t0 / stream.time_base), stream=stream, backward=True)
            self.frames_iter = self.container.decode(stream)
        except Exception as e:
            self.close()
            raise UserError(f"{where}: cannot open the video {path} ({brief_error(e)})") from None
        self.path = path

    def frames(self, path: Path, t0: float, n: int, fps: float, where: str) -> np.ndarray:
        tol = 0.5 / fps
        if self.path != path or self.pending is None or self.pending.time > t0 + tol:
            self._open(path, t0, where)
        out: list[np.ndarray] = []
        try:
            while len(out) < n:
                frame = self.pending if self.pending is not None else next(self.frames_iter)
                self.pending = None
                t = float(frame.time) if frame.time is not None else math.nan
                if t < t0 - tol:
                    continue
                want = t0 + len(out) / fps
                if abs(t - want) > tol:  # a dropped or extra frame: the frames would shift
                    raise UserError(
                        f"{where}: the video {path} has a frame at t={t:.3f} s where frame "
                        f"{len(out)} of the episode belongs (t={want:.3f} s at {fps:g} fps); its "
                        "timestamps do not match the episode list"
                    )
                out.append(frame.to_ndarray(format="rgb24"))
            self.pending = next(self.frames_iter, None)
        except StopIteration:
            raise UserError(
                f"{where}: the video {path} ends after {len(out)} of the episode's {n} frames "
                f"(from t={t0:.3f} s); it is truncated or does not match the episode list"
            ) from None
        except UserError:
            raise
        except Exception as e:  # av.error.* for a corrupt stream
            raise UserError(f"{where}: cannot decode the video {path} ({brief_error(e)})") from None
        return np.stack(out)


# ------------------------------------------------------------------------------------------------
# import


@dataclass
class _Plan:
    """Which source feature becomes which store key, with the dtype it is stored as."""

    lowdim: dict[str, tuple[str, str, list[int] | None]]  # feature -> (our key, dtype, shape)
    cameras: dict[str, str]  # feature -> our image key
    not_taken: list[str]
    changed: list[str]


def _chosen_cameras(source: _Source, cameras: Sequence[str] | None) -> list[str]:
    """The camera features ``cameras`` names (short names or full keys; None = all)."""
    cams_all = source.camera_keys
    short = {k[len(IMAGE_PREFIX) :] if k.startswith(IMAGE_PREFIX) else k: k for k in cams_all}
    if cameras is None:
        return list(cams_all)
    chosen = []
    for c in cameras:
        key = short.get(str(c), str(c))
        if key not in cams_all:
            raise UserError(
                f"cameras: {c!r} is not a camera of {source.src} (its cameras: {sorted(short)})"
            )
        chosen.append(key)
    return chosen


def _extra_features(source: _Source, keys: Any) -> dict[str, str | None] | None:
    """The features ``keys`` asks for besides the defaults, each with the store key it names (None:
    the conventional one, else its own name); None = all of them under those names."""
    if keys is None or keys == "auto":
        return {}
    if keys == "all":
        return None
    if isinstance(keys, Mapping):
        extra: dict[str, str | None] = {str(k): str(v) for k, v in keys.items()}
    elif isinstance(keys, list | tuple):
        extra = {str(k): None for k in keys}
    else:
        raise UserError(
            f"keys={keys!r}: give null, all, a list of feature names to take as well, or a "
            "mapping that renames them, e.g. keys={next.reward: reward}"
        )
    unknown = sorted(set(extra) - set(source.features))
    if unknown:
        raise UserError(
            f"keys: {unknown} are not features of {source.src} (its features: "
            f"{sorted(source.features)})"
        )
    return extra


def _plan(source: _Source, cameras: Sequence[str] | None, keys: Any) -> _Plan:
    """The feature -> store key mapping: ``meta/robo_s2.json``'s for our own exports, else ours."""
    feats = source.features
    cams_all = source.camera_keys
    chosen = _chosen_cameras(source, cameras)
    ours = mapping_of(source.robo_s2.get("features"))
    plan = _Plan({}, {}, [], [])
    for i, key in enumerate(chosen):
        # our own export taken whole: its keys come back; a selection maps as any dataset's
        recorded = mapping_of(ours.get(key)).get("key") if cameras is None else None
        short_name = key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key
        plan.cameras[key] = (
            str(recorded) if recorded else ("image" if i == 0 else f"image_{short_name}")
        )
        if feats[key].get("dtype") == "video":
            codec = mapping_of(feats[key].get("info")).get("video.codec") or "video"
            plan.changed.append(f"{key} {codec} video -> uint8 frames")
    if len(set(plan.cameras.values())) != len(plan.cameras):
        raise UserError(f"cameras={list(cameras or [])} gives two cameras the same store key")
    plan.not_taken += [
        f"{k} (a camera: list it in cameras=)" for k in cams_all if k not in plan.cameras
    ]
    extra = _extra_features(source, keys)
    conventional = {v: k for k, v in OUR_FEATURE.items()}
    for key, ft in feats.items():
        if key in FRAME_COLUMNS or ft.get("dtype") in ("image", "video"):
            continue
        if ft.get("dtype") == "string":  # text per frame: a store holds numbers only
            plan.not_taken.append(key)
            continue
        rec = mapping_of(ours.get(key))
        if rec.get("key"):
            shape = rec.get("shape")
            plan.lowdim[key] = (
                str(rec["key"]),
                str(rec.get("dtype", ft.get("dtype"))),
                list(shape) if isinstance(shape, list) else None,
            )
            continue
        ours_key = conventional.get(key) if conventional.get(key) in DEFAULT_IMPORT else None
        if extra is None or key in extra:
            named = extra.get(key) if extra is not None else None
            ours_key = named or ours_key or conventional.get(key) or key
        if ours_key is None:
            plan.not_taken.append(key)
            continue
        src_dtype = str(ft.get("dtype"))
        dtype = "float64" if ours_key == "state" and src_dtype == "float64" else "float32"
        if ours_key not in ("proprio", "action", "state") and src_dtype in (
            "int64",
            "int32",
            "bool",
        ):
            dtype = src_dtype
        if dtype != src_dtype:
            plan.changed.append(f"{key} {src_dtype} -> {dtype}")
        # a multi-axis extra keeps its per-frame shape; proprio, action and state are vectors
        shape = list(source.shape(key)) if ours_key not in ("proprio", "action", "state") else []
        if shape == [1] and OUR_FEATURE.get(ours_key) == key:  # next.reward: one number per step
            plan.lowdim[key] = (ours_key, dtype, [])
            continue
        plan.lowdim[key] = (ours_key, dtype, shape if len(shape) > 1 else None)
    taken = [v[0] for v in plan.lowdim.values()]
    if len(set(taken)) != len(taken):
        raise UserError(f"keys={keys} gives two features the same store key ({sorted(taken)})")
    if "action" not in taken:
        raise UserError(
            f"{source.src} has no action feature (features: {sorted(feats)}); robo-s2 demos need actions"
        )
    return plan


def import_lerobot(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    cameras: Sequence[str] | None = None,
    keys: Any = None,
    env_id: str | None = None,
    skip_bad: bool = False,
    zarr_format: int = 3,
    on_episode: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Import a LeRobotDataset directory (v3.0 or v2.1) into the demo store ``out``.

    ``cameras`` picks and orders the cameras (``front`` or ``observation.images.front``; the first
    becomes ``image``; ``None``: all, in the dataset's order). ``keys`` takes more features under
    their own names (``next.reward`` as ``reward``, ``next.done`` as ``done``): ``all``, a list
    (``[next.done]``), or a mapping that renames (``{next.reward: rew}``). ``env_id`` names the
    foreign env.
    """
    src_path = Path(src).expanduser().resolve()
    try:
        source = _Source(src_path)
        try:
            return _import(
                source,
                Path(out).expanduser(),
                cameras,
                keys,
                env_id,
                skip_bad,
                zarr_format,
                on_episode,
            )
        finally:
            source.close()
    except UserError as e:
        raise finish_error(e) from None


def _import(
    source: _Source,
    out: Path,
    cameras: Sequence[str] | None,
    keys: Any,
    env_id: str | None,
    skip_bad: bool,
    zarr_format: int,
    on_episode: Callable[[ImportResult], None] | None,
) -> ImportResult:
    plan = _plan(source, cameras, keys)
    tasks = source.tasks()
    names = [f"episode_{ep.index}" for ep in source.episodes]
    by_name = {f"episode_{ep.index}": ep for ep in source.episodes}
    config = {
        "format": "lerobot",
        "src": str(source.src),
        "src_bytes": path_size(source.src),
        "n_episodes": len(names),
        "cameras": list(cameras) if cameras is not None else None,
        "keys": keys if not isinstance(keys, tuple) else list(keys),
    }
    result = ImportResult(src=str(source.src), out=str(out), format="lerobot", n_source=len(names))
    result.not_taken, result.changed = list(plan.not_taken), list(plan.changed)

    def load(name: str) -> dict[str, np.ndarray]:
        return _load_episode(source, plan, by_name[name])

    def commit_attrs(done: list[str]) -> dict[str, Any]:
        return {"episode_tasks": [by_name[n].tasks for n in done]}

    return ingest(
        out, config=config, attrs=_import_attrs(source, plan, tasks, env_id), names=names,
        load=load, commit_attrs=commit_attrs, result=result, zarr_format=zarr_format,
        skip_bad=skip_bad, on_episode=on_episode,
    )  # fmt: skip


def _import_attrs(
    source: _Source, plan: _Plan, tasks: dict[int, str], env_id: str | None
) -> dict[str, Any]:
    info = source.info
    feats = source.features
    by_key = {v[0]: k for k, v in plan.lowdim.items()}

    def semantics(our_key: str) -> list[str] | None:
        feature = by_key.get(our_key)
        if feature is None:
            return None
        shape = source.shape(feature)
        return _names_of(feats[feature].get("names"), int(np.prod(shape)) if shape else 1)

    cams = {
        k[len(IMAGE_PREFIX) :] if k.startswith(IMAGE_PREFIX) else k: v
        for k, v in plan.cameras.items()
    }
    first = next(iter(plan.cameras), None)
    image_shape = None
    if first is not None:
        shape = list(source.shape(first))
        image_shape = shape if shape[-1] == 3 else [*shape[1:], shape[0]]
    fps = source.fps
    attrs: dict[str, Any] = {
        "source": f"LeRobotDataset {info.get('codebase_version')} {source.src}",
        "env": {
            "id": env_id or f"lerobot:{info.get('robot_type') or source.src.name}",
            "foreign": True,
            "format": "lerobot",
        },
        "control_hz": int(fps) if fps == int(fps) else fps,
        "action_semantics": semantics("action"),
        "proprio_semantics": semantics("proprio"),
        "state_semantics": semantics("state"),
        "cameras": list(cams),
        "image_keys": cams,
        "image_shape": image_shape,
        "lerobot": {
            "codebase_version": info.get("codebase_version"),
            "robot_type": info.get("robot_type"),
            "fps": fps,
            "features": {k: v[0] for k, v in plan.lowdim.items()} | plan.cameras,
            "tasks": [tasks[i] for i in sorted(tasks)],
            "not_taken": plan.not_taken,
        },
    }
    stored = mapping_of(source.robo_s2.get("attrs"))
    if stored:  # our own export: its store attributes come back
        dropped = (*BOOKKEEPING_ATTRS, "episode_tasks")
        attrs = {
            **attrs,
            **{k: v for k, v in stored.items() if k not in dropped},
            "lerobot": attrs["lerobot"],
        }
        attrs["source"] = (
            f"LeRobotDataset {source.src} (exported by robo_s2 from {stored.get('source')})"
        )
    return attrs


def _list_column(col: Any, what: str) -> np.ndarray:
    """A parquet column as ``(frames, *per-frame shape)``: a number per frame, or a list per frame,
    or lists of lists (LeRobot's multi-axis features), each level of one length in every row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n, dims = len(col), []
    while (
        pa.types.is_list(col.type)
        or pa.types.is_large_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
    ):
        lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False))
        if lengths.size and (
            lengths.min() != lengths.max() or np.isnan(lengths.astype(float)).any()
        ):
            raise UserError(f"{what} has rows of different lengths")
        dims.append(int(lengths[0]) if lengths.size else 0)
        col = col.flatten()
    values = np.asarray(col.to_numpy(zero_copy_only=False))
    return values.reshape(n, *dims)


def _load_episode(source: _Source, plan: _Plan, ep: _Episode) -> dict[str, np.ndarray]:
    where = f"episode {ep.index} of {source.src}"
    inline = [k for k in plan.cameras if source.features[k].get("dtype") == "image"]
    rows = source._episode_table(ep, [*plan.lowdim, *inline])
    if not ep.tasks:
        ep.tasks = source.frame_tasks(rows, where)
    out: dict[str, np.ndarray] = {}
    for feature, (key, dtype, shape) in plan.lowdim.items():
        x = source.lowdim(rows, feature, where)
        if np.dtype(dtype).kind == "f":
            y = as_lowdim(x, f"{where}: {feature}", dtype=np.dtype(dtype))
        else:
            y = x.astype(np.dtype(dtype))
        out[key] = y.reshape(y.shape[0], *shape) if shape is not None else y
    for feature, key in plan.cameras.items():
        if feature in inline:
            out[key] = source.images(rows, feature, where)
        else:
            out[key] = source.video(ep, feature, where)
    return out


# ------------------------------------------------------------------------------------------------
# export


class _RollingParquet:
    """Parquet files written row group by row group, a new file once one passes ``limit_mb``."""

    def __init__(self, root: Path, template: str, limit_mb: int) -> None:
        self.root, self.template, self.limit = root, template, limit_mb * 1024 * 1024
        self.chunk = self.file = 0
        self.writer: Any = None
        self.written = 0

    def write(self, table: Any) -> tuple[int, int]:
        """Append ``table``; the (chunk, file) index it went to."""
        _, pq = _pa()
        if self.writer is not None and self.written >= self.limit:
            self.writer.close()
            self.writer, self.written = None, 0
            self.file += 1
            if self.file >= CHUNKS_SIZE:
                self.chunk, self.file = self.chunk + 1, 0
        if self.writer is None:
            path = self.root / self.template.format(chunk_index=self.chunk, file_index=self.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(path, table.schema)
        self.writer.write_table(table)
        self.written += int(table.nbytes)
        return self.chunk, self.file

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _RollingVideo:
    """One camera's mp4 files (PyAV), episodes one after another, a new file past ``limit_mb``."""

    def __init__(
        self, root: Path, key: str, fps: int, codec: str, crf: int, limit_mb: int,
        template: str = VIDEO_PATH,
    ) -> None:  # fmt: skip
        self.root, self.key, self.fps, self.codec, self.crf = root, key, fps, codec, crf
        self.template = template
        self.limit = limit_mb * 1024 * 1024
        self.chunk = self.file = 0
        self.container: Any = None
        self.stream: Any = None
        self.n_frames = 0  # in the open file
        self.bytes = 0

    def _open(self, height: int, width: int) -> None:
        import av

        path = self.root / self.template.format(
            video_key=self.key, chunk_index=self.chunk, file_index=self.file,
            episode_chunk=self.chunk, episode_index=self.file,
        )  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        options = dict(CODEC_OPTIONS.get(self.codec, {}))
        if self.codec in DEFAULT_CRF:
            options["crf"] = str(self.crf)
        self.stream = self.container.add_stream(self.codec, rate=self.fps, options=options)
        self.stream.width, self.stream.height = width, height
        even = height % 2 == 0 and width % 2 == 0
        if not even and self.codec == "libsvtav1":  # AV1 here takes 4:2:0 only
            raise UserError(
                f"{self.key}: {height}x{width} frames have an odd side, which libsvtav1 cannot "
                "encode; pass codec=libx264 (4:4:4) or video=false (PNG)"
            )
        self.stream.pix_fmt = "yuv420p" if even else "yuv444p"
        if self.codec == "mpeg4":
            self.stream.bit_rate = 8_000_000
        self.n_frames = 0
        self.bytes = 0

    def add_episode(self, frames: np.ndarray) -> tuple[int, int, float, float]:
        """Encode an episode's frames; (chunk, file, from_timestamp, to_timestamp) in that file."""
        import av

        if self.container is not None and self.bytes >= self.limit:
            self.close()
            self.file += 1
            if self.file >= CHUNKS_SIZE:
                self.chunk, self.file = self.chunk + 1, 0
        if self.container is None:
            self._open(int(frames.shape[1]), int(frames.shape[2]))
        start = self.n_frames
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.n_frames
            for packet in self.stream.encode(frame):
                self.bytes += packet.size
                self.container.mux(packet)
            self.n_frames += 1
        return self.chunk, self.file, start / self.fps, self.n_frames / self.fps

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = None

    def info(self, height: int, width: int) -> dict[str, Any]:
        return _video_info(self.codec, self.fps, height, width)


class _Stats:
    """Per-episode min/max/mean/std/quantiles (per column; per channel for images, in [0, 1]) and
    their dataset-wide aggregate, both as lerobot computes them: integer and bool columns keep
    their type in min/max, and the dataset's quantiles are the episodes' weighted by frame count
    (``aggregate_feature_stats``)."""

    def __init__(self, image: bool, shape: list[int] | None = None) -> None:
        self.image = image
        self.shape = shape or [1]  # a low-dim feature's per-frame shape: its stats have it too
        self.count = 0  # frames
        self.rows = 0  # vectors summed (frames, or pixels for images)
        self.sum: np.ndarray | None = None
        self.sq: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self.quantiles: dict[str, np.ndarray] = {}  # frame-weighted sums of episode quantiles

    def update(self, x: np.ndarray) -> dict[str, Any]:
        """Add an episode's frames; that episode's own stats (as lists for the episode table)."""
        raw = x.reshape(-1, x.shape[-1]) if self.image else x.reshape(x.shape[0], -1)
        v = raw.astype(np.float64) / 255.0 if self.image else raw.astype(np.float64)
        lo, hi = raw.min(axis=0), raw.max(axis=0)
        if self.image:
            lo, hi = lo / 255.0, hi / 255.0
        qs = {f"q{int(qv * 100):02d}": np.quantile(v, qv, axis=0) for qv in QUANTILES}
        s, q = v.sum(axis=0), (v * v).sum(axis=0)
        if self.sum is None or self.sq is None or self.min is None or self.max is None:
            self.sum, self.sq, self.min, self.max = s, q, lo, hi
        else:
            self.sum, self.sq = self.sum + s, self.sq + q
            self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)
        n = int(x.shape[0])
        for k, value in qs.items():
            self.quantiles[k] = self.quantiles.get(k, 0.0) + value * n
        self.count += n
        self.rows += int(v.shape[0])
        ep = {
            "min": self._shaped(lo), "max": self._shaped(hi),
            "mean": self._shaped(v.mean(axis=0)), "std": self._shaped(v.std(axis=0)),
        }  # fmt: skip
        ep.update({k: self._shaped(value) for k, value in qs.items()})
        ep["count"] = [n]
        return ep

    def result(self) -> dict[str, Any]:
        if self.sum is None or self.sq is None or self.min is None or self.max is None:
            raise ValueError("no frames were added")
        mean = self.sum / self.rows
        std = np.sqrt(np.maximum(self.sq / self.rows - mean * mean, 0.0))
        res: dict[str, Any] = {
            "min": self._shaped(self.min), "max": self._shaped(self.max),
            "mean": self._shaped(mean), "std": self._shaped(std),
            "count": [self.count],
        }  # fmt: skip
        res.update({k: self._shaped(total / self.count) for k, total in self.quantiles.items()})
        return res

    def _shaped(self, v: np.ndarray) -> Any:
        if self.image:
            return v.reshape(-1, 1, 1).tolist()
        return v.reshape(self.shape).tolist() if len(self.shape) > 1 else v.tolist()


def _axes(shape: list[int]) -> list[int]:
    """A low-dim feature's per-frame shape as LeRobot's info.json states it ([1] for a scalar)."""
    return [int(d) for d in shape] if shape else [1]


@dataclass
class _Feature:
    key: str  # ours
    name: str  # theirs
    kind: str  # "video", "image" or "lowdim"
    dtype: str  # ours
    shape: list[int]  # ours, per step
    synthetic: bool = False  # written for LeRobot's readers, not a key of the store


def _episode_done(n: int) -> np.ndarray:
    """``next.done`` for a store without a ``done`` array: true on each episode's last frame, as
    lerobot's own sim datasets mark it."""
    done = np.zeros(n, dtype=bool)
    done[-1] = True
    return done


def _export_features(s: Any) -> list[_Feature]:
    feats = []
    taken: set[str] = set(FRAME_COLUMNS)
    for key in s.keys():
        arr = s.array(key)
        shape = [int(d) for d in arr.shape[1:]]
        if is_image_key(key):
            name, kind = IMAGE_PREFIX + _camera_of(key, s.attrs), "image"
        else:
            name, kind = OUR_FEATURE.get(key, key), "lowdim"
        if name in taken:
            name = f"robo_s2.{key}"
        taken.add(name)
        feats.append(_Feature(key, name, kind, str(np.dtype(arr.dtype)), shape))
    if not any(f.key == "action" for f in feats):
        raise UserError(f"{s.path} has no action array; a LeRobotDataset needs one")
    if "done" not in s.keys() and OUR_FEATURE["done"] not in taken:
        feats.append(_Feature("done", OUR_FEATURE["done"], "lowdim", "bool", [], synthetic=True))
    return feats


def _episode_tasks(s: Any, task: str | None) -> list[list[str]]:
    if task:
        return [[str(task)]] * s.n_episodes
    per_episode = s.attrs.get("episode_tasks")
    if isinstance(per_episode, list) and len(per_episode) == s.n_episodes:
        if all(
            isinstance(t, list) and t and all(isinstance(x, str) for x in t) for t in per_episode
        ):
            return [list(t) for t in per_episode]
    one = s.attrs.get("task")
    if isinstance(one, str) and one:
        return [[one]] * s.n_episodes
    env = mapping_of(s.attrs.get("env"))
    return [[f"demonstration in {env.get('id') or 'an unknown env'}"]] * s.n_episodes


def _fps_of(s: Any, fps: float | None) -> int:
    value = fps if fps is not None else s.attrs.get("control_hz")
    if value is None:
        raise UserError(
            f"{s.path} does not record its control rate (attrs control_hz); pass fps=<frames per "
            "second of the demos>"
        )
    f = float(value)
    if f <= 0 or f != int(f):
        raise UserError(f"a LeRobotDataset needs a whole-number fps, not {f:g}; pass fps=<int>")
    return int(f)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _hf_features(feats: list[_Feature], video: bool, legacy: bool) -> dict[str, Any]:
    """The ``datasets`` features of a data parquet, as its writer embeds them in the schema's
    ``huggingface`` metadata: what a plain ``load_dataset("parquet")`` (lerobot 0.3's loader)
    needs to decode an image column. ``legacy``: ``Sequence`` as datasets 3.x names a list."""
    kind = "Sequence" if legacy else "List"
    out: dict[str, Any] = {}
    for f in feats:
        if f.kind == "image":
            if not video:
                out[f.name] = {"_type": "Image"}
            continue
        node: dict[str, Any] = {"dtype": "bool" if f.dtype == "bool" else f.dtype, "_type": "Value"}
        axes = _axes(f.shape)
        if axes != [1]:
            for size in reversed(axes):
                node = {"feature": node, "length": size, "_type": kind}
        out[f.name] = node
    for k, dt in zip(FRAME_COLUMNS, ("float32", "int64", "int64", "int64", "int64"), strict=True):
        out[k] = {"dtype": dt, "_type": "Value"}
    return out


def _frame_table(
    feats: list[_Feature], ep: dict[str, np.ndarray], video: bool, start: int, i: int, fps: int,
    task_index: int, legacy: bool = False,
) -> Any:  # fmt: skip
    pa, _ = _pa()
    n = next(iter(ep.values())).shape[0]
    cols: dict[str, Any] = {}
    for f in feats:
        x = ep[f.key]
        if f.kind == "image":
            if video:
                continue
            structs = [{"bytes": _png(img), "path": None} for img in x]
            cols[f.name] = pa.array(
                structs, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            )
            continue
        flat = x.reshape(n, -1)
        if flat.shape[1] == 1:
            cols[f.name] = pa.array(flat[:, 0])
        else:  # a list per frame; a multi-axis feature nests them, as LeRobot stores it
            column = pa.array(flat.reshape(-1))
            for size in reversed(_axes(f.shape)):
                column = pa.FixedSizeListArray.from_arrays(column, size)
            cols[f.name] = column
    frames = np.arange(n, dtype=np.int64)
    cols["timestamp"] = pa.array((frames / fps).astype(np.float32))
    cols["frame_index"] = pa.array(frames)
    cols["episode_index"] = pa.array(np.full(n, i, dtype=np.int64))
    cols["index"] = pa.array(start + frames)
    cols["task_index"] = pa.array(np.full(n, task_index, dtype=np.int64))
    hf = {"info": {"features": _hf_features(feats, video, legacy)}}
    return pa.table(cols).replace_schema_metadata({b"huggingface": json.dumps(hf).encode()})


def _tasks_table(tasks: list[str]) -> Any:
    """``meta/tasks.parquet``: the task strings as the pandas index (what lerobot reads back)."""
    pa, _ = _pa()
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "task": pa.array(tasks, pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def export_lerobot(
    store: str | os.PathLike,
    out: str | os.PathLike,
    *,
    video: bool = True,
    codec: str = DEFAULT_CODEC,
    crf: int | None = None,
    fps: float | None = None,
    task: str | None = None,
    version: str = "3.0",
    overwrite: bool = False,
    on_episode: Callable[[ExportResult], None] | None = None,
) -> ExportResult:
    """Write the store as a LeRobotDataset v3.0 (or, ``version="2.1"``, v2.1) directory at ``out``.

    Cameras become mp4 videos (``codec``, ``crf``: None = the codec's default, 30 for libsvtav1
    and 18 for libx264) or, with ``video=False``, lossless PNG ``image`` features inside the data
    parquet. ``fps`` defaults to the store's ``control_hz``; ``task`` (one
    task for every episode) to the store's ``episode_tasks`` / ``task`` attributes.
    """
    from robo_s2.data.store import DemoStore

    start_time = time.perf_counter()
    out = Path(out).expanduser()
    s = DemoStore.open(store, mode="r")
    if s.n_episodes == 0:
        raise UserError(f"{s.path} holds no episodes; nothing to export")
    version = str(version).lstrip("v")
    if version not in EXPORT_VERSIONS:
        raise UserError(
            f"version={version!r}: robo-s2 writes LeRobotDataset {' or '.join(EXPORT_VERSIONS)}"
        )
    feats = _export_features(s)
    rate = _fps_of(s, fps)
    ep_tasks = _episode_tasks(s, task)
    if video:
        import av

        if codec not in av.codecs_available:
            raise UserError(
                f"codec={codec!r} is not available in this PyAV build; use libsvtav1, libx264 "
                "or mpeg4"
            )
    crf = DEFAULT_CRF.get(codec, 0) if crf is None else int(crf)
    check_export_target(out, overwrite)
    result = ExportResult(
        store=str(s.path), out=str(out), format="lerobot", total_episodes=s.n_episodes,
        layout={f.key: f.name for f in feats},
    )  # fmt: skip
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        write = _write_dataset if version == "3.0" else _write_dataset_v21
        write(tmp, s, feats, rate, ep_tasks, video, codec, crf, result, on_episode)
        replace_path(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if version != "3.0":
        result.notes.append(f"LeRobotDataset v{version} (lerobot 0.3.x reads it)")
    source = "fps" if fps is not None else "the store's control_hz"
    result.notes.append(f"fps {rate} (from {source})")
    n_tasks = len({t for ts in ep_tasks for t in ts})
    named = "" if task else "; task= names one for every episode"
    result.notes.append(f"{n_tasks} task(s), e.g. {ep_tasks[0][0]!r}{named}")
    if video and any(f.kind == "image" for f in feats):
        result.notes.append(
            f"cameras as {codec} mp4{f' (crf {crf})' if codec in DEFAULT_CRF else ''}: lossy; "
            "video=false keeps them exact as PNG"
        )
    result.bytes = path_size(out)
    result.seconds = time.perf_counter() - start_time
    return result


def _write_dataset(
    root: Path, s: Any, feats: list[_Feature], fps: int, ep_tasks: list[list[str]], video: bool,
    codec: str, crf: int, result: ExportResult, on_episode: Callable[[ExportResult], None] | None,
) -> None:  # fmt: skip
    pa, pq = _pa()
    tasks = list(dict.fromkeys(t for ts in ep_tasks for t in ts))
    task_ids = {t: i for i, t in enumerate(tasks)}
    data = _RollingParquet(root, DATA_PATH, DATA_FILE_MB)
    videos = {
        f.name: _RollingVideo(root, f.name, fps, codec, crf, VIDEO_FILE_MB)
        for f in feats
        if f.kind == "image" and video
    }
    stats_keys = [f.name for f in feats] + list(FRAME_COLUMNS)
    shapes = {f.name: _axes(f.shape) for f in feats}
    stats = {k: _Stats(k.startswith(IMAGE_PREFIX), shapes.get(k, [1])) for k in stats_keys}
    episodes: list[dict[str, Any]] = []
    start = 0
    try:
        for i in range(s.n_episodes):
            ep = s.episode(i)
            n = int(next(iter(ep.values())).shape[0])
            if any(f.synthetic for f in feats):
                ep = {**ep, "done": _episode_done(n)}
            table = _frame_table(feats, ep, video, start, i, fps, task_ids[ep_tasks[i][0]])
            chunk, file = data.write(table)
            row: dict[str, Any] = {
                "episode_index": i,
                "tasks": ep_tasks[i],
                "length": n,
                "data/chunk_index": chunk,
                "data/file_index": file,
                "dataset_from_index": start,
                "dataset_to_index": start + n,
            }
            for f in feats:
                if f.name in videos:
                    c, fi, t0, t1 = videos[f.name].add_episode(ep[f.key])
                    row.update({
                        f"videos/{f.name}/chunk_index": c, f"videos/{f.name}/file_index": fi,
                        f"videos/{f.name}/from_timestamp": t0, f"videos/{f.name}/to_timestamp": t1,
                    })  # fmt: skip
            for k in stats_keys:
                values = (
                    ep[next(f.key for f in feats if f.name == k)]
                    if k not in FRAME_COLUMNS
                    else np.asarray(table.column(k).to_numpy())
                )
                for stat, v in stats[k].update(values).items():
                    row[f"stats/{k}/{stat}"] = v
            row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
            episodes.append(row)
            start += n
            result.n_episodes, result.n_frames = i + 1, start
            if on_episode is not None:
                on_episode(result)
    finally:
        data.close()
        for v in videos.values():
            v.close()
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(episodes), root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    )
    pq.write_table(_tasks_table(tasks), root / "meta/tasks.parquet")
    (root / "meta/stats.json").write_text(
        json.dumps({k: st.result() for k, st in stats.items()}, indent=2)
    )
    _write_info(root, s, feats, video, videos, fps, start, tasks)


def _write_dataset_v21(
    root: Path, s: Any, feats: list[_Feature], fps: int, ep_tasks: list[list[str]], video: bool,
    codec: str, crf: int, result: ExportResult, on_episode: Callable[[ExportResult], None] | None,
) -> None:  # fmt: skip
    """LeRobotDataset v2.1: per episode a data parquet, an mp4 per camera, a line in
    ``meta/episodes.jsonl`` and ``meta/episodes_stats.jsonl`` (min/max/mean/std/count, as
    lerobot 0.3 computes them); ``meta/tasks.jsonl``, ``meta/stats.json``, ``meta/info.json``."""
    _, pq = _pa()
    tasks = list(dict.fromkeys(t for ts in ep_tasks for t in ts))
    task_ids = {t: i for i, t in enumerate(tasks)}
    cams = [f for f in feats if f.kind == "image" and video]
    stats_keys = [f.name for f in feats] + list(FRAME_COLUMNS)
    shapes = {f.name: _axes(f.shape) for f in feats}
    stats = {k: _Stats(k.startswith(IMAGE_PREFIX), shapes.get(k, [1])) for k in stats_keys}
    (root / "meta").mkdir()
    episodes, episode_stats = [], []
    start = 0
    for i in range(s.n_episodes):
        ep = s.episode(i)
        n = int(next(iter(ep.values())).shape[0])
        if any(f.synthetic for f in feats):
            ep = {**ep, "done": _episode_done(n)}
        chunk = i // CHUNKS_SIZE
        table = _frame_table(feats, ep, video, start, i, fps, task_ids[ep_tasks[i][0]], True)
        data_file = root / V21_DATA_PATH.format(episode_chunk=chunk, episode_index=i)
        data_file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, data_file)
        for f in cams:
            writer = _RollingVideo(root, f.name, fps, codec, crf, VIDEO_FILE_MB, V21_VIDEO_PATH)
            writer.chunk, writer.file = chunk, i
            try:
                writer.add_episode(ep[f.key])
            finally:
                writer.close()
        ep_stats: dict[str, Any] = {}
        for k in stats_keys:
            values = (
                ep[next(f.key for f in feats if f.name == k)]
                if k not in FRAME_COLUMNS
                else np.asarray(table.column(k).to_numpy())
            )
            ep_stats[k] = {
                stat: v for stat, v in stats[k].update(values).items() if not stat.startswith("q")
            }
        episodes.append({"episode_index": i, "tasks": ep_tasks[i], "length": n})
        episode_stats.append({"episode_index": i, "stats": ep_stats})
        start += n
        result.n_episodes, result.n_frames = i + 1, start
        if on_episode is not None:
            on_episode(result)

    def jsonl(name: str, rows: list[dict[str, Any]]) -> None:
        (root / "meta" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    jsonl("episodes.jsonl", episodes)
    jsonl("episodes_stats.jsonl", episode_stats)
    jsonl("tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(tasks)])
    aggregate = {
        k: {stat: v for stat, v in st.result().items() if not stat.startswith("q")}
        for k, st in stats.items()
    }
    (root / "meta/stats.json").write_text(json.dumps(aggregate, indent=2))
    infos = {f.name: _video_info(codec, fps, f.shape[0], f.shape[1]) for f in cams}
    _write_info(root, s, feats, video, infos, fps, start, tasks, version="2.1")


def _video_info(codec: str, fps: int, height: int, width: int) -> dict[str, Any]:
    return {
        "video.height": height,
        "video.width": width,
        "video.codec": {"libx264": "h264", "libx265": "hevc", "libsvtav1": "av1"}.get(codec, codec),
        "video.pix_fmt": "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p",
        "video.is_depth_map": False,
        "video.fps": fps,
        "video.channels": 3,
        "has_audio": False,
    }


def _write_info(
    root: Path, s: Any, feats: list[_Feature], video: bool, videos: dict[str, Any], fps: int,
    n_frames: int, tasks: list[str], version: str = "3.0",
) -> None:  # fmt: skip
    """meta/info.json (the features and totals) and meta/robo_s2.json (our keys, for round trips)."""
    features: dict[str, Any] = {}
    for f in feats:
        if f.kind == "image":
            h, w = f.shape[0], f.shape[1]
            features[f.name] = {
                "dtype": "video" if video else "image",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
            }
            if f.name in videos:
                vinfo = videos[f.name]
                features[f.name]["info"] = vinfo if isinstance(vinfo, dict) else vinfo.info(h, w)
            continue
        width = int(np.prod(f.shape)) if f.shape else 1
        names = _names_of(s.attrs.get(f"{f.key}_semantics"), width)
        features[f.name] = {
            "dtype": "bool" if f.dtype == "bool" else f.dtype,
            "shape": _axes(f.shape),
            "names": names,
        }
    for k, dt in zip(FRAME_COLUMNS, ("float32", "int64", "int64", "int64", "int64"), strict=True):
        features[k] = {"dtype": dt, "shape": [1], "names": None}
    env = mapping_of(s.attrs.get("env"))
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": str(env.get("id") or "unknown"),
        "total_episodes": s.n_episodes,
        "total_frames": n_frames,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILE_MB,
        "video_files_size_in_mb": VIDEO_FILE_MB,
        "fps": fps,
        "splits": {"train": f"0:{s.n_episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if videos else None,
        "features": features,
    }
    if version == "2.1":
        for k in ("data_files_size_in_mb", "video_files_size_in_mb"):
            del info[k]
        info.update(
            codebase_version="v2.1",
            total_chunks=(s.n_episodes + CHUNKS_SIZE - 1) // CHUNKS_SIZE,
            total_videos=s.n_episodes * len(videos),
            data_path=V21_DATA_PATH,
            video_path=V21_VIDEO_PATH if videos else None,
        )
    (root / INFO_PATH).write_text(json.dumps(info, indent=4))
    ours = {
        "features": {
            f.name: {"key": f.key, "dtype": f.dtype, "shape": f.shape}
            for f in feats
            if not f.synthetic
        },
        "attrs": {k: v for k, v in s.attrs.items() if k not in BOOKKEEPING_ATTRS},
        "store": str(s.path),
    }
    (root / ROBO_S2_META).write_text(json.dumps(ours, indent=2))


def import_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`import_lerobot`'s options from ``robo-s2 import``'s config (``configs/import.yaml``)."""
    cameras = cfg["cameras"]
    return {
        "cameras": None if cameras in (None, "auto") else list(cameras),
        "keys": cfg["keys"],
        "env_id": cfg["env_id"],
    }


def export_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`export_lerobot`'s options from ``robo-s2 export``'s config (``configs/export.yaml``)."""
    return {
        "video": bool(cfg["video"]),
        "codec": str(cfg["codec"]),
        "crf": None if cfg["crf"] is None else int(cfg["crf"]),
        "fps": None if cfg["fps"] is None else float(cfg["fps"]),
        "task": None if cfg["task"] is None else str(cfg["task"]),
        "version": str(cfg["version"]),
        "overwrite": bool(cfg["overwrite"]),
    }
