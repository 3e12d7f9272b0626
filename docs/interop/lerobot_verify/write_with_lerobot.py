"""(lerobot venv) Check (b), part 1: a dataset written by lerobot's own LeRobotDataset.create /
add_frame / save_episode / finalize, with a video camera, an image camera and two tasks; the frames
it was given are saved beside it for part 2 (check_import_of_lerobot_dataset.py).

    python write_with_lerobot.py OUT_DIR WRITTEN.npz [VCODEC [HxW]]
    (VCODEC: lerobot's default libsvtav1; frames 48x64 unless HxW is given)
"""

import sys

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

out, written_path = sys.argv[1], sys.argv[2]
vcodec = sys.argv[3] if len(sys.argv) > 3 else "libsvtav1"
H, W = (int(v) for v in sys.argv[4].split("x")) if len(sys.argv) > 4 else (48, 64)
FPS = 10
LENGTHS = (12, 9, 15)
TASKS = ("pick the cube", "push the cube")
features = {
    "observation.images.top": {
        "dtype": "video",
        "shape": (H, W, 3),
        "names": ["height", "width", "channels"],
    },
    "observation.images.side": {
        "dtype": "image",
        "shape": (H, W, 3),
        "names": ["height", "width", "channels"],
    },
    "observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]},
    "action": {"dtype": "float32", "shape": (2,), "names": ["vx", "vy"]},
}
ds = LeRobotDataset.create(
    "robo_s2/lerobot_written", fps=FPS, root=out, features=features, use_videos=True, vcodec=vcodec
)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:H, 0:W]
saved = {"lengths": np.array(LENGTHS)}
tops, sides, states, actions, tasks = [], [], [], [], []
for e, n in enumerate(LENGTHS):
    task = TASKS[e % 2]
    for t in range(n):
        a, b = rng.uniform(1, 4, 2)
        top = np.stack([(xx * a + 7 * t) % 256, (yy * b + 30) % 256, (xx + yy) % 256], -1).astype(
            np.uint8
        )
        side = np.stack([(yy * a) % 256, (xx * b + 5 * t) % 256, (xx * 2) % 256], -1).astype(
            np.uint8
        )
        state = rng.standard_normal(3).astype(np.float32)
        action = rng.standard_normal(2).astype(np.float32)
        ds.add_frame(
            {
                "observation.images.top": top,
                "observation.images.side": side,
                "observation.state": state,
                "action": action,
                "task": task,
            }
        )
        tops.append(top), sides.append(side), states.append(state), actions.append(action)
    tasks.append(task)
    ds.save_episode()
ds.finalize()
np.savez(
    written_path,
    top=np.stack(tops),
    side=np.stack(sides),
    state=np.stack(states),
    action=np.stack(actions),
    lengths=np.array(LENGTHS),
    tasks=np.array(tasks),
)
print(
    f"lerobot wrote {out}: {ds.meta.total_episodes} episodes, {ds.meta.total_frames} frames, "
    f"vcodec {vcodec}, tasks {TASKS}"
)
