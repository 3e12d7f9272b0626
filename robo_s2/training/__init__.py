"""The behaviour-cloning trainer (:mod:`robo_s2.training.trainer`, the loop) and its rooms:
:mod:`.setup` (the run's parts, in the order the seeded RNGs need), :mod:`.features` (cached
features or frames), :mod:`.validation`, :mod:`.resume` and :mod:`.state` (resuming, shared with
the pretrainer), :mod:`.run_log`, :mod:`.loop_state`, :mod:`.stop_signal`, and:

* :mod:`robo_s2.training.data` — a demo store's per-frame arrays in memory, finite-value checks,
  the episode-level train/validation split and window batches in the policy batch layout;
* :mod:`robo_s2.training.optim` — AdamW parameter groups, warmup + cosine schedule, weight EMA and
  the batch sampler (all with exact ``state_dict`` round trips for resuming);
* :mod:`robo_s2.training.distributed` — ``torchrun`` / DistributedDataParallel plumbing.
"""

from robo_s2.data.windows import Split, split_episodes
from robo_s2.training.data import SequenceData, check_finite
from robo_s2.training.optim import EMA, BatchSampler, make_optimizer, warmup_cosine

__all__ = [
    "EMA",
    "BatchSampler",
    "SequenceData",
    "Split",
    "check_finite",
    "make_optimizer",
    "split_episodes",
    "warmup_cosine",
]
