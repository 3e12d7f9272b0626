"""What chooses the actions in an evaluation rollout: a checkpoint (frozen encoder + policy) or the
scripted expert, behind one interface so both run through the same rollout machinery.

An actor serves ``n_slots`` env slots. :meth:`begin` sizes it, :meth:`start` starts new episodes in
some slots (clearing their histories), :meth:`act` returns one action per listed slot from those
slots' current observations, batched. Idle slots (no episode left for them) are simply not listed.
:meth:`fork` gives an independent actor for another group of slots that shares the models (the
pipelined rollout runs one per group).
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


class PolicyActor:
    """Encoder features of the current image (``encode_frames``, the training cache's exact
    preprocessing) and proprioception -> ``policy.act``, batched over the active slots.

    The policy keeps a rolling history per slot; :meth:`start` resets only the slots that begin a
    new episode. Idle slots get zero inputs (their outputs are discarded), so the policy's batch
    always spans every slot and no active slot's window is disturbed.
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

    def fork(self) -> PolicyActor:
        """Same weights, its own rollout state: a shallow copy of the policy module shares the
        parameters, buffers and submodules, while ``reset(n)`` gives the copy its own rollout."""
        import copy

        return PolicyActor(
            copy.copy(self.policy), self.encoder, self.image_key, self.device, self.precision
        )

    def begin(self, n_slots: int) -> None:
        self.n_slots = int(n_slots)
        self.policy.reset(self.n_slots)

    def start(self, slots: list[int], seeds: list[int]) -> None:
        if slots:
            self.policy.reset(env_ids=list(slots))

    def act(self, slots: list[int], obs: list[dict[str, np.ndarray]]) -> np.ndarray:
        import torch

        from robo_s2.device import autocast
        from robo_s2.encoders.feature_cache import encode_frames

        images = np.stack([o[self.image_key] for o in obs])
        with torch.no_grad(), autocast(self.device):  # not inference_mode: the policy's
            # rollout buffers are reset in place between calls
            feats = encode_frames(self.encoder, images, self.device, self.precision)
            feature = np.zeros((self.n_slots, feats.shape[1]), np.float32)
            proprio = np.zeros((self.n_slots, self.policy.proprio_dim), np.float32)
            feature[slots] = feats
            if self.policy.proprio_dim:
                proprio[slots] = np.stack([o["proprio"] for o in obs])
            actions = self.policy.act({"feature": feature, "proprio": proprio})
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
