"""Fail CI when the quickstart's vision row picks fewer cubes than the floor the README states.

The README says, in its opening lines, ``CI fails the quickstart below **N of 16**``; this reads N
from there (so the README and CI cannot disagree) and the row's success from ``results.json``.

    python .ci/check_quickstart.py README.md outputs/quickstart/results.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

FLOOR = re.compile(r"CI fails the quickstart below \*\*(\d+) of (\d+)\*\*")


def main(readme: str, results: str) -> int:
    found = FLOOR.search(Path(readme).read_text())
    if found is None:
        print(f"error: {readme} states no quickstart floor ('{FLOOR.pattern}')", file=sys.stderr)
        return 1
    floor, n = int(found.group(1)), int(found.group(2))
    rows = json.loads(Path(results).read_text())["rows"]
    vision = [r for r in rows if r["encoder"] != "oracle"]
    if not vision:
        print(f"error: {results} has no vision row", file=sys.stderr)
        return 1
    failed = False
    for row in vision:
        for run in row["runs"]:
            ok = run["n_episodes"] == n and run["n_success"] >= floor
            failed |= not ok
            print(
                f"quickstart {row['label']} seed {run['seed']}: {run['n_success']}/"
                f"{run['n_episodes']} (floor {floor} of {n}) {'ok' if ok else 'BELOW THE FLOOR'}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
