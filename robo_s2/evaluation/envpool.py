"""Env pools for evaluation rollouts: envs in this process, or env worker processes holding a
group of envs each (vectorized: one message carries a whole group's actions, so the policy sees
batches the encoder is fast at while the workers simulate).

Both pools have the same interface: ``n_slots`` envs, :meth:`reset` some slots with a forced cube
placement and an episode seed, :meth:`step` some slots with one action each (or start the steps
with :meth:`step_send` and collect them later with :meth:`step_recv`, so that worker processes
simulate while this process computes the next actions of other slots). A slot's episode is
independent of every other slot, so which slot runs an episode changes nothing about it; the caller
decides which episode runs where and when (no autoreset: a finished slot waits until it is reset
with the next placement or left idle).

Worker processes are spawned (never forked: MuJoCo's GL context and torch's threads do not survive a
fork), each builds its own env and renderer, ignores Ctrl-C (the parent handles it and closes the
pool) and exits by itself when its parent dies. Workers import numpy, gymnasium and mujoco, never
torch. Only the observation keys the caller asks for travel back through the pipe, and a step
can skip rendering its images when the caller will not read them.
"""

from __future__ import annotations

import os
import signal
import traceback
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np

from robo_s2.core.process import start_orphan_watch

# seconds a worker may take to build its env (EGL on a loaded CPU can be slow to start)
WORKER_START_TIMEOUT = 300.0


@dataclass
class ResetRequest:
    """Start an episode in ``slot``: forced cube placement, episode seed, record a video or not."""

    slot: int
    seed: int
    cube_pos: tuple[float, float]
    cube_yaw: float
    record: bool = False


@dataclass
class Transition:
    """What an env returns after a reset or a step (``obs`` holds the requested keys only)."""

    obs: dict[str, np.ndarray]
    success: bool = False
    lift: float = 0.0  # height of the cube's bottom above the table (m)
    terminated: bool = False
    truncated: bool = False
    frame: np.ndarray | None = None  # the video camera's image when the episode is recorded

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


class EnvRunner:
    """One env (``envs.make_env`` of an env spec) with evaluation helpers (used in-process and
    inside the workers)."""

    def __init__(
        self,
        env_kwargs: dict[str, Any],
        obs_keys: tuple[str, ...],
        video_camera: str = "front",
        videos: bool = False,
    ) -> None:
        from envs import make_env
        from envs.cube_pick import image_key

        self.env = make_env(env_kwargs)
        if (
            self.env.render_images or videos
        ):  # make the renderer now: GL failures are startup errors
            self.env.render_camera(self.env.cameras[0] if self.env.render_images else video_camera)
        self.obs_keys = tuple(obs_keys)
        self.video_camera = video_camera
        self._video_key = image_key(video_camera)
        self.record = False

    def _transition(self, obs: dict[str, np.ndarray], **kw: Any) -> Transition:
        frame = None
        if self.record:
            frame = obs.get(self._video_key)
            if frame is None:
                frame = self.env.render_camera(self.video_camera)
        # a step without a frame (the policy will not read it) has no image entries
        return Transition(obs={k: obs[k] for k in self.obs_keys if k in obs}, frame=frame, **kw)

    def reset(self, req: ResetRequest) -> Transition:
        self.record = bool(req.record)
        obs, info = self.env.reset(
            seed=int(req.seed),
            options={"cube_pos": tuple(req.cube_pos), "cube_yaw": float(req.cube_yaw)},
        )
        return self._transition(
            obs, success=bool(info.get("is_success", False)), lift=float(info["cube_lift"])
        )

    def step(self, action: np.ndarray, frame: bool = True) -> Transition:
        """One control step; ``frame=False`` skips rendering the observation's images (the
        physics is the same: rendering only reads the state)."""
        render = self.env.render_images
        self.env.render_images = render and frame
        try:
            obs, _, terminated, truncated, info = self.env.step(action)
        finally:
            self.env.render_images = render
        return self._transition(
            obs,
            success=bool(info.get("is_success", False)),
            lift=float(info["cube_lift"]),
            terminated=bool(terminated),
            truncated=bool(truncated),
        )

    def close(self) -> None:
        self.env.close()


class EnvGroup:
    """``n`` envs driven together (one worker process holds one group): a batch of resets or
    steps in, a list of transitions out, in the order asked."""

    def __init__(
        self,
        n: int,
        env_kwargs: dict[str, Any],
        obs_keys: tuple[str, ...],
        video_camera: str = "front",
        videos: bool = False,
    ) -> None:
        self.runners: list[EnvRunner] = []
        try:
            for _ in range(int(n)):
                self.runners.append(EnvRunner(env_kwargs, obs_keys, video_camera, videos))
        except BaseException:
            self.close()
            raise

    def reset(self, requests: list[tuple[int, ResetRequest]]) -> list[Transition]:
        return [self.runners[i].reset(r) for i, r in requests]

    def step(self, steps: list[tuple[int, np.ndarray, bool]]) -> list[Transition]:
        return [self.runners[i].step(a, frame) for i, a, frame in steps]

    def close(self) -> None:
        for runner in self.runners:
            runner.close()
        self.runners = []


class SerialEnvPool:
    """``envs`` envs in this process (``workers=0``), stepped one after the other."""

    def __init__(
        self,
        env_kwargs: dict[str, Any],
        obs_keys: tuple[str, ...],
        video_camera: str = "front",
        videos: bool = False,
        envs: int = 1,
    ) -> None:
        try:
            self.group = EnvGroup(envs, env_kwargs, obs_keys, video_camera, videos)
        except RuntimeError as exc:  # e.g. no usable OpenGL for the renderer
            from robo_s2.errors import UserError

            raise UserError(f"could not start the env: {exc}") from None
        self.n_slots = int(envs)
        self.groups = [list(range(self.n_slots))]
        self._results: list[Transition] = []

    def reset(self, requests: list[ResetRequest]) -> list[Transition]:
        return self.group.reset([(r.slot, r) for r in requests])

    def step_send(
        self, slots: list[int], actions: np.ndarray, frames: list[bool] | None = None
    ) -> None:
        frames = [True] * len(slots) if frames is None else frames
        self._results = self.group.step(list(zip(slots, actions, frames, strict=True)))

    def step_recv(self, slots: list[int]) -> list[Transition]:
        out, self._results = self._results, []
        return out

    def step(
        self, slots: list[int], actions: np.ndarray, frames: list[bool] | None = None
    ) -> list[Transition]:
        self.step_send(slots, actions, frames)
        return self.step_recv(slots)

    def close(self) -> None:
        self.group.close()

    def __enter__(self) -> SerialEnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- worker processes ----------------------------------------------------------------------------


def _worker_main(
    conn: Connection,
    env_kwargs: dict[str, Any],
    obs_keys: tuple[str, ...],
    video_camera: str,
    parent_pid: int,
    raster_threads: int,
    videos: bool,
    n_envs: int,
) -> None:
    # Mesa's software rasterizer (llvmpipe) starts one thread per CPU in every process; with
    # several workers sharing the CPUs that oversubscribes them (0 = rasterize in this thread).
    # A user's own setting wins.
    os.environ.setdefault("LP_NUM_THREADS", str(raster_threads))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    start_orphan_watch(parent_pid)
    try:
        group = EnvGroup(n_envs, env_kwargs, obs_keys, video_camera, videos)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", None))
    try:
        while True:
            try:
                cmd, payload = conn.recv()
            except (EOFError, OSError):
                break
            if cmd == "close":
                break
            try:
                out = group.reset(payload) if cmd == "reset" else group.step(payload)
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
                continue
            conn.send(("ok", out))
    finally:
        group.close()


class ProcessEnvPool:
    """``workers`` env processes of ``envs_per_worker`` envs each, stepped in lockstep (send to
    all, then receive from all). Slot ``s`` lives in worker ``s // envs_per_worker``; one message
    per worker carries all its envs' actions, one reply all their transitions."""

    def __init__(
        self,
        env_kwargs: dict[str, Any],
        obs_keys: tuple[str, ...],
        workers: int,
        video_camera: str = "front",
        videos: bool = False,
        envs_per_worker: int = 1,
        raster_threads: int | None = None,
    ) -> None:
        if workers < 1 or envs_per_worker < 1:
            raise ValueError(f"workers={workers}, envs_per_worker={envs_per_worker} must be >= 1")
        ctx = get_context("spawn")
        self.k = int(envs_per_worker)
        self.n_slots = int(workers) * self.k
        self.groups = [list(range(w * self.k, (w + 1) * self.k)) for w in range(int(workers))]
        self._conns: list[Connection] = []
        self._procs = []
        if raster_threads is None:
            raster_threads = max(1, (os.cpu_count() or 1) // int(workers))
        try:
            for i in range(int(workers)):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker_main,
                    args=(child, env_kwargs, tuple(obs_keys), video_camera, os.getpid(),
                          int(raster_threads), videos, self.k),
                    name=f"robo_s2-eval-env-{i}",
                    daemon=True,
                )  # fmt: skip
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            for i in range(int(workers)):
                try:
                    self._receive(i, timeout=WORKER_START_TIMEOUT)
                except RuntimeError as exc:
                    from robo_s2.errors import UserError

                    raise UserError(f"could not start the env workers: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _receive(self, worker: int, timeout: float | None = None) -> Any:
        conn = self._conns[worker]
        try:
            if timeout is not None and not conn.poll(timeout):
                raise RuntimeError(f"env worker {worker} did not answer within {timeout:.0f} s")
            status, payload = conn.recv()
        except (EOFError, OSError):
            code = self._procs[worker].exitcode
            raise RuntimeError(f"env worker {worker} died (exit code {code})") from None
        if status != "ok":
            raise RuntimeError(f"env worker {worker} failed: {payload}")
        return payload

    def _by_worker(self, slots: list[int], items: list[Any]) -> dict[int, list[Any]]:
        """``(local index, item)`` pairs per worker, in the order of ``slots``."""
        out: dict[int, list[Any]] = {}
        for slot, item in zip(slots, items, strict=True):
            out.setdefault(slot // self.k, []).append((slot % self.k, item))
        return out

    def _gather(self, slots: list[int]) -> list[Transition]:
        """Each involved worker's reply, put back in the order of ``slots``."""
        replies = {w: iter(self._receive(w)) for w in dict.fromkeys(s // self.k for s in slots)}
        return [next(replies[s // self.k]) for s in slots]

    def reset(self, requests: list[ResetRequest]) -> list[Transition]:
        slots = [r.slot for r in requests]
        for w, pairs in self._by_worker(slots, list(requests)).items():
            self._conns[w].send(("reset", pairs))
        return self._gather(slots)

    def step_send(
        self, slots: list[int], actions: np.ndarray, frames: list[bool] | None = None
    ) -> None:
        """Start one step in each of ``slots`` (they run while this process does other work);
        ``frames[i]`` False: slot ``i``'s next observation needs no image."""
        frames = [True] * len(slots) if frames is None else frames
        items = [(np.asarray(a), bool(f)) for a, f in zip(actions, frames, strict=True)]
        for w, pairs in self._by_worker(slots, items).items():
            self._conns[w].send(("step", [(i, a, f) for i, (a, f) in pairs]))

    def step_recv(self, slots: list[int]) -> list[Transition]:
        """Wait for the steps started by :meth:`step_send` in ``slots``."""
        return self._gather(slots)

    def step(
        self, slots: list[int], actions: np.ndarray, frames: list[bool] | None = None
    ) -> list[Transition]:
        self.step_send(slots, actions, frames)
        return self.step_recv(slots)

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def __enter__(self) -> ProcessEnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EnvPool(Protocol):
    """``n_slots`` envs driven by slot: reset some, step some (send then receive, so a caller can
    compute other slots' actions while these simulate), close all. ``groups`` lists the slots
    that simulate together (one worker process each): a pipeline lane is a set of groups."""

    n_slots: int
    groups: list[list[int]]

    def reset(self, requests: list[ResetRequest]) -> list[Transition]: ...

    def step_send(
        self, slots: list[int], actions: np.ndarray, frames: list[bool] | None = None
    ) -> None: ...

    def step_recv(self, slots: list[int]) -> list[Transition]: ...

    def close(self) -> None: ...

    def __enter__(self) -> EnvPool: ...

    def __exit__(self, *exc: object) -> None: ...


def make_env_pool(
    env_kwargs: dict[str, Any],
    obs_keys: tuple[str, ...],
    workers: int,
    video_camera: str = "front",
    videos: bool = False,
    envs_per_worker: int = 1,
    raster_threads: int | None = None,
) -> EnvPool:
    """``workers=0``: ``envs_per_worker`` envs in this process; ``workers=n``: ``n`` env processes
    of ``envs_per_worker`` envs each (``raster_threads``: llvmpipe threads per process, None = the
    CPUs split between them). ``videos``: some episodes will be recorded (so the renderer is
    needed even without image observations)."""
    if workers <= 0:
        return SerialEnvPool(env_kwargs, obs_keys, video_camera, videos, envs_per_worker)
    return ProcessEnvPool(
        env_kwargs, obs_keys, workers, video_camera, videos, envs_per_worker, raster_threads
    )
