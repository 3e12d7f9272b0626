"""The privileged-state oracle (``name: oracle``): the cube's pose read from the simulator, as a
"feature", so that a policy trained on it shows the ceiling of the policy and training recipe.

It is **not a vision result** and is labelled as a reference in every table. It reads the store's
``data/state`` (``envs.cube_pick.STATE_SEMANTICS``: cube position, cube quaternion, ...) instead of
camera frames, and the env's ``obs["state"]`` at evaluation; everything else — the feature cache,
the normalizer inside the policy, training, checkpoints, evaluation — is the path every encoder
takes. The feature is the cube's ``x, y, z`` (m) and, with ``yaw: true``, ``sin 4θ, cos 4θ`` of
its yaw θ (a cube looks the same every quarter turn, so 4θ is what a grasp must match).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from robo_s2.encoders.base import VisionEncoder
from robo_s2.errors import UserError

STATE_KEY = "state"


class OracleEncoder(VisionEncoder):
    """Privileged cube pose -> ``(B, 3 or 5)``; no weights, frozen, fp32."""

    input_key = STATE_KEY
    image_size = 0

    def __init__(self, yaw: bool = True) -> None:
        super().__init__()
        from envs.cube_pick import STATE_CUBE_POS, STATE_CUBE_QUAT, STATE_SEMANTICS

        self.yaw = bool(yaw)
        self.state_dim = len(STATE_SEMANTICS)
        self._pos, self._quat = STATE_CUBE_POS, STATE_CUBE_QUAT
        self.feature_dim = 5 if self.yaw else 3
        self.set_config("oracle", yaw=self.yaw)

    def example_input(self, batch: int, device: torch.device | None = None) -> Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, self.state_dim, generator=g)
        x[:, self._quat] = torch.nn.functional.normalize(x[:, self._quat], dim=1)
        return x.to(device) if device is not None else x

    def tokens_per_pass(self, batch: int, device: torch.device | None = None) -> int:
        return 0  # nothing to gain from bf16

    def prepare(self, states: Tensor | Any) -> Tensor:
        if not isinstance(states, Tensor):
            states = torch.as_tensor(np.asarray(states, dtype=np.float32))
        x = states.float()
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != self.state_dim:
            raise UserError(
                f"the oracle reads the {self.state_dim}-D privileged state (data/state of a "
                f"robo_s2 store, obs['state'] of the env), got shape {tuple(x.shape)}"
            )
        return x

    def forward_tokens(self, states: Tensor) -> Tensor:
        return self.forward(states).unsqueeze(1)

    def forward(self, states: Tensor) -> Tensor:
        x = self.prepare(states)
        pos = x[:, self._pos]
        if not self.yaw:
            return pos
        w, qx, qy, qz = x[:, self._quat].unbind(-1)
        yaw = torch.atan2(2.0 * (w * qz + qx * qy), 1.0 - 2.0 * (qy * qy + qz * qz))
        return torch.cat([pos, torch.sin(4 * yaw)[:, None], torch.cos(4 * yaw)[:, None]], dim=1)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            input_key=self.input_key,
            reference="oracle: privileged state, not vision",
            features=["cube_x", "cube_y", "cube_z", *(["sin4yaw", "cos4yaw"] if self.yaw else [])],
        )
        return d
