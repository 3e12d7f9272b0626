"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one.

Everything robo_s2 writes that another process or a later run reads — checkpoints, training state,
eval_info.json, videos, exports, pretraining caches — is written to a hidden temporary path beside
its destination and renamed onto it at the end (a rename within one directory is atomic on POSIX).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_path_beside(path: str | os.PathLike) -> Path:
    """A hidden, unique path in ``path``'s directory with the same suffix (writers such as imageio
    and PIL choose the format by it)."""
    out = Path(path)
    return out.with_name(f".{out.stem}.tmp-{uuid.uuid4().hex[:8]}{out.suffix}")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_file(p) as tmp: write(tmp)`` puts the finished file at ``p``; an exception
    leaves ``p`` as it was and removes ``tmp``. The parent directory is created."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(out)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Mapping[str, Any] | list[Any]) -> Path:
    """``data`` as indented JSON (``default=str`` for paths and the like) with a final newline."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def replace_path(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished file or directory ``tmp`` onto ``out``. An existing ``out`` is set aside
    first and put back if the move fails, so ``out`` is never half old and half new."""
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
