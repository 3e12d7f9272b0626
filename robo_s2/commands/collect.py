"""``robo-s2 collect``: scripted-expert demonstrations into a zarr demo store."""

from __future__ import annotations

from omegaconf import DictConfig
from tqdm import tqdm

from robo_s2.core.config import to_plain
from robo_s2.data.collection import CollectResult, collect


def run(cfg: DictConfig) -> CollectResult:
    env_kwargs = dict(to_plain(cfg.env))  # an env spec: its id picks the task (envs.make_env)
    bar = tqdm(total=cfg.n_episodes, desc="collect", unit="ep", dynamic_ncols=True, delay=1.0)

    def on_episode(res: CollectResult) -> None:
        bar.n = res.n_total
        bar.set_postfix(expert=f"{res.successes}/{res.attempts}", frames=res.n_frames)
        bar.refresh()

    try:
        res = collect(
            out=cfg.out,
            n_episodes=cfg.n_episodes,
            env_kwargs=env_kwargs,
            expert_kwargs=dict(to_plain(cfg.expert)),
            seed=cfg.seed,
            workers=cfg.workers,
            keep_failed=cfg.keep_failed,
            max_attempts=cfg.max_attempts,
            store_format=cfg.format,
            placement=cfg.placement,
            on_episode=on_episode,
        )
    finally:
        bar.close()
    if res.attempts == 0:
        print(
            f"collect: {cfg.out} already holds {res.n_total} episodes ({res.n_frames} frames); "
            "nothing to do"
        )
    else:
        print(
            f"collect: {res.n_total} episodes ({res.n_frames} frames) in {cfg.out}; "
            f"+{res.n_new} new, expert success {res.successes}/{res.attempts} "
            f"({100 * res.expert_success_rate:.1f}%), {res.discarded} discarded, "
            f"{res.seconds:.1f} s"
        )
    return res
