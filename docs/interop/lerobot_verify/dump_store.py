"""(robo_s2 venv) Write a demo store's arrays, episode ends and attributes to an .npz, so the check
scripts in the lerobot venv (no zarr, no robo_s2) can compare against them.

    python dump_store.py STORE OUT.npz
"""

import json
import sys

import numpy as np

from robo_s2.data.store import DemoStore

store = DemoStore.open(sys.argv[1])
arrays = {f"data/{k}": store.array(k)[:] for k in store.keys()}
np.savez(
    sys.argv[2],
    episode_ends=store.episode_ends,
    attrs=json.dumps(store.attrs, default=str),
    **arrays,
)
print(f"{sys.argv[1]}: {store.n_episodes} episodes, {store.n_frames} frames, keys {store.keys()}")
