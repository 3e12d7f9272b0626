"""(lerobot venv) lerobot records a dataset with the features of a robo-s2 cube export (front and
wrist video cameras, observation.state (11), observation.environment_state (12), action (4),
next.reward, next.done); its episodes-parquet schema (episodes_schema.py) is the reference
episodes_schema_lerobot_0.4.4.tsv that tests/test_lerobot.py holds our export to.

    python record_like_our_export.py OUT_DIR

Needs numpy < 2.3 in the lerobot venv: lerobot 0.4.4 turns a shape-(1,) feature into a float
with float(array), which numpy 2.4 refuses.
"""

import sys

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

out = sys.argv[1]
img = {"dtype": "video", "shape": (64, 64, 3), "names": ["height", "width", "channels"]}
features = {
    "observation.images.front": img,
    "observation.images.wrist": dict(img),
    "observation.state": {"dtype": "float32", "shape": (11,), "names": None},
    "observation.environment_state": {"dtype": "float32", "shape": (12,), "names": None},
    "action": {"dtype": "float32", "shape": (4,), "names": None},
    "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
    "next.done": {"dtype": "bool", "shape": (1,), "names": None},
}
ds = LeRobotDataset.create(
    "x/y", fps=10, root=out, features=features, use_videos=True, vcodec="h264"
)
rng = np.random.default_rng(0)
for n in (12, 9):
    for t in range(n):
        f = {
            k: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for k in features if "images" in k
        }
        f.update(
            {
                k: rng.standard_normal(v["shape"]).astype(np.float32)
                for k, v in features.items()
                if v["dtype"] == "float32" and v["shape"] != (1,)
            }
        )
        f["next.reward"] = rng.standard_normal(1).astype(np.float32)
        f["next.done"] = np.array([t == n - 1])
        f["task"] = "pick"
        ds.add_frame(f)
    ds.save_episode()
ds.finalize()
