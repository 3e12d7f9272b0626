"""(lerobot venv) Check (e): ``lerobot-train`` (lerobot 0.4.4's own training script) trains ACT a
few steps on a robo-s2 export, its decoder reading our AV1 videos.

    python train_act_on_export.py EXPORT_DIR OUT_DIR [STEPS]

Needs, besides what check (a) does, what lerobot's train script imports: termcolor, wandb,
pyserial, deepdiff, gymnasium, rerun-sdk, diffusers, imageio, imageio-ffmpeg,
opencv-python-headless, pynput. The backbone starts from random weights (no hub here).
"""

import sys

import pyav_video_reader
from lerobot.scripts.lerobot_train import main

root, out = sys.argv[1], sys.argv[2]
steps = sys.argv[3] if len(sys.argv) > 3 else "4"
pyav_video_reader.install()
sys.argv = [
    "lerobot-train", "--dataset.repo_id=robo_s2/export", f"--dataset.root={root}",
    "--dataset.video_backend=pyav", "--policy.type=act", "--policy.device=cpu",
    "--policy.push_to_hub=false", "--policy.pretrained_backbone_weights=null",
    f"--steps={steps}", "--batch_size=2", "--num_workers=0", "--log_freq=1",
    "--save_checkpoint=false", "--eval_freq=0", "--wandb.enable=false", f"--output_dir={out}",
]  # fmt: skip
main()
