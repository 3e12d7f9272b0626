"""Helper for tests/test_store.py: append deterministic episodes to a demo store until killed.

Usage: ``python store_crash_worker.py STORE N_MAX IMAGE_SIZE FORMAT``. Prints ``ready <n>`` once the
store is open, ``begin <i>`` just before appending episode ``i`` (its data already generated) and
``committed <i>`` once ``append_episode`` returned, each line flushed.
"""

from __future__ import annotations

import sys

import numpy as np

ENV = {"name": "crash-test", "image_size": 0}


def make_episode(i: int, image_size: int) -> dict[str, np.ndarray]:
    """Episode ``i``: content and length (8..20 steps) are a pure function of ``i``."""
    rng = np.random.default_rng(1000 + i)
    T = 8 + (i * 5) % 13
    steps = np.arange(T, dtype=np.float32)[:, None]
    return {
        "image": rng.integers(0, 256, (T, image_size, image_size, 3), dtype=np.uint8),
        "image_wrist": rng.integers(0, 256, (T, 32, 32, 3), dtype=np.uint8),
        "action": (rng.standard_normal((T, 7)) + i).astype(np.float32),
        "proprio": (np.full((T, 9), i, np.float32) + steps),
        "state": rng.standard_normal((T, 20)),
    }


def main() -> None:
    from robo_s2.data.store import DemoStore

    path, n_max, image_size, fmt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    env = {**ENV, "image_size": image_size}
    store = DemoStore.open_or_create(path, attrs={"env": env}, format=fmt, check_attrs=("env",))
    print(f"ready {store.n_episodes}", flush=True)
    while store.n_episodes < n_max:
        i = store.n_episodes
        episode = make_episode(i, image_size)
        print(f"begin {i}", flush=True)
        assert store.append_episode(episode) == i
        print(f"committed {i}", flush=True)
    store.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
