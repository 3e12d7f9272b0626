"""Stopping a training run between steps: the first Ctrl-C (SIGINT) or SIGTERM (a job scheduler's
stop) asks the loop to stop after the current step (which it then saves, an exact resume point);
a second one stops at once."""

from __future__ import annotations

import signal
import threading
from types import TracebackType
from typing import Any


class StopBetweenSteps:
    """``with StopBetweenSteps(active, announce) as stop: ... if stop.requested: ...``

    Inactive (signals keep their default) off the main thread and under ``torchrun``, where the
    ranks could not agree on a step to stop at."""

    def __init__(self, active: bool = True, announce: bool = False, label: str = "train") -> None:
        self.active = active and threading.current_thread() is threading.main_thread()
        self.announce = announce
        self.label = label
        self.requested = False
        self._previous: dict[Any, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            name = signal.Signals(signum).name
            print(
                f"\n{self.label}: {name}: stopping after this step ({name} again to stop at once)"
            )

    def __enter__(self) -> StopBetweenSteps:
        self.requested = False
        if self.active:
            self._previous = {
                s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)
            }
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
