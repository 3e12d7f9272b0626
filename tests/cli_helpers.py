"""Running ``python -m robo_s2 <command>`` from tests (imported by the test modules beside it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def robo_s2(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``robo-s2 <args[0]> <args[1:]>`` in ``cwd``, on one torch thread (CI's 2 cores are shared
    with the test process). Its Hydra run directory is ``<cwd>/run_out`` unless ``args`` name a
    ``hydra.run.dir``; without ``cwd`` it runs here and should write nothing (``--cfg``, errors)."""
    rest = list(args[1:])
    if cwd is not None and not any(a.startswith("hydra.run.dir=") for a in rest):
        # beside the other overrides: Hydra's argparse wants them in one run (`--cfg job a=1 b=2`)
        at = next((i for i, a in enumerate(rest) if "=" in a and not a.startswith("-")), len(rest))
        rest.insert(at, f"hydra.run.dir={Path(cwd) / 'run_out'}")
    return subprocess.run(
        [sys.executable, "-m", "robo_s2", *args[:1], *rest],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **(env or {})},
    )
