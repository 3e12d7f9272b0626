"""(lerobot venv) Check (a): lerobot's own LeRobotDataset loads a robo-s2 export.

    python check_lerobot_loads_export.py EXPORT_DIR STORE_DUMP.npz TASK

Compares frame counts, episode boundaries, index/frame_index/episode_index, action, state and
task per frame with the robo_s2 store the export was made from; camera frames exactly (PNG export)
or by PSNR (mp4 export).
"""

import sys

import numpy as np
import pyav_video_reader
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

root, dump, task = sys.argv[1], sys.argv[2], sys.argv[3]
ref = np.load(dump)
ends = ref["episode_ends"]
# torchvision 0.29 has no VideoReader (lerobot 0.4.4's pyav path) and torchcodec is not installed:
# lerobot's decoder runs with the PyAV stand-in of pyav_video_reader.py
pyav_video_reader.install()
kwargs = {"video_backend": "pyav"}
ds = LeRobotDataset("robo_s2/export_check", root=root, **kwargs)
print(f"lerobot loaded {root}: {ds.num_episodes} episodes, {ds.num_frames} frames, fps {ds.fps}")
print(f"  features: {sorted(ds.features)}")
assert ds.num_frames == int(ends[-1]) and ds.num_episodes == len(ends)
starts = np.concatenate([[0], ends[:-1]])
if hasattr(ds, "episode_data_index"):  # lerobot 0.3.x reading a v2.1 dataset
    bounds = ds.episode_data_index["from"].tolist(), ds.episode_data_index["to"].tolist()
else:
    bounds = (
        list(ds.meta.episodes["dataset_from_index"]),
        list(ds.meta.episodes["dataset_to_index"]),
    )
assert bounds == (starts.tolist(), ends.tolist()), bounds
print("  episode boundaries (from/to index) match the store's episode_ends")

cams = [k for k in ds.features if k.startswith("observation.images.")]
ours = {"observation.images.front": "image", "observation.images.wrist": "image_wrist"}
worst_psnr = {c: np.inf for c in cams}
max_err = {"action": 0.0, "observation.state": 0.0}
for i in range(ds.num_frames):
    item = ds[i]
    ep = int(np.searchsorted(ends, i, side="right"))
    assert int(item["index"]) == i
    assert int(item["episode_index"]) == ep
    assert int(item["frame_index"]) == i - int(starts[ep])
    assert item["task"] == task, item["task"]
    for feat, key in (("action", "action"), ("observation.state", "proprio")):
        d = np.abs(item[feat].numpy() - ref[f"data/{key}"][i]).max()
        max_err[feat] = max(max_err[feat], float(d))
    for cam in cams:
        img = item[cam]  # (C,H,W) float in [0,1]
        got = (img.permute(1, 2, 0).numpy() * 255.0).round().astype(np.float64)
        want = ref[f"data/{ours[cam]}"][i].astype(np.float64)
        mse = np.mean((got - want) ** 2)
        p = np.inf if mse == 0 else 10 * np.log10(255.0**2 / mse)
        worst_psnr[cam] = min(worst_psnr[cam], p)
print(f"  every frame: index, episode_index, frame_index, task {task!r} match")
print(f"  max |lerobot - store|: {max_err}")
print(f"  worst per-frame PSNR of the cameras (dB, inf = exact): {worst_psnr}")
print(f"  torch {torch.__version__}")
