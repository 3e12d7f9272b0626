"""(robo_s2 venv) Check: robo-s2 imports a store diffusion_policy's ReplayBuffer wrote
(``check_dp_reads_export.py --write``), every array under the pusht preset's names, the (9, 2)
keypoint with its shape (``keys=all``).

    python check_import_of_dp_store.py DP_STORE.zarr WRITTEN.npz OUT.zarr
"""

import sys

import numpy as np

from robo_s2.data.interop.dp_zarr import import_dp
from robo_s2.data.store import DemoStore

src, written, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
res = import_dp(src, out, keys="all")
print(f"import: {res.n_new} episodes; not taken {res.not_taken}; changed {res.changed}")
s = DemoStore.open(out)
assert np.array_equal(s.episode_ends, written["episode_ends"])
print(f"imported keys {s.keys()}; episode ends {s.episode_ends.tolist()} as written")
np.testing.assert_array_equal(s.array("image")[:], written["img"])
np.testing.assert_array_equal(s.array("action")[:], written["action"])
np.testing.assert_array_equal(s.array("keypoint")[:], written["keypoint"])
np.testing.assert_array_equal(s.array("proprio")[:], written["state"][:, :2])  # pusht: agent x, y
np.testing.assert_array_equal(s.array("state")[:], written["state"])
print(
    "  img -> image, action, state -> state (and its agent x, y -> proprio), keypoint (9, 2): exact"
)
