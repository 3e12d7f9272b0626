"""Success rate of a checkpoint (or of the scripted expert) in the cube-picking simulation.

Protocol. The S² paper evaluates each policy on "16 randomly chosen cube positions" (its Appendix A,
Table 8). Here the positions come from a named, seeded **position set** (:func:`position_set`):

* ``paper16`` — the paper's protocol: 16 positions drawn uniformly over the env's placement region;
  it is ``random`` with ``n = 16``.
* ``random`` — ``n`` positions drawn uniformly over the region (a larger ``n`` narrows the
  confidence interval: at 50 % success, 16 episodes give about +-22 points, 100 about +-10). Sets
  are nested: the first 16 positions of ``random`` with any ``n >= 16`` are ``paper16`` of the same
  seed.
* ``grid`` — a regular ``m x m`` grid of cell centres over the region, ``m = round(sqrt(n))``
  (so ``m * m`` episodes), for maps of where a policy fails.

The cube yaw is drawn uniformly in [-pi/4, pi/4) when the env randomizes yaw, else 0; x, y and yaw
come from separate streams so the same seed gives the same x, y either way. The same seed gives the
same positions, episode seeds and therefore the same results.

Rollouts. Episode ``i`` resets an env with ``options={"cube_pos", "cube_yaw"}`` and the seed
:func:`episode_seed` ``(seed, i)``; per step the current image is encoded with
:func:`robo_s2.encoders.feature_cache.encode_frames` (the training cache's exact preprocessing), batched over
the envs, on the best device (CUDA with bf16 autocast when present), and ``policy.act`` returns one
action per env from its per-env history (reset when an env starts an episode). ``workers=0`` runs
the envs in this process; ``workers=n`` runs ``n`` env processes of ``envs_per_worker`` envs each,
every env starting the next pending episode as soon as it finishes one (how many of each, and the
torch threads, :mod:`robo_s2.evaluation.cpu_plan` decides for the cores); with ``pipeline`` (the
default) the processes form two lanes so that one half simulates while the other half's actions
are computed, else all step in lockstep. An episode's result does not depend on which env ran it,
so every plan gives identical per-episode records whenever inference is batch-invariant (verified
bit-for-bit for fp32 on CPU for the checkpoints tested; a kernel may round differently at other
batch sizes, e.g. one 192-wide linear layer here by ~1e-6, and CUDA's may too).

Outputs (``out_dir``): ``eval_info.json`` (LeRobot-style ``pc_success`` and friends, a Wilson 95 %
interval, per-episode records, what was evaluated and how fast), ``videos/episode_XXX.mp4`` of the
first ``n_videos`` episodes (front camera), and ``positions.png`` (placements coloured by success).
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robo_s2.core.io import atomic_file, write_json_atomic
from robo_s2.data.interop import is_foreign
from robo_s2.errors import UserError
from robo_s2.evaluation.actors import Actor
from robo_s2.evaluation.cpu_plan import plan_cpu
from robo_s2.evaluation.envpool import EnvPool, ResetRequest, make_env_pool
from robo_s2.evaluation.stats import SuccessRate

EXPERT = "expert"
POSITION_SETS = ("paper16", "random", "grid")
PAPER16_N = 16
DEFAULT_N = {"paper16": PAPER16_N, "random": 100, "grid": 100}
YAW_RANGE = (-math.pi / 4, math.pi / 4)
# keys of the seed streams (SeedSequence spawn keys): positions, yaws, episode seeds
_XY_STREAM, _YAW_STREAM, _EPISODE_STREAM = 0x5059, 0x5941, 0x4550

Placement = tuple[float, float, float]


# --- position sets and seeds ---------------------------------------------------------------------


def _check_region(region: Sequence[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    try:
        (x0, x1), (y0, y1) = ((float(a), float(b)) for a, b in region)
    except (TypeError, ValueError):
        raise UserError(f"region {region!r} must be ((x_min, x_max), (y_min, y_max))") from None
    if not (x0 <= x1 and y0 <= y1):
        raise UserError(f"region {region!r} must be ((x_min, x_max), (y_min, y_max))")
    return (x0, x1), (y0, y1)


def _default_cube_region() -> Any:
    """The default task's cube region, as its env constructor states it."""
    import inspect

    from envs import ENV_ID, env_class

    return inspect.signature(env_class(ENV_ID)).parameters["cube_region"].default


def position_set(
    name: str,
    n: int | None = None,
    seed: int = 0,
    region: Sequence[Sequence[float]] | None = None,
    randomize_yaw: bool = False,
) -> list[Placement]:
    """Cube placements ``[(x, y, yaw), ...]`` of a named position set (see the module docstring)
    over ``region`` (None: the default task's own cube region).

    ``n`` is the number of episodes (``None``: 16 for ``paper16``, 100 otherwise); ``paper16``
    accepts only 16, ``grid`` rounds to a square number.
    """
    if name not in POSITION_SETS:
        raise UserError(
            f"unknown position set '{name}'; choose one of: {', '.join(POSITION_SETS)} "
            "(positions=paper16 is the S2 paper's 16-position protocol)"
        )
    if region is None:
        region = _default_cube_region()
    if n is None:
        n = DEFAULT_N[name]
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise UserError(f"n_episodes={n!r} must be an integer > 0")
    n = int(n)
    if name == "paper16" and n != PAPER16_N:
        raise UserError(
            f"positions=paper16 is the paper's 16 positions, not {n}; leave n_episodes unset or "
            f"use positions=random n_episodes={n}"
        )
    (x0, x1), (y0, y1) = _check_region(region)
    seed = int(seed)
    if name == "grid":
        side = max(1, round(math.sqrt(n)))
        xs = x0 + (np.arange(side) + 0.5) * (x1 - x0) / side
        ys = y0 + (np.arange(side) + 0.5) * (y1 - y0) / side
        xy = np.array([(x, y) for x in xs for y in ys], dtype=np.float64)
    else:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_XY_STREAM,)))
        u = rng.random((n, 2))
        xy = np.stack([x0 + u[:, 0] * (x1 - x0), y0 + u[:, 1] * (y1 - y0)], axis=1)
    if randomize_yaw:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_YAW_STREAM,)))
        yaw = YAW_RANGE[0] + rng.random(len(xy)) * (YAW_RANGE[1] - YAW_RANGE[0])
    else:
        yaw = np.zeros(len(xy))
    return [(float(x), float(y), float(a)) for (x, y), a in zip(xy, yaw, strict=True)]


def episode_seed(seed: int, index: int) -> int:
    """Env (and expert-noise) seed of evaluation episode ``index``: a function of both only."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(_EPISODE_STREAM, int(index)))
    return int(ss.generate_state(1)[0])


# --- results -------------------------------------------------------------------------------------


@dataclass
class EpisodeRecord:
    index: int
    seed: int
    cube_pos: list[float]
    cube_yaw: float
    success: bool
    steps: int
    max_lift: float  # highest the cube's bottom got above the table (m): how close a failure came

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalResult(SuccessRate):
    records: list[EpisodeRecord]
    positions: str
    seed: int
    seconds: float
    env_steps: int
    info: dict[str, Any] = field(default_factory=dict)
    info_path: Path | None = None
    video_paths: list[Path] = field(default_factory=list)
    plot_path: Path | None = None

    @property
    def n_episodes(self) -> int:
        return len(self.records)

    @property
    def n_success(self) -> int:
        return sum(r.success for r in self.records)

    def summary(self) -> str:
        lo, hi = self.ci95
        where = f" -> {self.info_path}" if self.info_path else ""
        return (
            f"eval: {self.n_success}/{self.n_episodes} success ({self.pc_success:.1f}%, "
            f"95% CI {lo:.1f}\u2013{hi:.1f}%) on {self.positions} in "
            f"{self.seconds:.{0 if self.seconds >= 10 else 1}f} s{where}"
        )


# --- what is evaluated ---------------------------------------------------------------------------


@dataclass
class EvalTarget:
    """An actor plus the env it runs in and what to report about it."""

    actor: Actor
    env_kwargs: dict[str, Any]
    env_description: dict[str, Any]
    describe: dict[str, Any]


def checkpoint_env_kwargs(meta: Mapping[str, Any], path: str | Path = "") -> dict[str, Any]:
    """The env spec a checkpoint was trained for (its task ``id`` and constructor kwargs); refuses
    checkpoints of envs robo_s2 cannot build (foreign demos, unregistered tasks)."""
    from envs import TASKS, env_parameters
    from envs.cube_pick import render_profile

    env = meta.get("env") or {}
    if is_foreign({"env": env}):
        raise UserError(
            f"this checkpoint was trained on {env.get('id') or 'unknown-env'} demos; evaluation "
            f"needs {' or '.join(TASKS)} (the registered tasks; checkpoint {path})"
        )
    env_id = str(env["id"])
    kwargs = env.get("kwargs")
    if kwargs is None:  # an older description: the constructor kwargs at the top level
        kwargs = {k: env[k] for k in env_parameters(env_id) if k in env}
    # descriptions from before the render keys were rendered with the legacy profile
    return {"id": env_id, **dict(kwargs), **render_profile(kwargs)}


def check_render_profile(
    trained: Mapping[str, Any], now: Mapping[str, Any], path: str | Path, allow: bool = False
) -> None:
    """Refuse to evaluate a policy on frames rendered differently from its demos' (shadows, shadow
    map, MSAA change what the encoder sees) unless the user allows it."""
    from envs.cube_pick import render_profile

    a, b = render_profile(trained), render_profile(now)
    if a != b and not allow:
        raise UserError(
            f"the policy in {path} was trained on frames rendered with {_settings(a)}, this "
            f"evaluation renders {_settings(b)}; evaluate with the demos' profile, or pass "
            "allow_render_mismatch=true to do it anyway"
        )


def _settings(profile: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in profile.items())


def eval_precision(requested: str, trained: str | None, device: Any) -> str:
    """The precision the encoder runs in at evaluation: ``auto`` = the one its training features
    were computed in (``feature_precision`` in the checkpoint), where this device runs it
    natively, else fp32; ``fp32`` / ``bf16`` as asked."""
    from robo_s2.device import bf16_supported, check_precision, resolve_precision

    requested = check_precision(requested)
    if requested != "auto":
        return resolve_precision(requested, device)
    if trained is None:  # checkpoints from before precisions were recorded
        trained = "bf16" if device.type == "cuda" else "fp32"
    return "bf16" if trained == "bf16" and bf16_supported(device) else "fp32"


def build_env_kwargs(
    base: Mapping[str, Any], overrides: Mapping[str, Any] | None, render_images: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``base`` env kwargs with ``overrides`` (None values ignored) applied; returns the kwargs and
    the env's ``describe()`` (from a probe env without rendering). Bad settings are UserErrors."""
    from envs import ENV_ID, env_parameters, make_env

    over = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    settable = env_parameters(str(base.get("id") or ENV_ID))
    unknown = sorted(set(over) - set(settable))
    if unknown:
        raise UserError(
            f"unknown env_overrides {unknown}; settable: "
            f"{', '.join(p for p in settable if p != 'render_mode')}"
        )
    kwargs = {**dict(base), **over, "render_images": bool(render_images), "render_mode": None}
    try:
        probe = make_env({**kwargs, "render_images": False})
    except (TypeError, ValueError) as exc:
        source = "the checkpoint's env settings" if base else "the default env settings"
        if over:
            source += f" with env_overrides {over}"
        raise UserError(
            f"the env cannot be built from {source}: {' '.join(str(exc).split())}"
        ) from None
    description = probe.describe()
    probe.close()
    return kwargs, description


def _check_policy_fits_env(ckpt: Any, env: Mapping[str, Any]) -> None:
    from envs.cube_pick import image_key

    policy, path = ckpt.policy, ckpt.path
    action_dim = int(env["action_dim"])
    proprio_dim = len(env["proprio_semantics"])
    if policy.action_dim != action_dim:
        raise UserError(
            f"the policy in {path} outputs {policy.action_dim}-D actions but the env takes "
            f"{action_dim}-D ({', '.join(env['action_semantics'])}); the checkpoint was trained "
            "for another env or action space"
        )
    if policy.proprio_dim not in (0, proprio_dim):
        raise UserError(
            f"the policy in {path} takes {policy.proprio_dim}-D proprioception but the env gives "
            f"{proprio_dim}-D; the checkpoint was trained for another env"
        )
    keys = [image_key(c) for c in env["cameras"]]
    if ckpt.image_key not in keys and ckpt.image_key != getattr(ckpt.encoder, "input_key", None):
        raise UserError(
            f"the policy in {path} sees obs '{ckpt.image_key}', the env renders {keys}; "
            "the checkpoint was trained with another camera"
        )
    if ckpt.encoder.image_size > int(env["image_size"]):
        raise UserError(
            f"encoder needs {ckpt.encoder.image_size}px images, the env renders "
            f"{env['image_size']}px; do not lower env_overrides.image_size below the encoder's"
        )


def load_target(
    checkpoint: str | Path,
    device: Any,
    env_overrides: Mapping[str, Any] | None = None,
    execution: Mapping[str, Any] | None = None,
    expert: Mapping[str, Any] | None = None,
    precision: str = "auto",
    allow_render_mismatch: bool = False,
) -> EvalTarget:
    """The actor and env of ``checkpoint`` (a checkpoint directory or ``"expert"``).

    A policy's env renders only the camera the policy sees; the expert's env renders nothing but
    the recorded episodes' video frames. A policy is evaluated under its demos' render profile
    unless ``allow_render_mismatch``; its encoder runs in :func:`eval_precision`.
    """
    from robo_s2.evaluation.actors import ExpertActor, PolicyActor

    if str(checkpoint) == EXPERT:
        expert = {"noise_std": 0.0, **dict(expert or {})}  # evaluated noiseless unless asked
        env_kwargs, desc = build_env_kwargs({}, env_overrides, render_images=False)
        actor = ExpertActor(env_kwargs, expert)
        about = {
            "checkpoint": EXPERT,
            "policy": "scripted_expert",
            "expert": expert,
            "execution": None,
            "encoder": None,
        }
        return EvalTarget(actor, env_kwargs, desc, about)

    from robo_s2.core.versions import mujoco_mismatch
    from robo_s2.training.checkpoint import load_checkpoint, read_meta

    path = Path(checkpoint)
    base = checkpoint_env_kwargs(read_meta(path), path)  # refuse foreign envs before loading
    ckpt = load_checkpoint(path, device=device)
    drift = mujoco_mismatch(ckpt.meta.get("versions"))
    if drift is not None:
        print(f"warning: {drift}", file=sys.stderr)
    sees_frames = getattr(ckpt.encoder, "input_key", None) is None  # the oracle reads the state
    env_kwargs, desc = build_env_kwargs(base, env_overrides, render_images=sees_frames)
    if sees_frames:
        check_render_profile(base, env_kwargs, path, allow_render_mismatch)
    _check_policy_fits_env(ckpt, desc)
    trained_precision = ckpt.meta.get("feature_precision")
    run_precision = eval_precision(precision, trained_precision, device)
    # render only the camera the policy sees (an unused camera costs a full render per step)
    if sees_frames:
        from envs.cube_pick import camera_of

        env_kwargs["cameras"] = [camera_of(ckpt.image_key)]
    if execution:
        ckpt.policy.set_execution({**ckpt.policy.execution, **dict(execution)})
    enc = ckpt.meta.get("encoder", {})
    about = {
        "checkpoint": str(path.resolve()),
        "policy": ckpt.policy.name,
        "policy_config": ckpt.policy.config,
        "execution": dict(ckpt.policy.execution),
        "encoder": {
            "label": enc.get("label"),
            "fingerprint": enc.get("fingerprint"),
            "precision": run_precision,
            "trained_precision": trained_precision,
        },
        "render_profile": desc["render_profile"],
        "image_key": ckpt.image_key,
        "train_step": ckpt.meta.get("step"),
    }
    policy_actor = PolicyActor(ckpt.policy, ckpt.encoder, ckpt.image_key, device, run_precision)
    return EvalTarget(policy_actor, env_kwargs, desc, about)


# --- rollouts ------------------------------------------------------------------------------------


@dataclass
class EpisodeSpec:
    """What episode ``index`` is: its env seed and forced cube placement."""

    index: int
    seed: int
    x: float
    y: float
    yaw: float


def episode_specs(placements: Sequence[Placement], seed: int) -> list[EpisodeSpec]:
    """Episode ``i`` of a position set: placement ``i`` and seed :func:`episode_seed` ``(seed, i)``."""
    return [
        EpisodeSpec(i, episode_seed(seed, i), float(x), float(y), float(yaw))
        for i, (x, y, yaw) in enumerate(placements)
    ]


@dataclass
class _Running:
    episode: EpisodeSpec
    steps: int = 0
    success: bool = False
    max_lift: float = 0.0
    frames: list[np.ndarray] | None = None

    def keep_frame(self, frame: np.ndarray | None) -> None:
        if self.frames is not None and frame is not None:
            self.frames.append(frame)

    def record(self) -> EpisodeRecord:
        ep = self.episode
        return EpisodeRecord(
            index=ep.index,
            seed=ep.seed,
            cube_pos=[ep.x, ep.y],
            cube_yaw=ep.yaw,
            success=bool(self.success),
            steps=self.steps,
            max_lift=self.max_lift,
        )


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> Path:
    """Frames ``(H, W, 3)`` uint8 to an H.264 mp4 (imageio-ffmpeg)."""
    import logging

    import imageio.v2 as iio

    logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)  # macro-block resize notes
    out = Path(path)
    with atomic_file(out) as tmp:
        writer = iio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=16)
        try:
            for frame in frames:
                writer.append_data(np.asarray(frame, np.uint8))
        finally:
            writer.close()
    return out


@dataclass
class Rollouts:
    records: list[EpisodeRecord]
    env_steps: int
    videos: list[Path]
    startup_s: float  # starting the env workers (spawn, imports, env and renderer creation)
    rollout_s: float  # the episodes themselves (videos included)

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / max(self.rollout_s, 1e-9)


@dataclass
class _Lane:
    """A group of env slots with its own actor; lanes take turns so that one lane's envs simulate
    while the next lane's actions are computed."""

    actor: Actor
    slots: list[int]  # pool slots; the actor numbers them 0..len-1
    active: dict[int, _Running] = field(default_factory=dict)
    obs: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    in_flight: list[int] = field(default_factory=list)


def run_episodes(
    actor: Actor,
    env_kwargs: dict[str, Any],
    episodes: Sequence[EpisodeSpec],
    workers: int = 0,
    n_videos: int = 0,
    video_dir: str | Path | None = None,
    video_camera: str = "front",
    pipeline: bool = True,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
    envs_per_worker: int = 1,
    raster_threads: int | None = None,
) -> Rollouts:
    """Roll ``actor`` out on ``episodes``: records in episode order, env steps, the written videos
    (of episodes with ``index < n_videos``) and timings.

    Envs are stepped in lockstep; with ``pipeline`` and two or more workers the workers' env
    groups form two lanes that alternate: lane A's envs simulate while lane B's actions are
    computed (batched over lane B), then the other way round, so neither the workers nor this
    process sit idle. A step renders only the frames the actor will read. An episode's result
    does not depend on its lane or slot.
    """
    fps = float(env_kwargs.get("control_hz", 10.0))
    t0 = time.perf_counter()
    videos_wanted = video_dir is not None and n_videos > 0
    with make_env_pool(
        env_kwargs, actor.obs_keys, workers, video_camera, videos_wanted, envs_per_worker,
        raster_threads,
    ) as pool:  # fmt: skip
        t1 = time.perf_counter()
        rollout = _Rollout(pool, actor, episodes, pipeline, n_videos, video_dir, fps, on_episode)
        rollout.run()
        t2 = time.perf_counter()
    records = rollout.records
    return Rollouts(
        records=[records[i] for i in sorted(records)],
        env_steps=rollout.env_steps,
        videos=sorted(rollout.videos),
        startup_s=t1 - t0,
        rollout_s=t2 - t1,
    )


class _Rollout:
    """The state of one :func:`run_episodes` over an open env pool: the pending episodes, the
    lanes, and the records and videos of the finished episodes."""

    def __init__(
        self,
        pool: EnvPool,
        actor: Actor,
        episodes: Sequence[EpisodeSpec],
        pipeline: bool,
        n_videos: int,
        video_dir: str | Path | None,
        fps: float,
        on_episode: Callable[[EpisodeRecord], None] | None,
    ) -> None:
        self.pool = pool
        self.pending = deque(episodes)
        self.n_videos, self.video_dir, self.fps = n_videos, video_dir, fps
        self.on_episode = on_episode
        self.records: dict[int, EpisodeRecord] = {}
        self.videos: list[Path] = []
        self.env_steps = 0
        groups = pool.groups  # the slots of one worker process simulate together
        n_lanes = 2 if pipeline and len(groups) >= 2 else 1
        self.lanes = [
            _Lane(actor if i == 0 else actor.fork(), [s for g in groups[i::n_lanes] for s in g])
            for i in range(n_lanes)
        ]

    def run(self) -> None:
        """Every episode to its end: each lane collects its envs' last step, then sends their
        next actions, while the other lane's envs simulate."""
        for lane in self.lanes:
            lane.actor.begin(len(lane.slots))
            self._launch(lane, range(len(lane.slots)))
        while any(lane.active for lane in self.lanes):
            for lane in self.lanes:
                if lane.in_flight:
                    self._collect(lane)
                if lane.active:
                    self._send_actions(lane)

    def _launch(self, lane: _Lane, local_slots: Sequence[int]) -> None:
        """Start the next pending episodes on ``local_slots`` (as many as are pending)."""
        requests = []
        for i in local_slots:
            if not self.pending:
                break
            ep = self.pending.popleft()
            record = self.video_dir is not None and ep.index < self.n_videos
            requests.append(ResetRequest(lane.slots[i], ep.seed, (ep.x, ep.y), ep.yaw, record))
            lane.active[i] = _Running(ep, frames=[] if record else None)
        if not requests:
            return
        started = list(local_slots)[: len(requests)]
        lane.actor.start(started, [r.seed for r in requests])
        for i, tr in zip(started, self.pool.reset(requests), strict=True):
            run = lane.active[i]
            lane.obs[i] = tr.obs
            run.success, run.max_lift = tr.success, tr.lift
            run.keep_frame(tr.frame)

    def _send_actions(self, lane: _Lane) -> None:
        local = sorted(lane.active)
        actions = lane.actor.act(local, [lane.obs[i] for i in local])
        frames = lane.actor.frames_needed(local)
        self.pool.step_send([lane.slots[i] for i in local], actions, frames)
        lane.in_flight = local

    def _collect(self, lane: _Lane) -> None:
        """Receive the lane's stepped envs; finish the episodes that ended and start new ones."""
        stepped, lane.in_flight = lane.in_flight, []
        transitions = self.pool.step_recv([lane.slots[i] for i in stepped])
        finished = []
        for i, tr in zip(stepped, transitions, strict=True):
            run = lane.active[i]
            run.steps += 1
            self.env_steps += 1
            run.success = run.success or tr.success
            run.max_lift = max(run.max_lift, tr.lift)
            lane.obs[i] = tr.obs
            run.keep_frame(tr.frame)
            if not tr.done:
                continue
            rec = self._finish(run)
            finished.append(i)
            del lane.active[i]
            if self.on_episode is not None:
                self.on_episode(rec)
        self._launch(lane, finished)

    def _finish(self, run: _Running) -> EpisodeRecord:
        """Record an ended episode and write its video (if it was recorded)."""
        rec = run.record()
        self.records[rec.index] = rec
        if run.frames:
            name = f"episode_{rec.index:03d}.mp4"
            assert self.video_dir is not None  # frames are only kept when videos are written
            self.videos.append(write_video(run.frames, Path(self.video_dir) / name, self.fps))
        return rec


# --- the whole evaluation ------------------------------------------------------------------------


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (the plan's), restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(
    checkpoint: str | Path,
    n_episodes: int | None = None,
    positions: str = "paper16",
    seed: int = 0,
    workers: int | str = "auto",
    device: str = "auto",
    n_videos: int = 4,
    video_camera: str = "front",
    pipeline: bool = True,
    env_overrides: Mapping[str, Any] | None = None,
    execution: Mapping[str, Any] | None = None,
    expert: Mapping[str, Any] | None = None,
    precision: str = "auto",
    allow_render_mismatch: bool = False,
    out_dir: str | Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
    shard: tuple[int, int] | None = None,
    envs_per_worker: int | str = "auto",
    threads: int | str = "auto",
    cores: int | None = None,
) -> EvalResult:
    """Evaluate ``checkpoint`` (a checkpoint directory or ``"expert"``) on a position set.

    With ``out_dir`` writes ``eval_info.json``, videos of the first ``n_videos`` episodes and the
    positions plot there. ``on_start(n)`` is called with the number of episodes once they are known,
    ``on_episode(record)`` after every finished episode (in completion order). ``precision``
    (auto | fp32 | bf16) is the encoder's (:func:`eval_precision`); ``allow_render_mismatch``
    evaluates under another render profile than the demos' (shadows, MSAA). ``shard`` ``(i, n)``
    evaluates only the i-th of n slices of the position set (:mod:`robo_s2.evaluation.shards`).
    ``workers``, ``envs_per_worker``, ``threads`` (this process's torch threads): "auto" = planned
    for ``cores`` CPUs (None: this process's) by :func:`robo_s2.evaluation.cpu_plan.plan_cpu`.
    """
    from robo_s2.device import resolve_device
    from robo_s2.evaluation.shards import shard_range

    _check_eval_args(checkpoint, n_episodes, positions, seed, workers, n_videos, video_camera)
    torch_device = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else None
    want_videos = out is not None and n_videos > 0
    target = load_target(
        checkpoint, torch_device, env_overrides, execution, expert, precision,
        allow_render_mismatch,
    )  # fmt: skip
    desc = target.env_description
    placements = position_set(
        positions, n_episodes, seed, desc["cube_region"], bool(desc["randomize_yaw"])
    )
    episodes = episode_specs(placements, seed)
    if shard is not None:
        episodes = [episodes[i] for i in shard_range(len(episodes), shard)]
    if on_start is not None:
        on_start(len(episodes))
    plan = plan_cpu(
        len(episodes), cores, workers, envs_per_worker, threads, pipeline, torch_device.type
    )

    start = time.perf_counter()
    with torch_threads(plan.torch_threads):
        rollouts = run_episodes(
            target.actor, target.env_kwargs, episodes, workers=plan.workers,
            n_videos=n_videos if want_videos else 0,
            video_dir=out / "videos" if out is not None and want_videos else None,
            video_camera=video_camera, pipeline=pipeline, on_episode=on_episode,
            envs_per_worker=plan.envs_per_worker, raster_threads=plan.raster_threads,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    records, env_steps, videos = rollouts.records, rollouts.env_steps, rollouts.videos
    result = EvalResult(records, positions, int(seed), seconds, env_steps, video_paths=videos)
    result.info = _eval_info(
        result, rollouts, target, torch_device, plan.workers, pipeline, env_overrides
    )
    result.info["positions"]["n"] = len(placements)  # the set's size, also for one shard of it
    result.info["cpu_plan"] = plan.to_dict()
    if shard is not None:
        result.info["shard"] = {"index": shard[0], "count": shard[1], "n": len(records)}
    if out is not None:
        _write_eval_outputs(result, out, checkpoint, desc)
    return result


def _check_eval_args(
    checkpoint: str | Path,
    n_episodes: int | None,
    positions: str,
    seed: int,
    workers: int | str,
    n_videos: int,
    video_camera: str,
) -> None:
    """The UserErrors of :func:`evaluate`'s arguments, raised before anything is loaded."""
    if checkpoint is None or str(checkpoint).strip() in ("", "???", "None"):
        raise UserError(
            "checkpoint= is required: <run dir>/checkpoints/best (from robo-s2 train), "
            "or checkpoint=expert for the scripted expert"
        )
    if positions not in POSITION_SETS:
        position_set(positions)  # raises the unknown-set error
    if n_episodes is not None and (
        isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes <= 0
    ):
        raise UserError(f"n_episodes={n_episodes!r} must be an integer > 0 (or unset)")
    if workers != "auto" and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
    ):
        raise UserError(
            f"workers={workers!r} must be an integer >= 0 (0 = envs in this process) or auto"
        )
    if isinstance(n_videos, bool) or not isinstance(n_videos, int) or n_videos < 0:
        raise UserError(f"n_videos={n_videos!r} must be an integer >= 0")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed={seed!r} must be an integer >= 0")
    if video_camera not in ("front", "wrist"):
        raise UserError(f"video_camera={video_camera!r}; choose front or wrist")
    position_set(positions, n_episodes, seed)  # validates n for the set before loading anything


def _eval_info(
    result: EvalResult,
    rollouts: Rollouts,
    target: EvalTarget,
    device: Any,
    workers: int,
    pipeline: bool,
    env_overrides: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``eval_info.json`` without the output paths (those are added when written)."""
    from robo_s2 import __version__
    from robo_s2.core.versions import software_versions

    records, desc = result.records, target.env_description
    lo, hi = result.ci95
    lengths = [r.steps for r in records]
    ok_lengths = [r.steps for r in records if r.success]
    return {
        "pc_success": result.pc_success,
        "n_success": result.n_success,
        "n_episodes": result.n_episodes,
        "ci95": [lo, hi],
        "ci_method": "wilson score, 95%",
        "avg_episode_length": float(np.mean(lengths)) if lengths else 0.0,
        "avg_success_length": float(np.mean(ok_lengths)) if ok_lengths else None,
        "positions": {
            "name": result.positions,
            "seed": result.seed,
            "n": len(records),
            "region": [list(map(float, r)) for r in desc["cube_region"]],
            "randomize_yaw": bool(desc["randomize_yaw"]),
        },
        **target.describe,
        "device": str(device),
        "workers": workers,
        "pipeline": bool(pipeline and workers >= 2),
        "eval_s": result.seconds,
        "eval_ep_s": result.seconds / max(len(records), 1),
        "startup_s": rollouts.startup_s,
        "rollout_s": rollouts.rollout_s,
        "env_steps": result.env_steps,
        "env_steps_per_s": rollouts.env_steps_per_s,
        "env": {
            "id": desc["id"],
            "kwargs": {**desc["kwargs"], "render_images": target.env_kwargs["render_images"]},
        },
        "env_overrides": {k: v for k, v in dict(env_overrides or {}).items() if v is not None},
        "per_episode": [r.to_dict() for r in records],
        "robo_s2_version": __version__,
        "versions": software_versions(),
    }


def _write_eval_outputs(
    result: EvalResult, out: Path, checkpoint: str | Path, desc: Mapping[str, Any]
) -> None:
    """The positions plot and ``eval_info.json`` (with the video and plot paths) in ``out``."""
    from robo_s2.evaluation.plots import plot_positions

    out.mkdir(parents=True, exist_ok=True)
    lo, hi = result.ci95
    title = (
        f"{Path(str(checkpoint)).name if str(checkpoint) != EXPERT else EXPERT}: "
        f"{result.n_success}/{result.n_episodes} ({result.pc_success:.1f}%, "
        f"95% CI {lo:.1f}-{hi:.1f}%) on {result.positions}, seed {result.seed}"
    )
    result.plot_path = plot_positions(
        [r.to_dict() for r in result.records],
        desc["cube_region"],
        out / "positions.png",
        title=title,
        cube_size=float(desc.get("cube_size", 0.04)),
    )
    result.info["video_paths"] = [str(p) for p in result.video_paths]
    result.info["plot_path"] = str(result.plot_path)
    result.info_path = write_json_atomic(out / "eval_info.json", result.info)
