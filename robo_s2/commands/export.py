"""``robo-s2 export``: a robo_s2 demo store to robomimic HDF5, diffusion_policy zarr or a
LeRobotDataset."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from robo_s2.core.config import to_plain
from robo_s2.core.io import refuse_output_over_input
from robo_s2.data.interop import ExportResult
from robo_s2.data.interop.base import FORMATS, format_of
from robo_s2.errors import UserError


def run(cfg: DictConfig) -> ExportResult:
    if not cfg.store:
        raise UserError("pass store=<the robo_s2 demo store to export, e.g. demos/cube_pick.zarr>")
    if not cfg.out:
        raise UserError(
            "pass out=<what to write: x.hdf5 (robomimic), x.zarr or x.zarr.zip (diffusion_policy), "
            "or a directory with format=lerobot>"
        )
    out = Path(str(cfg.out)).expanduser()
    refuse_output_over_input(out, [str(cfg.store)], "robo-s2 export")
    fmt = format_of(str(cfg.format), out, reading=False)
    bar = tqdm(desc="export", unit="ep", dynamic_ncols=True, delay=1.0)

    def on_episode(res: ExportResult) -> None:
        bar.total = res.total_episodes
        bar.set_postfix(frames=res.n_frames, refresh=False)
        bar.update(res.n_episodes - bar.n)  # displays only after the delay

    try:
        if fmt == "robomimic":
            from robo_s2.data.interop.robomimic_hdf5 import export_robomimic

            res = export_robomimic(
                cfg.store,
                out,
                image_key=str(cfg.image_key) if cfg.image_key else "auto",
                proprio_key=str(cfg.proprio_key),
                split_proprio=bool(cfg.split_proprio),
                next_obs=bool(cfg.next_obs),
                compression=cfg.compression,
                overwrite=bool(cfg.overwrite),
                val_fraction=float(cfg.val_fraction),
                split_seed=int(cfg.split_seed),
                on_episode=on_episode,
            )
        elif fmt == "lerobot":
            from robo_s2.data.interop.lerobot import export_lerobot

            res = export_lerobot(
                cfg.store,
                out,
                video=bool(cfg.video),
                codec=str(cfg.codec),
                crf=int(cfg.crf),
                fps=None if cfg.fps is None else float(cfg.fps),
                task=None if cfg.task is None else str(cfg.task),
                overwrite=bool(cfg.overwrite),
                on_episode=on_episode,
            )
        else:
            from robo_s2.data.interop.dp_zarr import export_dp

            keys = cfg["keys"]
            res = export_dp(
                cfg.store,
                out,
                keys=to_plain(keys),
                overwrite=bool(cfg.overwrite),
                on_episode=on_episode,
            )
    finally:
        bar.close()
    what = FORMATS[fmt]
    print(
        f"export: {res.n_episodes} episodes ({res.n_frames} frames) of {cfg.store} -> {out} "
        f"({what}, {res.bytes / 1e6:.1f} MB), {res.seconds:.1f} s"
    )
    for note in res.notes:
        print(f"export: {note}")
    return res
