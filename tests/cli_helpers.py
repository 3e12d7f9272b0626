"""Running ``python -m robo_s2 <command>`` from tests (imported by the test modules beside it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def robo_s2(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``robo-s2 <args[0]> <args[1:]>`` in ``cwd``, its Hydra run directory under ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "robo_s2", args[0], f"hydra.run.dir={cwd / 'run_out'}", *args[1:]],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=180,
    )
