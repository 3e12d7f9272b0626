"""(lerobot venv) Check (c): lerobot's own tools append to, edit and merge a robo-s2 export.

    python check_append_edit_merge.py EXPORT_DIR WORK_DIR

On a copy of the export: ``LeRobotDataset`` resumes it and records one more episode (what
``lerobot-record --resume`` does), then loads it again and reads every frame; ``delete_episodes``
drops episode 0 (it re-encodes the videos); ``merge_datasets`` merges the appended export with
that edited copy. After each step every frame is read through lerobot's own ``__getitem__`` (its
video decoder included) and the frames that fail to decode are counted.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import pyav_video_reader
from lerobot.datasets.dataset_tools import delete_episodes, merge_datasets
from lerobot.datasets.lerobot_dataset import LeRobotDataset

src, work = Path(sys.argv[1]), Path(sys.argv[2])
pyav_video_reader.install()
KW = {"video_backend": "pyav"}
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
appended = work / "appended"
shutil.copytree(src, appended)


def read_all(ds: LeRobotDataset, what: str) -> int:
    bad = 0
    for i in range(ds.num_frames):
        try:
            item = ds[i]
            assert int(item["index"]) == i, (int(item["index"]), i)
        except Exception as e:  # noqa: BLE001 - counted and reported, the point of the check
            if bad == 0:
                print(f"  first failure at frame {i}: {type(e).__name__}: {str(e)[:200]}")
            bad += 1
    print(f"{what}: {ds.num_episodes} episodes, {ds.num_frames} frames, {ds.num_frames - bad} read")
    return bad


ds = LeRobotDataset("robo_s2/appended", root=appended, **KW)
n_eps, n_frames = ds.num_episodes, ds.num_frames
rng = np.random.default_rng(0)
added = 7
for t in range(added):
    frame = {"task": "appended by lerobot"}
    for key, ft in ds.features.items():
        if key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
            continue
        if ft["dtype"] in ("video", "image"):
            frame[key] = rng.integers(0, 256, tuple(ft["shape"]), dtype=np.uint8)
        elif ft["dtype"] == "bool":
            frame[key] = np.array([t == added - 1])
        else:
            frame[key] = rng.standard_normal(tuple(ft["shape"])).astype(ft["dtype"])
    ds.add_frame(frame)
ds.save_episode()
ds.finalize()
ds = LeRobotDataset("robo_s2/appended", root=appended, **KW)
assert (ds.num_episodes, ds.num_frames) == (n_eps + 1, n_frames + added)
bad = read_all(ds, "append (lerobot resumed our export, +1 episode)")

edited = delete_episodes(ds, [0], output_dir=work / "edited", repo_id="robo_s2/edited")
edited = LeRobotDataset("robo_s2/edited", root=work / "edited", **KW)
bad += read_all(edited, "delete_episodes([0]) on it")

merged = merge_datasets([ds, edited], "robo_s2/merged", output_dir=work / "merged")
merged = LeRobotDataset("robo_s2/merged", root=work / "merged", **KW)
assert merged.num_frames == ds.num_frames + edited.num_frames
bad += read_all(merged, "merge_datasets([appended, edited])")
print("all frames read" if bad == 0 else f"{bad} frames failed")
sys.exit(1 if bad else 0)
