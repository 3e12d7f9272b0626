"""``robo-s2 import``: robomimic HDF5, diffusion_policy zarr or LeRobotDataset demos into a robo_s2
demo store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from robo_s2.core.config import to_plain
from robo_s2.data.interop import ImportResult
from robo_s2.data.interop.base import FORMATS, format_of
from robo_s2.errors import UserError


def run(cfg: DictConfig) -> ImportResult:
    if not cfg.src:
        raise UserError(
            "pass src=<a robomimic .hdf5 file, a diffusion_policy .zarr/.zarr.zip, or a "
            "LeRobotDataset directory>"
        )
    if not cfg.out:
        raise UserError("pass out=<the demo store to write, e.g. demos/imported.zarr>")
    src = Path(str(cfg.src)).expanduser()
    fmt = format_of(str(cfg.format), src, reading=True)
    bar = tqdm(desc="import", unit="ep", dynamic_ncols=True, delay=1.0)

    def on_episode(res: ImportResult) -> None:
        if bar.total is None:  # the first call: where this run starts
            bar.total, bar.n, bar.last_print_n = res.n_source, res.done_before, res.done_before
        skipped = {"skipped": len(res.skipped)} if res.skipped else {}
        bar.set_postfix(frames=res.n_frames, **skipped, refresh=False)
        bar.update(res.n_total + len(res.skipped) - bar.n)  # displays only after the delay

    common: dict[str, Any] = dict(
        skip_bad=bool(cfg.skip_bad), zarr_format=int(cfg.zarr_format), on_episode=on_episode
    )
    form = FORMATS[fmt]
    options = form.function("import_options")(to_plain(cfg))
    try:
        res = form.function(f"import_{fmt}")(src, cfg.out, **options, **common)
    finally:
        bar.close()
    n_handled = res.n_total + len(res.skipped) - res.done_before
    skipped = f", {len(res.skipped)} skipped as bad" if res.skipped else ""
    if n_handled == 0:
        print(
            f"import: {cfg.out} already holds all {res.n_total} episodes ({res.n_frames} frames) "
            f"of {form.title} {src}{skipped}; nothing to do"
        )
    else:
        resumed = f" (resumed after {res.done_before})" if res.done_before else ""
        print(
            f"import: {res.n_total} episodes ({res.n_frames} frames) in {cfg.out} from "
            f"{form.title} {src}; +{res.n_new} new{resumed}{skipped}, {res.seconds:.1f} s"
        )
    for line in not_taken_lines(res):
        print(line)
    return res


def not_taken_lines(res: ImportResult) -> list[str]:
    """What the import left behind or changed, one line each, with how to take the rest."""
    lines = []
    if res.not_taken:
        how = f"take them with {res.take_with}" if res.take_with else "no store key holds them"
        lines.append(f"import: not taken from the source: {', '.join(res.not_taken)} ({how})")
    if res.changed:
        lines.append(f"import: changed on the way in: {', '.join(res.changed)}")
    return lines
