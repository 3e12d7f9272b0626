"""(dp env) Check: diffusion_policy's own ReplayBuffer and SequenceSampler read a robo-s2 export,
and a store written by its ReplayBuffer (a (9, 2) keypoint included) is what robo-s2 imports.

    python check_dp_reads_export.py EXPORT(.zarr | .zarr.zip) STORE_DUMP.npz
    python check_dp_reads_export.py --write OUT.zarr WRITTEN.npz

Runs with diffusion_policy's ``common/replay_buffer.py`` and ``common/sampler.py`` (from its
repository, unchanged) on the path, and what they import: zarr 2, numcodecs, numba, numpy.
"""

import sys

import numpy as np
import zarr
from diffusion_policy.common.replay_buffer import ReplayBuffer
from diffusion_policy.common.sampler import SequenceSampler, get_val_mask

if sys.argv[1] == "--write":
    out, written = sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(0)
    rb = ReplayBuffer.create_from_path(out, mode="w")
    saved = {}
    for n in (7, 5, 9):
        yy, xx = np.mgrid[0:32, 0:32]
        ep = {
            "img": np.stack(
                [
                    np.stack([(xx * 3 + t) % 256, yy * 4 % 256, (xx + yy) % 256], -1)
                    for t in range(n)
                ]
            ).astype(np.uint8),
            "state": rng.standard_normal((n, 5)).astype(np.float32),
            "keypoint": rng.standard_normal((n, 9, 2)).astype(np.float32),
            "action": rng.standard_normal((n, 2)).astype(np.float32),
        }
        rb.add_episode(ep, compressors="disk")
        for k, v in ep.items():
            saved.setdefault(k, []).append(v)
    np.savez(
        written, episode_ends=rb.episode_ends[:], **{k: np.concatenate(v) for k, v in saved.items()}
    )
    print(
        f"diffusion_policy wrote {out}: {rb.n_episodes} episodes, {rb.n_steps} steps, keys {list(rb.keys())}"
    )
    sys.exit(0)

src, dump = sys.argv[1], np.load(sys.argv[2])
if src.endswith(".zip"):
    with zarr.ZipStore(src, mode="r") as zip_store:
        rb = ReplayBuffer.copy_from_store(zip_store, store=zarr.MemoryStore())
else:
    rb = ReplayBuffer.copy_from_path(src, store=zarr.MemoryStore())
ends = dump["episode_ends"]
print(
    f"ReplayBuffer read {src}: {rb.n_episodes} episodes, {rb.n_steps} steps, keys {sorted(rb.keys())}"
)
assert np.array_equal(rb.episode_ends[:], ends), (rb.episode_ends[:], ends)
worst = 0.0
for key in rb.keys():
    theirs, ours = rb[key][:], dump[f"data/{key}"]
    assert theirs.shape == ours.shape and theirs.dtype == ours.dtype, (
        key,
        theirs.shape,
        ours.shape,
    )
    worst = max(worst, float(np.max(np.abs(theirs.astype(np.float64) - ours.astype(np.float64)))))
print(f"  episode_ends and every array equal the store's (max abs difference {worst})")
horizon, pad_before, pad_after = 16, 1, 7
val_mask = get_val_mask(rb.n_episodes, val_ratio=0.34, seed=42)
sampler = SequenceSampler(
    rb,
    sequence_length=horizon,
    pad_before=pad_before,
    pad_after=pad_after,
    episode_mask=~val_mask,
)
starts = np.concatenate([[0], ends[:-1]])
checked = 0
for idx in range(len(sampler)):
    buffer_start, buffer_end, sample_start, sample_end = sampler.indices[idx]
    window = sampler.sample_sequence(idx)
    ep = int(np.searchsorted(ends, buffer_start, side="right"))
    s0, e0 = starts[ep], ends[ep]
    # the reference: the episode's steps with its first / last step repeated at the edges
    t = np.clip(
        np.arange(buffer_start - sample_start, buffer_start - sample_start + horizon), s0, e0 - 1
    )
    for key in rb.keys():
        assert np.array_equal(window[key], dump[f"data/{key}"][t]), (key, idx)
    checked += 1
print(
    f"  SequenceSampler (horizon {horizon}, pad {pad_before}/{pad_after}, train episodes "
    f"{int((~val_mask).sum())}): {checked} windows, each equal to the store's steps with "
    "edge padding"
)
