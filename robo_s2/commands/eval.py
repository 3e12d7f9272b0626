"""``robo-s2 eval``: success rate of a checkpoint (or the scripted expert) in the simulation."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from robo_s2.core.config import to_plain
from robo_s2.errors import UserError
from robo_s2.evaluation.runner import EpisodeRecord, EvalResult, evaluate
from robo_s2.evaluation.shards import parse_shard


def _run_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not inside a Hydra app (called from Python)
        return Path.cwd()


def _set_values(cfg: DictConfig, key: str) -> dict:
    """The entries of ``cfg.<key>`` that are set (not null), as a plain dict."""
    node = OmegaConf.select(cfg, key)
    if node is None:
        return {}
    return {k: v for k, v in to_plain(node).items() if v is not None}


def merge(dirs: list[str]) -> dict:
    """``robo-s2 eval merge=[...]``: the shard runs' records as one ``eval_info.json`` (and its
    positions plot) in this run's directory."""
    from robo_s2.core.io import refuse_output_over_input, write_json_atomic
    from robo_s2.evaluation.plots import plot_positions
    from robo_s2.evaluation.shards import merge_eval_infos

    out = _run_dir()
    shards = [Path(str(d)).parent if str(d).endswith(".json") else Path(str(d)) for d in dirs]
    refuse_output_over_input(out, shards, "robo-s2 eval merge", nested=False)
    info = merge_eval_infos([str(d) for d in dirs])
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = info["ci95"]
    info["plot_path"] = str(
        plot_positions(
            info["per_episode"], info["positions"]["region"], out / "positions.png",
            title=f"{info['n_success']}/{info['n_episodes']} ({info['pc_success']:.1f}%) merged "
            f"from {len(dirs)} shards",
        )
    )  # fmt: skip
    path = write_json_atomic(out / "eval_info.json", info)
    print(
        f"eval: {info['n_success']}/{info['n_episodes']} success ({info['pc_success']:.1f}%, "
        f"95% CI {lo:.1f}\u2013{hi:.1f}%) merged from {len(dirs)} shards -> {path}"
    )
    return info


def run(cfg: DictConfig) -> EvalResult | dict:
    for name in ("OpenGL", "matplotlib"):  # their INFO notes are noise under Hydra's job logging
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.merge is not None:
        dirs = to_plain(cfg.merge)
        return merge(dirs if isinstance(dirs, list) else [dirs])
    if OmegaConf.is_missing(cfg, "checkpoint") or cfg.checkpoint in (None, ""):
        raise UserError(
            "checkpoint= is required: <train run>/checkpoints/best, or checkpoint=expert "
            "for the scripted expert"
        )
    bar = tqdm(total=None, desc="eval", unit="ep", dynamic_ncols=True, delay=1.0)
    counts = {"done": 0, "success": 0}

    def on_start(n: int) -> None:
        bar.total = n
        bar.refresh()

    def on_episode(rec: EpisodeRecord) -> None:
        counts["done"] += 1
        counts["success"] += int(rec.success)
        bar.update(1)
        bar.set_postfix(success=f"{counts['success']}/{counts['done']}")

    try:
        result = evaluate(
            checkpoint=str(cfg.checkpoint),
            n_episodes=cfg.n_episodes,
            positions=str(cfg.positions),
            seed=cfg.seed,
            workers=cfg.workers,
            envs_per_worker=cfg.envs_per_worker,
            threads=cfg.threads,
            pipeline=bool(cfg.pipeline),
            device=str(cfg.device),
            n_videos=cfg.n_videos,
            video_camera=str(cfg.video_camera),
            env_overrides=_set_values(cfg, "env_overrides"),
            execution=_set_values(cfg, "execution") or None,
            expert=_set_values(cfg, "expert"),
            precision=str(cfg.precision),
            allow_render_mismatch=bool(cfg.allow_render_mismatch),
            out_dir=_run_dir(),
            shard=parse_shard(cfg.shard),
            on_start=on_start,
            on_episode=on_episode,
        )
    finally:
        bar.close()
    print(result.summary())
    return result
