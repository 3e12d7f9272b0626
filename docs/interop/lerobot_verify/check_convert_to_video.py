"""(lerobot venv) Check (g), part 1: lerobot's ``convert_image_to_video_dataset`` turns a robo-s2
PNG export into a video dataset (its episode list then has no ``tasks`` column).

    python check_convert_to_video.py PNG_EXPORT_DIR OUT_DIR

Part 2, in the robo_s2 venv: ``robo-s2 import src=OUT_DIR`` and compare the episode tasks.
"""

import sys
from pathlib import Path

import pyarrow.parquet as pq
from lerobot.datasets.dataset_tools import convert_image_to_video_dataset
from lerobot.datasets.lerobot_dataset import LeRobotDataset

src, out = sys.argv[1], sys.argv[2]
convert_image_to_video_dataset(
    LeRobotDataset("robo_s2/png", root=src), output_dir=Path(out), repo_id="robo_s2/video"
)
cols = pq.read_schema(f"{out}/meta/episodes/chunk-000/file-000.parquet").names
print(f"converted {src} -> {out}; episode list has a tasks column: {'tasks' in cols}")
