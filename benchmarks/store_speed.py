"""Demo-store append/read and window-index speed, as ratios to a plain-numpy baseline in the same run.

    python benchmarks/store_speed.py [--frames 60] [--size 224] [--episodes 2000]

- append / read: one episode of ``frames`` uint8 frames (size² RGB) into a DemoStore (zarr chunks,
  crash-safe commit) against ``np.save`` / ``np.load`` of the same arrays;
- sequence_indices: the (history 16, chunk 16) windows of ``episodes`` x 100 frames against the
  bare broadcast ``starts[:, None] + arange(32)`` over the same frames.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from robo_s2.data.store import DemoStore
from robo_s2.data.windows import sequence_indices

# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"frames": 2, "size": 16, "episodes": 10}


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = ap.parse_args()
    if args.smoke:
        ap.set_defaults(**SMOKE)
        args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, s = args.frames, args.size
    ep = {
        "image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
        "action": np.zeros((n, 7), np.float32),
        "proprio": np.zeros((n, 9), np.float32),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = DemoStore.create(root / "s.zarr")
        store.append_episode(ep)  # the first append creates the arrays
        append = _best_of(lambda: store.append_episode(ep))
        read = _best_of(lambda: store.episode(1))
        store.close()

        def save_npy() -> None:
            for k, v in ep.items():
                np.save(root / f"{k}.npy", v)

        base_save = _best_of(save_npy)
        base_load = _best_of(lambda: [np.load(root / f"{k}.npy") for k in ep])

    ends = np.cumsum(np.full(args.episodes, 100))
    windows = _best_of(lambda: sequence_indices(ends, 16, 16))
    starts = np.arange(int(ends[-1]))
    base_windows = _best_of(lambda: starts[:, None] + np.arange(32))

    print(
        f"| operation ({n} frames at {s}², {args.episodes} x 100 frames) | s | baseline s | ratio |"
    )
    print("|---|---|---|---|")
    for name, t, b in (
        ("append_episode vs np.save", append, base_save),
        ("episode() vs np.load", read, base_load),
        ("sequence_indices vs broadcast", windows, base_windows),
    ):
        print(f"| {name} | {t:.3f} | {b:.3f} | {t / b:.1f}x |")


if __name__ == "__main__":
    main()
