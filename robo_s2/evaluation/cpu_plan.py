"""How an evaluation uses the CPU: one function decides env processes, envs per process, torch
threads in this process and llvmpipe threads in the env processes, for the cores it may use.

The rollout is a two-lane pipeline (:func:`robo_s2.evaluation.runner.run_episodes`): while one
lane's env processes simulate and render, this process computes the other lane's actions. So at
any moment about ``workers / 2`` env processes and this process's torch threads are busy, and the
plan keeps their sum at the cores given: no process oversubscribes them (a torch thread that has to
share its core with a renderer stalls the whole batch: the issue that asked for this plan
measured ViT-T forwards 15-20x slower on 2 threads than on 1 with the other core busy). Each env process holds several envs so that every
inference call sees a batch of about :data:`TARGET_BATCH` frames: a small ViT costs several times
less per frame at batch 8-16 than at batch 1-2, where op overhead, not FLOPs, sets the cost.
Each env process rasterizes in its own thread (``LP_NUM_THREADS=0``): its parallelism is the other
processes, and llvmpipe's thread pool costs more than it gives at these image sizes.

Per-episode results do not depend on the plan (an episode's actions depend on its own observations
only; tests/test_eval_plan.py checks it episode by episode).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from robo_s2.errors import UserError

# frames per inference call the automatic plan aims at: 16 was the fastest of 1-16 envs per worker
# (benchmarks/eval_speed.py --plan-sweep, docs/results/eval_speed)
TARGET_BATCH = 16
AUTO = "auto"


@dataclass(frozen=True)
class CpuPlan:
    """What :func:`plan_cpu` decided (recorded in ``eval_info.json`` as ``cpu_plan``)."""

    cores: int  # CPUs the evaluation may use
    workers: int  # env processes (0 = the envs run in this process)
    envs_per_worker: int  # envs per process (in this process when workers = 0)
    lanes: int  # pipeline lanes (2: one lane simulates while the other's actions are computed)
    torch_threads: int  # torch intra-op threads of this process while it evaluates
    raster_threads: int | None  # LP_NUM_THREADS of each env process (None: left as it is)

    @property
    def n_envs(self) -> int:
        return max(self.workers, 1) * self.envs_per_worker

    @property
    def batch(self) -> int:
        """Frames per inference call when every env is busy."""
        return math.ceil(self.n_envs / self.lanes)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_envs": self.n_envs, "batch": self.batch}


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _count(name: str, value: Any, low: int) -> int | None:
    """``None`` for auto, else a validated integer >= ``low``."""
    if value is None or value == AUTO:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name}={value!r} must be an integer >= {low} or auto")
    return int(value)


def plan_cpu(
    n_episodes: int,
    cores: int | None = None,
    workers: int | str = AUTO,
    envs_per_worker: int | str = AUTO,
    torch_threads: int | str = AUTO,
    pipeline: bool = True,
    device_type: str = "cpu",
) -> CpuPlan:
    """The plan for ``n_episodes`` on ``cores`` CPUs (None: :func:`available_cores`); any of
    ``workers``, ``envs_per_worker`` and ``torch_threads`` given as a number is kept as given and
    the others are planned around it."""
    cores = _count("cores", cores, 1) or available_cores()
    n_episodes = max(1, int(n_episodes))
    w = _count("workers", workers, 0)
    if w is None:  # one process per core, and two at least so that the lanes overlap
        w = max(2, cores - cores % 2)
    w = min(w, n_episodes)
    lanes = 2 if pipeline and w >= 2 else 1
    k = _count("envs_per_worker", envs_per_worker, 1)
    if k is None:
        per_lane = max(1, w // lanes)
        k = math.ceil(TARGET_BATCH / per_lane)
        k = max(1, min(k, n_episodes // max(w, 1)))  # no env without an episode to run
    t = _count("torch_threads", torch_threads, 1)
    if t is None:
        if device_type != "cpu":
            t = 1  # the GPU computes; one thread feeds it
        elif w == 0:
            t = cores  # envs and inference take turns in this process
        else:
            t = max(1, cores - w // lanes)
    return CpuPlan(
        cores=cores,
        workers=w,
        envs_per_worker=k,
        lanes=lanes,
        torch_threads=t,
        raster_threads=0 if w > 0 else None,
    )
