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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from robo_s2.errors import UserError


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """The JSON document in ``path``; a missing, unreadable, non-UTF-8, malformed or too deeply
    nested file is one :class:`UserError` naming ``what`` and the ``fix``."""
    try:
        return parse_json(Path(path).read_bytes(), f"{path} ({what})", fix)
    except OSError as exc:
        raise UserError(f"cannot read {path} ({what}: {exc.strerror or exc}); {fix}") from None


def parse_json(text: str | bytes, where: str, fix: str) -> Any:
    """``json.loads`` with every way a hostile document fails as one line naming ``where``."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise UserError(f"{where} is not valid JSON ({exc}); {fix}") from None
    except RecursionError:
        raise UserError(f"{where} nests deeper than any file robo-s2 writes; {fix}") from None


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


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def refuse_output_over_input(
    output: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    what: str,
    nested: bool = True,
) -> None:
    """Refuse to write ``output`` where it is one of ``inputs`` (real paths, symlinks resolved)
    or, with ``nested``, where one lies inside the other: a command must never replace or write
    into what it reads, ``overwrite=true`` included. ``what`` names the command for the message."""
    out = _real(output)
    for given in inputs:
        src = _real(given)
        inside = nested and (out.is_relative_to(src) or src.is_relative_to(out))
        if out == src or inside:
            raise UserError(
                f"{what}: the output {output} would {'be' if out == src else 'overlap'} its input "
                f"{given}; write it somewhere else (nothing was written)"
            )
