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

    form = FORMATS[fmt]
    options = form.function("export_options")(to_plain(cfg))
    try:
        res = form.function(f"export_{fmt}")(cfg.store, out, **options, on_episode=on_episode)
    finally:
        bar.close()
    what = form.title
    print(
        f"export: {res.n_episodes} episodes ({res.n_frames} frames) of {cfg.store} -> {out} "
        f"({what}, {res.bytes / 1e6:.1f} MB), {res.seconds:.1f} s"
    )
    for note in res.notes:
        print(f"export: {note}")
    return res
