"""Worker-process hygiene shared by collection and evaluation env workers."""

from __future__ import annotations

import os
import threading
import time


def exit_when_orphaned(parent_pid: int) -> None:
    """Block until the parent is gone, then exit: a worker whose parent was SIGKILLed would
    otherwise live on, holding its pipes and renderer."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def start_orphan_watch(parent_pid: int | None = None) -> None:
    """Run :func:`exit_when_orphaned` in a daemon thread, for ``parent_pid`` (default: the
    current parent)."""
    pid = os.getppid() if parent_pid is None else parent_pid
    threading.Thread(target=exit_when_orphaned, args=(pid,), daemon=True).start()


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3 on), or None when there is none."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _started(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot): with the pid, one process, never a reused pid."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def ancestors(pid: int | None = None) -> list[int]:
    """The parent, grandparent, ... of ``pid`` (default: this process), up to init (Linux /proc;
    elsewhere only the direct parent of this process)."""
    pid = os.getpid() if pid is None else pid
    if not os.path.isdir("/proc/self"):
        return [os.getppid()] if pid == os.getpid() else []
    found = []
    while (fields := _stat_fields(pid)) is not None and int(fields[1]) > 0:
        pid = int(fields[1])
        found.append(pid)
    return found


def start_ancestor_watch(ancestor_pid: int) -> bool:
    """Exit this process when ``ancestor_pid`` ends, if it is one of this process's ancestors
    (a launcher may put its own controller between them, as submitit_local does); False (no
    watch) when it is not, e.g. a job on another machine."""
    if ancestor_pid not in ancestors():
        return False
    started = _started(ancestor_pid)

    def watch() -> None:
        while _started(ancestor_pid) == started:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    return True
