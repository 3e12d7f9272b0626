"""MLP baseline: current-step feature + proprioception -> the next action chunk.

The behaviour-cloning head of MVP (Xiao et al. 2022; Radosavovic et al. 2022): a frozen visual
feature concatenated with proprioception, mapped by an MLP to actions. Here it predicts a chunk
of ``chunk`` actions at once (``chunk=1`` gives one action per step, MVP's original setting) so
the trainer and the executors treat it exactly like the transformer. It looks at the current
step only (``history = 1``): given longer windows it uses their last step, and it ignores
``prev_action``. A ``grid:k`` feature is used flattened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from policies.base import BasePolicy, _check_dim
from robo_s2.errors import UserError


class MLPPolicy(BasePolicy):
    """``[feature, proprio]`` of the current step (normalized) -> MLP (GELU, dropout) ->
    ``chunk * Da`` numbers."""

    def __init__(
        self,
        feature_dim: int,
        proprio_dim: int,
        action_dim: int,
        chunk: int = 16,
        hidden_dims: Sequence[int] = (512, 512),
        dropout: float = 0.1,
        feature_tokens: int = 1,
        history: int = 1,
        normalization: str | Mapping[str, str] = "gaussian",
        norm_eps: float = 1e-4,
        loss: str = "l1",
        execution: Mapping[str, Any] | None = None,
    ) -> None:
        if history != 1:
            raise UserError(
                f"the mlp policy looks at the current step only (history=1), got {history}"
            )
        super().__init__(
            feature_dim=feature_dim,
            proprio_dim=proprio_dim,
            action_dim=action_dim,
            history=1,
            chunk=chunk,
            feature_tokens=feature_tokens,
            normalization=normalization,
            norm_eps=norm_eps,
            loss=loss,
            execution=execution,
        )
        self.hidden_dims = [_check_dim("hidden_dims[i]", h, 1) for h in hidden_dims]
        if not 0.0 <= float(dropout) < 1.0:
            raise UserError(f"dropout={dropout} must be in [0, 1)")
        self.dropout = float(dropout)
        width = self.feature_dim + self.proprio_dim
        layers: list[nn.Module] = []
        for h in self.hidden_dims:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(self.dropout)]
            width = h
        layers.append(nn.Linear(width, self.chunk * self.action_dim))
        self.net = nn.Sequential(*layers)

    def _model_config(self) -> dict[str, Any]:
        return {"hidden_dims": list(self.hidden_dims), "dropout": self.dropout}

    def _normalized_inputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        last = {k: v[:, -1:] for k, v in batch.items() if k in ("feature", "proprio", "valid")}
        return super()._normalized_inputs(last)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = self._normalized_inputs(batch)
        b = x["valid"].shape[0]
        h = x["feature"].reshape(b, self.feature_dim)
        if self.proprio_dim:
            h = torch.cat([h, x["proprio"].reshape(b, self.proprio_dim)], dim=-1)
        return self.net(h).view(b, self.chunk, self.action_dim)
