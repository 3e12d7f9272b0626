"""What a training run shows and leaves for people (rank 0 only): the header line, the progress
bar, TensorBoard scalars, ``metrics.jsonl`` (one line per validation) and ``config.yaml`` (the
effective resolved config of the latest invocation)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class RunLog:
    def __init__(self, run_dir: Path, is_main: bool, progress: bool) -> None:
        self.run_dir = run_dir
        self.is_main = is_main
        self.progress = progress
        self.writer: Any = None  # TensorBoard SummaryWriter once opened
        self.bar: Any = None  # tqdm progress bar once started

    def open(
        self, step: int, cfg: Mapping[str, Any], history: list[dict[str, Any]], header: str
    ) -> None:
        """The run directory, its TensorBoard writer, config.yaml and metrics.jsonl (the
        validation history so far: a resumed run drops entries logged after its checkpoint)."""
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.progress:
            print(header)
        from omegaconf import OmegaConf
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=step if step else None)
        # (a resumed run's .hydra/ shows only the command line's config)
        (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        with open(self.run_dir / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)

    def start_bar(self, total: int, initial: int) -> Any:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            delay=1.0,
            disable=not (self.progress and self.is_main),
        )
        return self.bar

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def record(self, record: Mapping[str, Any]) -> None:
        """Append one validation record to metrics.jsonl."""
        if self.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
