"""Demo store: diffusion_policy's zarr ReplayBuffer layout, with crash-safe episode appends.

Layout (readable by diffusion_policy's ``ReplayBuffer`` and vice versa)::

    <store>/             root group; its attributes hold the store's JSON description
      data/<key>         arrays concatenated over time: images uint8 (N,H,W,3), one frame per
                         chunk; low-dim (N,D) in chunks of a few thousand rows; Blosc/zstd
      meta/episode_ends  int64 (E,), exclusive end frame of every episode
      features/...       (optional, other modules) anything else beside data/ and meta/

Both zarr on-disk formats are supported: v3 (default) and v2 (``format=2``, what diffusion_policy's
pinned zarr 2.x reads).

Commit protocol of :meth:`DemoStore.append_episode` (each single file write is atomic):

1. write a ``robo_s2_pending`` marker into the root attributes recording the committed
   ``n_frames``/``n_episodes``;
2. resize every ``data/<key>`` to ``n_frames + T`` and write the new rows;
3. resize ``meta/episode_ends`` to ``n_episodes + 1`` and write the new end;
4. remove the marker (the commit point).

A crash anywhere before 4 leaves the marker: ``open(mode="a")`` rolls back (trims every data array
and ``episode_ends`` to the recorded sizes, then clears the marker; an interrupted rollback is
simply redone), ``open(mode="r")`` shows the committed view without touching anything. An
exception or Ctrl-C inside ``append_episode`` rolls back at once. Appending holds an exclusive
``flock`` on the store directory, so a second writing process is refused instead of rolling back
the first one's episode. A new store is built in a hidden temporary directory beside ``path``,
then renamed into place.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Literal, cast

import numpy as np
import zarr

from robo_s2.data.store_attrs import check_store_attrs
from robo_s2.data.windows import sequence_indices
from robo_s2.errors import UserError

MAX_EPISODES = 10_000_000  # ceiling on a store's declared episode count (its ends: 80 MB)
MAX_CHUNK_BYTES = 2**30  # ceiling on one chunk of a store array (reading a row reads its chunk)
PENDING = "robo_s2_pending"  # reserved root attribute: an append in progress (hidden from .attrs)
WINDOW_META = ("_episode", "_frame", "_valid")  # extra entries of every iter_windows() dict
LOWDIM_CHUNK_BYTES = 1 << 20
LOWDIM_MAX_CHUNK_ROWS = 4096
FRAME_CHUNK_MIN_BYTES = 1 << 16  # rows at least this large get one chunk per frame
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_READ_RETRIES = 40  # read-only opens retry while a concurrent writer is mid-append
_READ_RETRY_S = 0.02

_CORRUPT_FIX = (
    "the store is corrupt: restore it from a backup, or re-collect/re-import into a new path"
)


class _Corrupt(Exception):
    """Internal: an inconsistency between data/ and meta/ (turned into a UserError)."""


def _crash_point(stage: str) -> None:
    """No-op hook between the steps of an append; tests patch it to simulate a crash there."""


# ------------------------------------------------------------------------------------------------
# helpers


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _jsonable(attrs: Mapping[str, Any], what: str = "store attributes") -> dict[str, Any]:
    """A JSON round trip of ``attrs`` (numpy scalars/arrays, paths, OmegaConf made plain)."""
    if not isinstance(attrs, Mapping):
        raise UserError(
            f"{what} must be a dict, got {type(attrs).__name__}; pass a dict of JSON values"
        )
    out = {}
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise UserError(f"{what} key {key!r} is not a string; use string keys")
        try:
            out[key] = json.loads(json.dumps(value, default=_json_default))
        except (TypeError, ValueError) as e:
            raise UserError(
                f"{what} entry {key!r} is not JSON-serialisable ({e}); pass plain dicts, lists, "
                "strings and numbers"
            ) from None
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _diff(stored: Any, given: Any, where: str) -> list[str]:
    if isinstance(stored, dict) and isinstance(given, dict):
        out: list[str] = []
        for k in sorted(set(stored) | set(given), key=str):
            sub = f"{where}.{k}"
            if k not in stored:
                out.append(f"{sub}: not in the store, given {_short(given[k])}")
            elif k not in given:
                out.append(f"{sub}: stored {_short(stored[k])}, not given")
            else:
                out.extend(_diff(stored[k], given[k], sub))
        return out
    if (
        stored == given
        and type(stored) is type(given)
        or (isinstance(stored, int | float) and isinstance(given, int | float) and stored == given)
    ):
        return []
    return [f"{where}: stored {_short(stored)}, given {_short(given)}"]


def is_image_key(key: str) -> bool:
    """Whether a data key holds camera frames (``image`` or ``image_<camera>``)."""
    return key == "image" or key.startswith("image_")


def _chunk_rows(key: str, row_shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Rows per chunk: one frame for images (and any large row), else up to a few thousand rows."""
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize)
    is_image = is_image_key(key) or (dtype == np.uint8 and len(row_shape) == 3)
    if is_image or row_bytes >= FRAME_CHUNK_MIN_BYTES:
        return 1
    return int(max(1, min(LOWDIM_MAX_CHUNK_ROWS, LOWDIM_CHUNK_BYTES // row_bytes)))


def _compressor(zarr_format: int, dtype: np.dtype) -> Any:
    shuffle = dtype.itemsize > 1
    if zarr_format == 2:
        from numcodecs import Blosc

        return Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE if shuffle else Blosc.NOSHUFFLE)
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle" if shuffle else "noshuffle")


def _delete_array_dir(array_dir: Path) -> None:
    """Remove an array directory, metadata first (an interrupted delete leaves no half array)."""
    for name in ("zarr.json", ".zarray", ".zattrs"):
        with contextlib.suppress(FileNotFoundError):
            (array_dir / name).unlink()
    shutil.rmtree(array_dir, ignore_errors=True)


def _remove_partials(path: Path, state: _State, n_frames: int, n_episodes: int) -> None:
    """Delete the temporary ``*.partial`` files that a killed zarr write leaves behind.

    They sit beside the file being written: metadata of the root, the groups and the arrays, and the
    chunks past the committed rows, so only those directories are scanned.
    """
    dirs = {path, path / "data", path / "meta"}
    tails = [(f"data/{k}", a, n_frames) for k, a in state.arrays.items()]
    for name, arr, committed in [*tails, ("meta/episode_ends", state.ends_array, n_episodes)]:
        array_dir = path / name
        dirs.add(array_dir)
        first = committed // max(1, arr.chunks[0])
        for coords in arr.metadata.chunk_grid.all_chunk_coords(arr.shape):
            if coords[0] >= first:
                dirs.add((array_dir / arr.metadata.encode_chunk_key(coords)).parent)
    for d in dirs:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(d):
                if entry.name.endswith(".partial") and entry.is_file():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)


class _DirLock:
    """An exclusive ``flock`` on a store directory, shared within a process, gone when it dies."""

    _held: dict[str, list[int]] = {}  # realpath -> [fd, refcount]

    def __init__(self, path: Path, wait_s: float = 0.0) -> None:
        self.key = os.path.realpath(path)
        held = self._held.get(self.key)
        if held is not None:
            held[1] += 1
            return
        fd = os.open(self.key, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        deadline, noted = time.monotonic() + max(0.0, wait_s), False
        while True:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (ImportError, OSError) as e:
                busy = isinstance(e, OSError) and e.errno in (
                    errno.EWOULDBLOCK,
                    errno.EAGAIN,
                    errno.EACCES,
                )
                if busy and time.monotonic() < deadline:
                    if not noted:
                        print(f"store: {path} is being written by another process; waiting")
                        noted = True
                    time.sleep(0.5)
                    continue
                if busy:
                    os.close(fd)
                    raise UserError(
                        f"{path} is open for appending by another process (a running collect, "
                        "import or encode?); wait for it to finish or stop it, then retry"
                    ) from None
                # no flock on this filesystem: go on without the guard against a second writer
            break
        self._held[self.key] = [fd, 1]

    def release(self) -> None:
        held = self._held.get(self.key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del self._held[self.key]
            with contextlib.suppress(OSError):
                os.close(held[0])  # closing the descriptor drops the flock


def _check_existing_path(path: Path) -> None:
    if not path.exists():
        raise UserError(
            f"no demo store at {path}: the path does not exist; check it, or create one "
            "(robo-s2 collect out=... or robo-s2 import)"
        )
    if not path.is_dir():
        raise UserError(
            f"{path} is a file, not a demo store (a zarr directory); pass the store's directory"
        )


def _open_root(path: Path, mode: str) -> zarr.Group:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.GroupNotFoundError):
        raise UserError(
            f"{path} is not a demo store (no zarr group metadata there); pass a store's "
            "directory, or choose another path for a new store"
        ) from None
    except RecursionError:
        raise UserError(
            f"{path}'s zarr metadata nests deeper than any store robo_s2 writes; fix or delete "
            "the deep attribute in its zarr.json (.zattrs for a zarr v2 store)"
        ) from None
    except (ValueError, TypeError, KeyError, json.JSONDecodeError, zarr.errors.BaseZarrError) as e:
        raise UserError(
            f"{path} is not a readable zarr store ({type(e).__name__}: {e}); pass a demo store "
            "written by robo_s2 or diffusion_policy"
        ) from None
    if not isinstance(root, zarr.Group):
        raise UserError(f"{path} is a zarr array, not a demo store (a group with data/ and meta/)")
    return root


@dataclass
class _State:
    """What one read of a store's metadata found."""

    root: zarr.Group
    arrays: dict[str, Any]  # data key -> zarr array
    ends_array: Any  # meta/episode_ends
    ends: np.ndarray  # its content, int64 (possibly past the committed episodes)
    marker: Any  # the pending-append marker, or None

    def signature(self) -> tuple:
        shapes = tuple((k, tuple(a.shape)) for k, a in self.arrays.items())
        return (json.dumps(self.marker, sort_keys=True), shapes, self.ends.tobytes())


def _data_arrays(data: zarr.Group, path: Path) -> dict[str, Any]:
    """The arrays of ``data/`` by key; an array zarr cannot open (a codec or dtype robo_s2 does
    not read, such as a v2 object array with a pickle codec: it is never unpickled) is a
    UserError naming it, not a ValueError from inside zarr."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # junk left by an interrupted delete is not an array
        try:
            return dict(sorted(data.arrays()))
        except ValueError:
            listing = (path / "data").iterdir() if (path / "data").is_dir() else iter(())
            names = sorted(p.name for p in listing if p.is_dir())
            for key in names:
                try:
                    data[key]
                except ValueError as exc:
                    raise UserError(
                        f"{path}: data/{key} cannot be opened ({str(exc).splitlines()[0][:120]}): "
                        "robo_s2 stores numbers only, and never unpickles object arrays; delete "
                        f"{path / 'data' / key} or re-import the store"
                    ) from None
            raise


def check_chunk_bytes(arr: zarr.Array, name: str, path: Path) -> None:
    """Reading one row decompresses its whole chunk: a chunk declared larger than
    :data:`MAX_CHUNK_BYTES` is refused before anything is read."""
    chunk_bytes = int(np.prod(arr.chunks, dtype=np.float64)) * arr.dtype.itemsize
    if chunk_bytes > MAX_CHUNK_BYTES:
        raise UserError(
            f"{path}: {name} declares chunks of {tuple(arr.chunks)} ({chunk_bytes / 2**30:,.1f} "
            f"GiB each), over the 1 GiB a demo store's chunk may hold; the store is corrupt or "
            "not written for robo_s2: rewrite the array with smaller chunks"
        )


def _read_state(path: Path, mode: str) -> _State:
    root = _open_root(path, mode)
    data = root.get("data")
    if not isinstance(data, zarr.Group):
        raise _Corrupt(
            f"{path} has no data/ group, so it is not a demo store in diffusion_policy layout"
        )
    meta = root.get("meta")
    ends_array = meta.get("episode_ends") if isinstance(meta, zarr.Group) else None
    if not isinstance(ends_array, zarr.Array):
        raise _Corrupt(f"{path} has no meta/episode_ends array")
    arrays = _data_arrays(data, path)
    for key, arr in arrays.items():
        if arr.ndim < 1:
            raise _Corrupt(f"{path}: data/{key} is a 0-d array; every data array needs a time axis")
        check_chunk_bytes(arr, f"data/{key}", path)
    check_chunk_bytes(ends_array, "meta/episode_ends", path)
    if ends_array.ndim != 1 or not np.issubdtype(ends_array.dtype, np.integer):
        raise _Corrupt(
            f"{path}: meta/episode_ends has shape {ends_array.shape} and dtype {ends_array.dtype}, "
            "expected a 1-D integer array"
        )
    if ends_array.shape[0] > MAX_EPISODES:  # checked before reading: reading allocates it whole
        raise _Corrupt(
            f"{path}: meta/episode_ends declares {ends_array.shape[0]:,} episodes, over the "
            f"{MAX_EPISODES:,} a demo store may hold"
        )
    ends = np.asarray(ends_array[:], dtype=np.int64)
    marker = root.attrs.get(PENDING)
    return _State(root, arrays, ends_array, ends, marker)


def _committed(state: _State, path: Path) -> tuple[int, int, bool]:
    """``(n_frames, n_episodes, data_is_exact)`` of the committed view; :class:`_Corrupt` if bad."""
    ends = state.ends
    if state.marker is not None:
        try:
            n_frames, n_eps = int(state.marker["n_frames"]), int(state.marker["n_episodes"])
        except (TypeError, KeyError, ValueError):
            raise _Corrupt(f"{path}: unreadable {PENDING} attribute {state.marker!r}") from None
        if not 0 <= n_eps <= ends.size:
            raise _Corrupt(
                f"{path}: an interrupted append recorded {n_eps} committed episodes but "
                f"meta/episode_ends has {ends.size}"
            )
        ends = ends[:n_eps]
        if (int(ends[-1]) if n_eps else 0) != n_frames:
            raise _Corrupt(
                f"{path}: an interrupted append recorded {n_frames} committed frames but "
                f"meta/episode_ends ends at {int(ends[-1]) if n_eps else 0}"
            )
    if ends.size:
        if ends[0] <= 0 or np.any(np.diff(ends) <= 0):
            bad = int(np.argmax(np.diff(ends, prepend=0) <= 0))
            raise _Corrupt(
                f"{path}: meta/episode_ends is not strictly increasing (entry {bad} = "
                f"{int(ends[bad])} after {int(ends[bad - 1]) if bad else 0})"
            )
    n_frames = int(ends[-1]) if ends.size else 0
    if ends.size and not state.arrays:
        raise _Corrupt(
            f"{path}: meta/episode_ends counts {n_frames} frames but data/ has no arrays"
        )
    for key, arr in state.arrays.items():
        if arr.shape[0] < n_frames:
            raise _Corrupt(
                f"{path}: data/{key} has {arr.shape[0]} rows but meta/episode_ends ends at "
                f"{n_frames}"
            )
    lengths = {key: arr.shape[0] for key, arr in state.arrays.items()}
    if state.marker is None and len(set(lengths.values())) > 1:
        sizes = ", ".join(f"data/{k}: {n}" for k, n in lengths.items())
        raise _Corrupt(
            f"{path}: data arrays have different lengths ({sizes}) and no append is pending"
        )
    exact = all(n == n_frames for n in lengths.values())
    return n_frames, int(ends.size), exact


# ------------------------------------------------------------------------------------------------


class DemoStore:
    """Demonstrations in diffusion_policy's zarr ReplayBuffer layout; see the module docstring."""

    def __init__(self, path: Path, state: _State, mode: str, lock: _DirLock | None) -> None:
        self.path = path
        self.mode = mode
        self._lock = lock
        self._broken = False
        self._root = state.root
        self._arrays: dict[str, Any] = dict(state.arrays)
        self._ends_array = state.ends_array
        n_frames, n_eps, _ = _committed(state, path)
        self._ends = np.array(state.ends[:n_eps], dtype=np.int64)
        assert (int(self._ends[-1]) if n_eps else 0) == n_frames

    # --------------------------------------------------------------------------- construction

    @classmethod
    def create(
        cls, path: str | os.PathLike, attrs: dict | None = None, format: int = 3
    ) -> DemoStore:
        """Create an empty store at ``path`` (which must not exist, or be an empty directory)."""
        path = Path(path).expanduser()
        if format not in (2, 3):
            raise UserError(
                f"format={format!r} is not a zarr format; use 3 (default) or 2 "
                "(for diffusion_policy)"
            )
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            raise UserError(
                f"{path} already exists; choose a new path for the store, or open the existing one"
            )
        user = check_store_attrs(_jsonable(attrs or {}), f"the attributes of {path}")
        if PENDING in user:
            raise UserError(f"attribute {PENDING!r} is reserved for the store; rename it")
        from robo_s2 import __version__

        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        user.setdefault("robo_s2_version", __version__)
        user.setdefault("created", now)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.creating-{uuid.uuid4().hex[:8]}"
        try:
            root = zarr.open_group(str(tmp), mode="w-", zarr_format=cast(Literal[2, 3], format))
            root.create_group("data")
            meta = root.create_group("meta")
            meta.create_array(
                "episode_ends",
                shape=(0,),
                chunks=(LOWDIM_MAX_CHUNK_ROWS,),
                dtype="int64",
                compressors=_compressor(format, np.dtype(np.int64)),
                fill_value=0,
            )
            root.attrs.put(user)
            try:
                os.rename(tmp, path)  # atomic; replaces an empty directory, fails on anything else
            except OSError:
                raise UserError(
                    f"{path} appeared while the store was being created; choose another path"
                ) from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", wait_s: float = 0.0) -> DemoStore:
        """Open an existing store: ``"r"`` read-only, ``"a"`` to append (rolls back a crash).
        ``wait_s``: how long ``"a"`` waits for another process's append lock before refusing."""
        if mode not in ("r", "a"):
            raise UserError(f"mode={mode!r} is not a store mode; use 'r' (read) or 'a' (append)")
        path = Path(path).expanduser()
        _check_existing_path(path)
        if mode == "r":
            return cls._open_read(path)
        lock = _DirLock(path, wait_s)
        try:
            return cls._open_append(path, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_read(cls, path: Path) -> DemoStore:
        # A writer in another process may be mid-append: a read that finds an inconsistency is
        # repeated while the metadata keeps changing; the same inconsistency twice is corruption.
        last = None
        for _ in range(_READ_RETRIES):
            state = _read_state_or_user_error(path, "r")
            try:
                return cls(path, state, "r", None)
            except _Corrupt as e:
                sig = state.signature()
                if sig == last:
                    raise UserError(f"{e}; {_CORRUPT_FIX}") from None
                last = sig
                time.sleep(_READ_RETRY_S)
        raise UserError(f"{path} kept changing while being read; retry when its writer is done")

    @classmethod
    def _open_append(cls, path: Path, lock: _DirLock) -> DemoStore:
        state = _read_state_or_user_error(path, "a")
        try:
            n_frames, n_eps, exact = _committed(state, path)
        except _Corrupt as e:
            raise UserError(f"{e}; {_CORRUPT_FIX}") from None
        if state.marker is not None or not exact:
            _rollback(path, state, n_frames, n_eps)
            state = _read_state_or_user_error(path, "a")
        try:
            return cls(path, state, "a", lock)
        except _Corrupt as e:
            raise UserError(f"{e}; {_CORRUPT_FIX}") from None

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike,
        attrs: dict | None = None,
        format: int = 3,
        check_attrs: tuple[str, ...] = (),
        mode: str = "a",
    ) -> DemoStore:
        """Create the store if missing, else open it for appending (resumable collection), or with
        ``mode="r"`` only read it (no append lock; a store that is created is still appendable).

        Every attribute named in ``check_attrs`` must equal the stored one, otherwise a UserError
        names the differences. A path that exists but is not a store is refused, never overwritten.
        """
        path = Path(path).expanduser()
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return cls.create(path, attrs=attrs, format=format)
        if not path.is_dir():
            raise UserError(
                f"{path} is a file, not a demo store; choose another path for the store "
                "(nothing was written)"
            )
        if not ((path / "zarr.json").is_file() or (path / ".zgroup").is_file()):
            raise UserError(
                f"{path} exists and is not a demo store (a non-empty directory without zarr "
                "metadata); choose another path for the store (nothing was written)"
            )
        store = cls.open(path, mode=mode)
        try:
            given = _jsonable(attrs or {})
            stored = store.attrs
            for name in check_attrs:
                diffs = _diff(stored.get(name), given.get(name), name)
                if diffs:
                    more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
                    raise UserError(
                        f"{path} holds demos made with a different {name!r} ({'; '.join(diffs[:3])}"
                        f"{more}); resume with the same {name}, or choose a new path for the store"
                    )
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Release the append lock (a read-only store holds nothing)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> DemoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return (
            f"DemoStore({str(self.path)!r}, mode={self.mode!r}, episodes={self.n_episodes}, "
            f"frames={self.n_frames}, keys={self.keys()})"
        )

    def __len__(self) -> int:
        return self.n_episodes

    # --------------------------------------------------------------------------- properties

    @property
    def root(self) -> zarr.Group:
        """The zarr root group (other modules add groups such as ``features/`` beside data/)."""
        return self._root

    @property
    def format(self) -> int:
        """The zarr on-disk format, 2 or 3."""
        return int(self._root.metadata.zarr_format)

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's JSON description (a copy; change it with :meth:`update_attrs`)."""
        attrs = self._root.attrs.asdict()
        attrs.pop(PENDING, None)
        try:
            attrs = json.loads(json.dumps(attrs))
        except RecursionError:
            raise UserError(
                f"{self.path}'s attributes nest deeper than any store robo_s2 writes; fix or "
                "delete the deep attribute in its zarr.json (.zattrs for a zarr v2 store)"
            ) from None
        return check_store_attrs(attrs, str(self.path))

    def update_attrs(self, attrs: dict) -> None:
        """Merge ``attrs`` into the store's attributes (one atomic metadata write)."""
        self._require_writable("update_attrs")
        new = _jsonable(attrs)
        if PENDING in new:
            raise UserError(f"attribute {PENDING!r} is reserved for the store; rename it")
        check_store_attrs(
            {**self._root.attrs.asdict(), **new}, f"the update of {self.path}'s attributes"
        )
        self._root.update_attributes(new)

    @property
    def n_episodes(self) -> int:
        return int(self._ends.size)

    @property
    def n_frames(self) -> int:
        return int(self._ends[-1]) if self._ends.size else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """Exclusive end frame of every committed episode, ``int64 (E,)`` (a copy)."""
        return self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    def keys(self) -> list[str]:
        """The data keys (names of the ``data/`` arrays), sorted."""
        return sorted(self._arrays)

    def array(self, key: str) -> Any:
        """The zarr array ``data/<key>``; its committed rows are ``[0, n_frames)``."""
        self._check_keys([key])
        return self._arrays[key]

    # --------------------------------------------------------------------------- reading

    def _check_keys(self, keys: Iterable[str]) -> list[str]:
        keys = list(keys)
        missing = [k for k in keys if k not in self._arrays]
        if missing:
            raise UserError(
                f"{self.path} has no data key(s) {missing}; keys there: {self.keys() or 'none'}"
            )
        return keys

    def _episode_index(self, i: int) -> int:
        n = self.n_episodes
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not -n <= i < n:
            raise UserError(
                f"episode {i!r} is out of range: {self.path} has {n} episodes "
                f"(valid indices 0..{n - 1})"
                if n
                else f"episode {i!r} is out of range: {self.path} has no episodes yet"
            )
        return int(i) % n

    def episode_slice(self, i: int) -> slice:
        """Frames of episode ``i`` in the concatenated arrays."""
        i = self._episode_index(i)
        return slice(int(self._ends[i - 1]) if i else 0, int(self._ends[i]))

    def episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as ``{key: (T, ...) array}`` (one slice read per key)."""
        sl = self.episode_slice(i)
        keys = self._check_keys(self.keys() if keys is None else keys)
        return {k: self._arrays[k][sl] for k in keys}

    def iter_episodes(self, keys: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Every committed episode in order, as :meth:`episode` returns them."""
        for i in range(self.n_episodes):
            yield self.episode(i, keys)

    def iter_windows(
        self,
        keys: list[str] | None,
        history: int,
        future: int,
        episodes: Iterable[int] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One window per frame: ``{key: (history+future, ...)}`` plus ``_episode``, ``_frame``
        (global index of the current step ``t``) and ``_valid`` (bool, False where edge-padded).

        Windows cover frames ``t-history+1 .. t+future`` of ``t``'s episode (see
        :func:`robo_s2.data.windows.sequence_indices`); each episode is read once.
        """
        sequence_indices(np.zeros(0, np.int64), history, future)  # validates history/future
        keys = self._check_keys(self.keys() if keys is None else keys)
        clash = [k for k in keys if k in WINDOW_META]
        if clash:
            raise UserError(
                f"data keys {clash} clash with window fields {WINDOW_META}; rename them"
            )
        chosen = range(self.n_episodes) if episodes is None else episodes
        for i in chosen:
            i = self._episode_index(i)
            sl = self.episode_slice(i)
            data = {k: self._arrays[k][sl] for k in keys}
            idx, valid = sequence_indices(np.array([sl.stop - sl.start]), history, future)
            for t in range(idx.shape[0]):
                window: dict[str, Any] = {k: v[idx[t]] for k, v in data.items()}
                window["_episode"] = i
                window["_frame"] = sl.start + t
                window["_valid"] = valid[t]
                yield window

    # --------------------------------------------------------------------------- writing

    def _require_writable(self, what: str) -> None:
        if self._broken:
            raise UserError(
                f"an interrupted append to {self.path} could not be rolled back in this process; "
                "open the store again (DemoStore.open(path, mode='a')) to finish the rollback"
            )
        if self.mode != "a":
            raise UserError(f"{self.path} was opened read-only; open it with mode='a' to {what}")

    def append_episode(
        self, episode: dict[str, np.ndarray], attrs: dict[str, Any] | None = None
    ) -> int:
        """Append one episode atomically (validated first); returns its index.

        ``attrs`` (e.g. a collector's progress) are merged into the store attributes in the same
        write that commits the episode, so they can never disagree with the episodes after a crash.
        """
        self._require_writable("append episodes")
        fixed = self._arrays if self.n_episodes > 0 and self._arrays else None
        ep = validate_episode(episode, fixed, self.path)
        if attrs:
            check_store_attrs(
                {**self._root.attrs.asdict(), **attrs},
                f"the attributes given with {self.path}'s episode",
            )
        n_frames, n_eps = self.n_frames, self.n_episodes
        if n_eps == 0:
            prepare_arrays(self._arrays, self._root, self.path, self.format, ep)
        T = len(next(iter(ep.values())))
        try:
            self._root.update_attributes({PENDING: {"n_frames": n_frames, "n_episodes": n_eps}})
            _crash_point("marked")
            for key, x in ep.items():
                arr = self._arrays[key]
                arr.resize((n_frames + T, *arr.shape[1:]))
                _crash_point(f"resized:{key}")
                arr[n_frames : n_frames + T] = x
                _crash_point(f"written:{key}")
            self._ends_array.resize((n_eps + 1,))
            _crash_point("ends_resized")
            self._ends_array[n_eps] = n_frames + T
            _crash_point("ends_written")
            new_attrs = {**self._root.attrs.asdict(), **(attrs or {})}
            new_attrs.pop(PENDING, None)
            self._root.attrs.put(new_attrs)  # the commit point
            _crash_point("committed")
        except BaseException:
            if not self._pending_on_disk():  # interrupted right after the commit: the episode stays
                self._ends = np.append(self._ends, np.int64(n_frames + T))
                raise
            try:
                state = _read_state(self.path, "a")
                _rollback(self.path, state, n_frames, n_eps)
                self._reload(state=None)
            except BaseException:
                self._broken = True  # the next open(mode="a") finishes the rollback
            raise
        self._ends = np.append(self._ends, np.int64(n_frames + T))
        return n_eps

    def _pending_on_disk(self) -> bool:
        try:
            return PENDING in _open_root(self.path, "r").attrs
        except Exception:
            return True

    def _reload(self, state: _State | None) -> None:
        state = state or _read_state(self.path, self.mode)
        fresh = DemoStore(self.path, state, self.mode, None)
        self._root, self._arrays, self._ends_array, self._ends = (
            fresh._root,
            fresh._arrays,
            fresh._ends_array,
            fresh._ends,
        )


def _read_state_or_user_error(path: Path, mode: str) -> _State:
    try:
        return _read_state(path, mode)
    except _Corrupt as e:
        raise UserError(f"{e}; {_CORRUPT_FIX}") from None


def _rollback(path: Path, state: _State, n_frames: int, n_episodes: int) -> None:
    """Trim the store back to its committed ``n_frames``/``n_episodes`` and clear the marker.

    Idempotent: the marker is written first (if absent) and cleared last, so an interrupted rollback
    is simply redone by the next ``open(mode="a")``.
    """
    root = state.root
    _remove_partials(path, state, n_frames, n_episodes)
    if root.attrs.get(PENDING) is None:
        root.update_attributes({PENDING: {"n_frames": n_frames, "n_episodes": n_episodes}})
    for key, arr in state.arrays.items():
        if n_episodes == 0:
            _delete_array_dir(path / "data" / key)  # an empty store defines no keys (as a new one)
        elif arr.shape[0] != n_frames:
            arr.resize((n_frames, *arr.shape[1:]))
    if state.ends_array.shape[0] != n_episodes:
        state.ends_array.resize((n_episodes,))
    attrs = root.attrs.asdict()
    attrs.pop(PENDING, None)
    root.attrs.put(attrs)


def validate_episode(
    episode: Mapping[str, Any], arrays: Mapping[str, zarr.Array] | None, path: Path
) -> dict[str, np.ndarray]:
    """An episode as arrays to append, checked: valid keys, numbers, uint8 (T, H, W, 3)
    images, finite floats, one length; with ``arrays`` (a store that has episodes) the same
    keys and per-step shapes, cast to their dtypes. Every fault is a one-line UserError."""
    if not isinstance(episode, Mapping) or not episode:
        raise UserError(
            "an episode must be a non-empty dict {key: (T, ...) array}, got "
            f"{type(episode).__name__ if not isinstance(episode, Mapping) else 'an empty dict'}"
        )
    for key in episode:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise UserError(
                f"episode key {key!r} is not a valid data key; use letters, digits, '_', '.', "
                "'-' (starting with a letter or digit)"
            )
    out: dict[str, np.ndarray] = {}
    if arrays is not None:
        missing = sorted(set(arrays) - set(episode))
        extra = sorted(set(episode) - set(arrays))
        if missing or extra:
            raise UserError(
                f"episode keys do not match {path}: missing {missing}, unexpected "
                f"{extra}; every episode needs exactly the keys {sorted(arrays)}"
            )
    lengths: dict[str, int] = {}
    for key, value in episode.items():
        x = np.asarray(value)
        if x.ndim < 1:
            raise UserError(f"episode[{key!r}] is a scalar; give a (T, ...) array over time steps")
        if x.dtype.kind not in "biuf":
            raise UserError(
                f"episode[{key!r}] has dtype {x.dtype}; store numbers only (bool, int, float)"
            )
        if is_image_key(key) and (x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3):
            raise UserError(
                f"episode[{key!r}] is {x.dtype} {x.shape}; images must be uint8 (T,H,W,3) in "
                "0..255 (convert float [0,1] images with (x * 255).round().astype(np.uint8))"
            )
        lengths[key] = x.shape[0]
        target = arrays.get(key) if arrays is not None else None
        if target is not None:
            if tuple(x.shape[1:]) != tuple(target.shape[1:]):
                raise UserError(
                    f"episode[{key!r}] has per-step shape {tuple(x.shape[1:])} but data/{key} "
                    f"holds {tuple(target.shape[1:])}; give the same shape as earlier episodes"
                )
            x = cast_episode_array(key, x, np.dtype(target.dtype))
        if x.dtype.kind == "f":
            finite = np.isfinite(x)
            if not finite.all():
                bad = np.argwhere(~finite)[0]
                raise UserError(
                    f"episode[{key!r}] has a non-finite value ({x[tuple(bad)]}) at step "
                    f"{int(bad[0])} (index {tuple(int(b) for b in bad)}); fix or drop the "
                    "episode before storing it"
                )
        out[key] = x
    if len(set(lengths.values())) > 1:
        raise UserError(
            f"episode arrays differ in length: {lengths}; every key needs the same number of steps"
        )
    if next(iter(lengths.values())) < 1:
        raise UserError("the episode has 0 steps; store episodes with at least one step")
    return out


def cast_episode_array(key: str, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``episode[key]`` as the store array's ``dtype``, refused where values would change."""
    if x.dtype == dtype:
        return x
    ints = x.dtype.kind in "biu" and dtype.kind in "iu"  # checked against the range below
    if not (ints or np.can_cast(x.dtype, dtype, casting="same_kind")):
        raise UserError(
            f"episode[{key!r}] has dtype {x.dtype}, which does not convert to data/{key}'s "
            f"{dtype}; give {dtype} values"
        )
    if dtype.kind in "iu" and x.size:
        info = np.iinfo(dtype)
        lo, hi = x.min(), x.max()
        if lo < info.min or hi > info.max:
            raise UserError(
                f"episode[{key!r}] has values in [{lo}, {hi}], outside data/{key}'s {dtype} "
                f"range [{info.min}, {info.max}]; rescale them"
            )
    with np.errstate(over="ignore"):
        return x.astype(dtype)  # float overflow shows up as inf, caught by the finite check


def prepare_arrays(
    arrays: dict[str, zarr.Array],
    root: zarr.Group,
    path: Path,
    fmt: int,
    episode: dict[str, np.ndarray],
) -> None:
    """Before a store's first episode: (re)create its data arrays (``arrays``, updated in
    place) to match ``episode``, each at length 0."""
    data_dir = path / "data"
    for key in list(arrays):
        arr, x = arrays[key], episode.get(key)
        if x is None or tuple(arr.shape[1:]) != x.shape[1:] or np.dtype(arr.dtype) != x.dtype:
            _delete_array_dir(data_dir / key)  # only empty arrays from an aborted first append
            del arrays[key]
    data = root["data"]
    assert isinstance(data, zarr.Group)  # checked when the store was opened
    for key, x in episode.items():
        if key in arrays:
            continue
        if (data_dir / key).exists():
            _delete_array_dir(data_dir / key)  # junk of an interrupted delete
        rows = _chunk_rows(key, x.shape[1:], x.dtype)
        arrays[key] = data.create_array(
            key,
            shape=(0, *x.shape[1:]),
            chunks=(rows, *x.shape[1:]),
            dtype=x.dtype,
            compressors=_compressor(fmt, x.dtype),
            fill_value=0,
        )
