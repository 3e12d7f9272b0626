"""(robo_s2 venv, which has robomimic 0.3.0) Check: robomimic's own training loop
(``robomimic.scripts.train.train``) trains BC and BC-RNN on a robo-s2 export, with validation on
the export's ``mask/valid`` split, from low-dim obs and from images.

    python run_robomimic_train.py EXPORT.hdf5 OUT_DIR

A few steps each (CPU, rollouts off: the export's env is a gym-type robo-s2 env that robomimic's
env wrappers do not build); prints each run's last train and validation losses.
"""

import json
import sys
from pathlib import Path

import torch
from robomimic.config import config_factory
from robomimic.scripts.train import train

data, out = sys.argv[1], sys.argv[2]
RUNS = {
    "bc_lowdim": (False, {"low_dim": ["proprio"], "rgb": []}),
    "bc_rnn_lowdim": (True, {"low_dim": ["proprio"], "rgb": []}),
    "bc_image": (False, {"low_dim": ["proprio"], "rgb": ["agentview_image", "wrist_image"]}),
    "bc_rnn_image": (True, {"low_dim": ["proprio"], "rgb": ["agentview_image", "wrist_image"]}),
}
for name, (rnn, obs) in RUNS.items():
    config = config_factory("bc")
    with config.values_unlocked():
        config.experiment.name = name
        config.experiment.validate = True
        config.experiment.logging.terminal_output_to_txt = False
        config.experiment.logging.log_tb = False
        config.experiment.save.enabled = False
        config.experiment.rollout.enabled = False
        config.experiment.epoch_every_n_steps = 5
        config.experiment.validation_epoch_every_n_steps = 3
        config.train.data = data
        config.train.output_dir = out
        config.train.hdf5_filter_key = "train"
        config.train.hdf5_validation_filter_key = "valid"
        config.train.num_epochs = 2
        config.train.batch_size = 8
        config.train.seq_length = 5 if rnn else 1
        config.train.cuda = False
        config.algo.rnn.enabled = rnn
        config.algo.rnn.horizon = 5
        config.observation.modalities.obs.low_dim = obs["low_dim"]
        config.observation.modalities.obs.rgb = obs["rgb"]
    torch.manual_seed(0)
    train(config, device=torch.device("cpu"))
    files = sum(1 for p in Path(out, name).rglob("*") if p.is_file())
    print(json.dumps({"run": name, "files": files}))  # the marker results.txt is cut by
