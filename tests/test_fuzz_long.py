"""The longer fuzzing run (issue 32 item 9), kept out of the default suite: every reader of
``tests/test_fuzz_readers.py`` at 20x the default example count (``pytest -m slow``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LONG_EXAMPLES = 500


@pytest.mark.slow
def test_every_reader_survives_a_longer_fuzzing_run(tmp_path):
    fuzz = Path(__file__).with_name("test_fuzz_readers.py")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", str(fuzz)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=6 * 3600,
        env={**os.environ, "ROBO_S2_FUZZ_EXAMPLES": str(LONG_EXAMPLES)},
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " failed" not in out.stdout
