"""What chooses the actions in an evaluation rollout: a checkpoint (frozen encoder + policy) or the
scripted expert, behind one interface so both run through the same rollout machinery.

An actor serves ``n_slots`` env slots. :meth:`begin` sizes it, :meth:`start` starts new episodes in
some slots (clearing their histories), :meth:`act` returns one action per listed slot from those
slots' current observations, batched. Idle slots (no episode left for them) are simply not listed.
:meth:`fork` gives an independent actor for another group of slots that shares the models (the
pipelined rollout runs one per group). :meth:`frames_needed` says which slots' next observation
the actor will read images of, so that the envs render only those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # (env workers import this module: no torch at import time)
    import torch

    from policies import BasePolicy
    from robo_s2.encoders import VisionEncoder


class Actor(Protocol):
    """What the rollout machinery needs of whatever chooses the actions (see the module doc)."""

    obs_keys: tuple[str, ...]  # the observation entries the actor reads (the envs render those)

    def fork(self) -> Actor: ...

    def begin(self, n_slots: int) -> None: ...

    def start(self, slots: list[int], seeds: list[int]) -> None: ...

    def act(self, slots: list[int], obs: list[dict[str, np.ndarray]]) -> np.ndarray: ...

    def frames_needed(self, slots: list[int]) -> list[bool]: ...


def frame_read(t: int, execution: dict[str, Any], history: int) -> bool:
    """Whether a policy reads the frame of its episode's step ``t`` (``t = 0``: the reset's).

    Temporal ensembling queries every step. Receding-horizon execution queries at steps 0, n, 2n,
    ... (``n = n_action_steps``), each query reading the window of its last ``history`` steps: a
    frame is read iff the next query at or after ``t`` is fewer than ``history`` steps away (a later
    query's window ends even further from it)."""
    if execution.get("mode") != "receding":
        return True
    n = int(execution["n_action_steps"])
    return (-t) % n < int(history)


class PolicyActor:
    """Encoder features of the current image (``encode_frames``, the training cache's exact
    preprocessing) and proprioception -> ``policy.act``, batched over the active slots.

    The policy keeps a rolling history per slot; :meth:`start` resets only the slots that begin a
    new episode. Idle slots get zero inputs (their outputs are discarded), so the policy's batch
    always spans every slot and no active slot's window is disturbed. A step whose frame the
    policy will never read (:func:`frame_read`) comes without an image and enters the window as
    zeros, which leave it before any query reads it.
    """

    def __init__(
        self,
        policy: BasePolicy,
        encoder: VisionEncoder,
        image_key: str,
        device: torch.device,
        precision: str = "fp32",
    ) -> None:
        self.policy = policy.eval()
        self.encoder = encoder.eval()
        self.image_key = image_key
        self.device = device
        self.precision = precision  # the encoder's, resolved (fp32 | bf16)
        self.obs_keys: tuple[str, ...] = (image_key, "proprio")
        self.n_slots = 0
        self.t = np.zeros(0, np.int64)  # per slot: the episode step of the next observation

    def fork(self) -> PolicyActor:
        """Same weights, its own rollout state: a shallow copy of the policy module shares the
        parameters, buffers and submodules, while ``reset(n)`` gives the copy its own rollout."""
        import copy

        return PolicyActor(
            copy.copy(self.policy), self.encoder, self.image_key, self.device, self.precision
        )

    def begin(self, n_slots: int) -> None:
        self.n_slots = int(n_slots)
        self.t = np.zeros(self.n_slots, np.int64)
        self.policy.reset(self.n_slots)

    def start(self, slots: list[int], seeds: list[int]) -> None:
        if slots:
            self.policy.reset(env_ids=list(slots))
            self.t[slots] = 0

    def frames_needed(self, slots: list[int]) -> list[bool]:
        ex, h = self.policy.execution, self.policy.history
        return [frame_read(int(self.t[s]), ex, h) for s in slots]

    def act(self, slots: list[int], obs: list[dict[str, np.ndarray]]) -> np.ndarray:
        import torch

        from robo_s2.device import autocast
        from robo_s2.encoders.feature_cache import encode_frames

        seen = [s for s, o in zip(slots, obs, strict=True) if self.image_key in o]
        if len(seen) < len(slots) and any(
            self.image_key not in o and frame_read(int(self.t[s]), self.policy.execution,
                                                   self.policy.history)
            for s, o in zip(slots, obs, strict=True)
        ):  # fmt: skip
            raise RuntimeError("an observation the policy reads came without its image")
        with torch.no_grad(), autocast(self.device):  # not inference_mode: the policy's
            # rollout buffers are reset in place between calls
            feature = np.zeros((self.n_slots, self.encoder.feature_dim), np.float32)
            if seen:
                images = np.stack([o[self.image_key] for o in obs if self.image_key in o])
                feature[seen] = encode_frames(self.encoder, images, self.device, self.precision)
            proprio = np.zeros((self.n_slots, self.policy.proprio_dim), np.float32)
            if self.policy.proprio_dim:
                proprio[slots] = np.stack([o["proprio"] for o in obs])
            actions = self.policy.act({"feature": feature, "proprio": proprio})
        self.t[slots] += 1
        return np.asarray(actions, np.float32)[slots]


class ExpertActor:
    """The privileged-state scripted expert, one instance per slot, reseeded per episode (its
    action noise then depends on the episode seed only)."""

    obs_keys: tuple[str, ...] = ("state",)

    def __init__(self, env_kwargs: dict[str, Any], expert_kwargs: dict[str, Any]) -> None:
        self.env_kwargs = dict(env_kwargs)
        self.expert_kwargs = dict(expert_kwargs)
        self.experts: list[Any] = []

    def fork(self) -> ExpertActor:
        return ExpertActor(self.env_kwargs, self.expert_kwargs)

    def begin(self, n_slots: int) -> None:
        from envs import make_env
        from envs.expert import ScriptedExpert

        probe = make_env({**self.env_kwargs, "render_images": False})
        self.experts = [ScriptedExpert.for_env(probe, **self.expert_kwargs) for _ in range(n_slots)]
        probe.close()

    def start(self, slots: list[int], seeds: list[int]) -> None:
        for slot, seed in zip(slots, seeds, strict=True):
            self.experts[slot].reset(seed=int(seed))

    def act(self, slots: list[int], obs: list[dict[str, np.ndarray]]) -> np.ndarray:
        return np.stack([self.experts[s].act(o) for s, o in zip(slots, obs, strict=True)])

    def frames_needed(self, slots: list[int]) -> list[bool]:
        return [False] * len(slots)  # it reads the privileged state
