"""(robo_s2 venv) Check (b), part 2: robo-s2's importer reads the dataset lerobot wrote
(write_with_lerobot.py) and gets back what lerobot was given: actions and state exactly, the
episode ends and tasks, the PNG camera exactly and the video camera by PSNR.

    python check_import_of_lerobot_dataset.py LEROBOT_DIR WRITTEN.npz OUT_STORE
"""

import sys

import numpy as np

from robo_s2.commands.import_ import not_taken_lines
from robo_s2.data.interop.lerobot import import_lerobot
from robo_s2.data.store import DemoStore

src, written_path, out = sys.argv[1:4]
w = np.load(written_path)
res = import_lerobot(src, out, cameras=["top", "side"])
for line in not_taken_lines(res):
    print(line)
s = DemoStore.open(out)
print(f"imported {s.n_episodes} episodes, {s.n_frames} frames, keys {s.keys()}")
np.testing.assert_array_equal(s.episode_ends, np.cumsum(w["lengths"]))
np.testing.assert_array_equal(s.array("action")[:], w["action"])
np.testing.assert_array_equal(s.array("proprio")[:], w["state"])
np.testing.assert_array_equal(s.array("image_side")[:], w["side"])
assert [t[0] for t in s.attrs["episode_tasks"]] == list(w["tasks"])
assert s.attrs["control_hz"] == 10
print(f"episode ends {s.episode_ends.tolist()}, actions, state, PNG camera (image_side): exact")
print(
    f"tasks per episode {s.attrs['episode_tasks']}; semantics {s.attrs['proprio_semantics']}, "
    f"{s.attrs['action_semantics']}"
)
got, want = s.array("image")[:].astype(np.float64), w["top"].astype(np.float64)
per_frame = [
    10 * np.log10(255**2 / max(np.mean((g - x) ** 2), 1e-12))
    for g, x in zip(got, want, strict=True)
]
mse = np.mean((got - want) ** 2)
print(
    f"video camera (image, {s.attrs['lerobot']['features']}): PSNR {10 * np.log10(255**2 / mse):.2f} dB "
    f"overall, worst frame {min(per_frame):.2f} dB"
)
