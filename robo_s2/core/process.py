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
