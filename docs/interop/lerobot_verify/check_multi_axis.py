"""Check (f): a multi-axis feature crosses between lerobot and robo-s2 with its shape.

    (robo_s2 venv)  python check_multi_axis.py make STORE.zarr EXPORT_DIR
    (lerobot venv)  python check_multi_axis.py load EXPORT_DIR LEROBOT_WRITTEN_DIR
    (robo_s2 venv)  python check_multi_axis.py import LEROBOT_WRITTEN_DIR STORE.zarr OUT.zarr

make: a store with a (9, 2) keypoint per step, exported (default v3.0); load: lerobot's
LeRobotDataset reads it back as (9, 2) per frame, equal to the store's values (saved beside the
export), then lerobot records a dataset with a (4, 2) feature; import: robo-s2 imports that one
with keys=all and finds (4, 2) per step, equal to what lerobot was given.
"""

import sys

import numpy as np

step = sys.argv[1]
if step == "make":
    from robo_s2.data.interop.lerobot import export_lerobot
    from robo_s2.data.store import DemoStore

    rng = np.random.default_rng(0)
    s = DemoStore.create(sys.argv[2], attrs={"control_hz": 10, "task": "track the keypoints"})
    for n in (6, 4):
        s.append_episode({
            "action": rng.standard_normal((n, 2)).astype(np.float32),
            "proprio": rng.standard_normal((n, 3)).astype(np.float32),
            "keypoint": rng.standard_normal((n, 9, 2)).astype(np.float32),
        })  # fmt: skip
    s.close()
    export_lerobot(sys.argv[2], sys.argv[3], video=False)
    np.save(f"{sys.argv[3]}.keypoint.npy", DemoStore.open(sys.argv[2]).array("keypoint")[:])
    print(f"robo-s2 exported a (9, 2) keypoint feature to {sys.argv[3]}")
elif step == "load":
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("robo_s2/multi_axis", root=sys.argv[2])
    want = np.load(f"{sys.argv[2]}.keypoint.npy")
    got = np.stack([ds[i]["keypoint"].numpy() for i in range(ds.num_frames)])
    assert got.shape == want.shape == (10, 9, 2), got.shape
    assert np.array_equal(got, want)
    print(f"lerobot read keypoint per frame as {tuple(got.shape[1:])}, equal to the store's")
    feats = {
        "action": {"dtype": "float32", "shape": (2,), "names": None},
        "observation.state": {"dtype": "float32", "shape": (3,), "names": None},
        "grid": {"dtype": "float32", "shape": (4, 2), "names": None},
    }
    out = LeRobotDataset.create("robo_s2/written", fps=10, root=sys.argv[3], features=feats)
    rng = np.random.default_rng(1)
    grids = []
    for n in (5, 3):
        for _ in range(n):
            frame = {
                k: rng.standard_normal(v["shape"]).astype(np.float32) for k, v in feats.items()
            }
            out.add_frame({**frame, "task": "grid"})
            grids.append(frame["grid"])
        out.save_episode()
    out.finalize()
    np.save(f"{sys.argv[3]}.grid.npy", np.stack(grids))
    print(f"lerobot wrote a (4, 2) feature to {sys.argv[3]}")
elif step == "import":
    from robo_s2.data.interop.lerobot import import_lerobot
    from robo_s2.data.store import DemoStore

    import_lerobot(sys.argv[2], sys.argv[3], keys="all")
    grid = DemoStore.open(sys.argv[3]).array("grid")[:]
    want = np.load(f"{sys.argv[2]}.grid.npy")
    assert grid.shape == want.shape == (8, 4, 2) and np.array_equal(grid, want), grid.shape
    print(
        f"robo-s2 imported grid per step as {tuple(grid.shape[1:])}, equal to what lerobot was given"
    )
