"""The chunked-action transformer of the S² paper's cube-picking experiment (its Appendix C).

"A transformer that takes in the visual features, proprioception and actions for the last 16 steps
and outputs the actions for the next 16 steps." Concretely:

**Tokens.** Every step of the window contributes separate tokens: ``K`` visual tokens (``K = 1``
for a per-step feature vector; ``K = k*k`` for a ``grid:k`` feature, each cell projected by one
shared linear map plus a learned spatial embedding), one proprioception token and one
previous-action token. Each token gets a learned token-type embedding (visual / proprio / action)
and a learned time embedding of its step's position in the window (relative to the current step,
so left-padded short histories line up with full ones). Spatial tokens are attended over by the
same transformer as everything else: simple, and every layer can pick the cells that show the cube.

**Encoder.** A pre-LN transformer encoder (GELU MLP, dropout on embeddings, attention and
residuals) with a *step-causal* mask: a token of step ``t`` attends to every token of steps
``<= t`` (tokens of one step see each other), never to later steps. Padded steps (``valid``
False, before the episode start) are masked as keys for every other step, and their inputs are
zeroed before embedding, so neither their values nor their presence can change any valid step's
output. (A padded step's tokens still attend to their own step, so no attention row is empty and
no NaN can arise.)

**Readout.** ``chunk`` learned query tokens, one per future action, go through a small pre-LN
decoder (self-attention among the queries, cross-attention to the encoder outputs of all valid
tokens, MLP) and a linear head. This is ACT's readout. It is chosen over one readout vector
mapped linearly to all ``chunk*Da`` numbers because each future step gets its own query and can
attend to what matters for it (the current image tokens for the reach, recent actions for
smoothness). The step-causal encoder already makes the last step's tokens a summary of the whole
history; letting the queries also see earlier steps' tokens directly costs little. One decoder
layer is the default: ACT's code, through a known quirk, only ever used its first decoder layer
(LeRobot's ACT defaults to one for that reason), and it keeps the head small for ~120 demos.

**Loss.** L1 in normalized action space, masked past the episode end (ACT's choice; see
:meth:`policies.BasePolicy.compute_loss`).

Defaults: d_model 256, 4 encoder layers, 4 heads, 1 decoder layer, MLP ratio 4, dropout 0.1:
about 4.4 M parameters for 768-wide features (4.3 M with a 4x4 grid of 384-wide tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.base import BasePolicy, _check_dim
from robo_s2.errors import UserError

VISUAL, PROPRIO, ACTION = 0, 1, 2


class Attention(nn.Module):
    """Multi-head attention over ``F.scaled_dot_product_attention`` with a boolean mask."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x (B, Lq, d)`` attends to ``context (B, Lk, d)``; ``mask`` True = may attend."""
        b, lq, d = x.shape
        h = self.n_heads
        q = self.q(x).view(b, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.proj(out.transpose(1, 2).reshape(b, lq, d))


class Block(nn.Module):
    """Pre-LN transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(
        self, d_model: int, n_heads: int, ff_mult: int, dropout: float, cross: bool = False
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout)
        self.norm_x = nn.LayerNorm(d_model) if cross else None
        self.cross = Attention(d_model, n_heads, dropout) if cross else None
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * d_model, d_model),
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        y = self.norm1(x)
        x = x + self.drop(self.attn(y, y, mask))
        if self.cross is not None and self.norm_x is not None:
            x = x + self.drop(self.cross(self.norm_x(x), memory, memory_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class ChunkTransformerPolicy(BasePolicy):
    """Step-causal transformer over (visual, proprio, previous action) tokens of the last
    ``history`` steps; ``chunk`` learned queries decode the next ``chunk`` actions. See the module
    docstring for the design and :mod:`policies` for the batch layout."""

    def __init__(
        self,
        feature_dim: int,
        proprio_dim: int,
        action_dim: int,
        history: int = 16,
        chunk: int = 16,
        feature_tokens: int = 1,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        n_decoder_layers: int = 1,
        ff_mult: int = 4,
        dropout: float = 0.1,
        use_prev_action: bool = True,
        normalization: str | Mapping[str, str] = "gaussian",
        norm_eps: float = 1e-4,
        loss: str = "l1",
        execution: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            feature_dim=feature_dim,
            proprio_dim=proprio_dim,
            action_dim=action_dim,
            history=history,
            chunk=chunk,
            feature_tokens=feature_tokens,
            normalization=normalization,
            norm_eps=norm_eps,
            loss=loss,
            execution=execution,
        )
        self.d_model = _check_dim("d_model", d_model, 1)
        self.n_layers = _check_dim("n_layers", n_layers, 1)
        self.n_heads = _check_dim("n_heads", n_heads, 1)
        self.n_decoder_layers = _check_dim("n_decoder_layers", n_decoder_layers, 1)
        self.ff_mult = _check_dim("ff_mult", ff_mult, 1)
        if d_model % n_heads:
            raise UserError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if not 0.0 <= float(dropout) < 1.0:
            raise UserError(f"dropout={dropout} must be in [0, 1)")
        self.dropout = float(dropout)
        self.use_prev_action = bool(use_prev_action)
        d = self.d_model

        self.visual_proj = nn.Linear(self.token_dim, d)
        self.proprio_proj = nn.Linear(self.proprio_dim, d) if self.proprio_dim else None
        self.action_proj = nn.Linear(self.action_dim, d) if self.use_prev_action else None
        self.type_emb = nn.Parameter(torch.zeros(3, d))
        self.spatial_emb = nn.Parameter(torch.zeros(self.feature_tokens, d))
        self.time_emb = nn.Parameter(torch.zeros(self.history, d))
        self.emb_drop = nn.Dropout(self.dropout)
        self.encoder = nn.ModuleList(
            Block(d, self.n_heads, self.ff_mult, self.dropout) for _ in range(self.n_layers)
        )
        self.encoder_norm = nn.LayerNorm(d)
        self.queries = nn.Parameter(torch.zeros(self.chunk, d))
        self.decoder = nn.ModuleList(
            Block(d, self.n_heads, self.ff_mult, self.dropout, cross=True)
            for _ in range(self.n_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.action_dim)
        self.apply(self._init_weights)
        for p in (self.type_emb, self.spatial_emb, self.time_emb, self.queries):
            nn.init.trunc_normal_(p, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def _model_config(self) -> dict[str, Any]:
        return {
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_decoder_layers": self.n_decoder_layers,
            "ff_mult": self.ff_mult,
            "dropout": self.dropout,
            "use_prev_action": self.use_prev_action,
        }

    @property
    def tokens_per_step(self) -> int:
        return self.feature_tokens + (self.proprio_dim > 0) + self.use_prev_action

    # ------------------------------------------------------------------ network
    def encode(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-step encoder outputs ``(B, H, T, d_model)`` (``T = tokens_per_step``, visual tokens
        first, then proprio, then action) and the ``valid (B, H)`` mask. Step ``t``'s outputs depend
        only on the valid steps ``<= t``."""
        x = self._normalized_inputs(batch)
        valid = x["valid"]
        b, h = valid.shape
        parts = [self.visual_proj(x["feature"]) + self.spatial_emb + self.type_emb[VISUAL]]
        if self.proprio_proj is not None:
            parts.append((self.proprio_proj(x["proprio"]) + self.type_emb[PROPRIO])[:, :, None])
        if self.action_proj is not None:
            if x["prev_action"] is None:
                raise KeyError(
                    "batch lacks 'prev_action' (the action executed at each step before)"
                )
            parts.append((self.action_proj(x["prev_action"]) + self.type_emb[ACTION])[:, :, None])
        tokens = torch.cat(parts, dim=2) + self.time_emb[self.history - h :, None, :]
        t = tokens.shape[2]
        seq = self.emb_drop(tokens.reshape(b, h * t, self.d_model))

        step = torch.arange(h, device=seq.device).repeat_interleave(t)  # (L,) step of each token
        causal = step[None, :] <= step[:, None]  # (Lq, Lk)
        same = step[None, :] == step[:, None]
        key_valid = valid[:, step]  # (B, Lk)
        mask = (causal[None] & (key_valid[:, None, :] | same[None]))[:, None]  # (B, 1, Lq, Lk)
        for block in self.encoder:
            seq = block(seq, mask)
        seq = self.encoder_norm(seq)
        return seq.reshape(b, h, t, self.d_model), valid

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        enc, valid = self.encode(batch)
        b, h, t, d = enc.shape
        memory = enc.reshape(b, h * t, d)
        memory_mask = valid.repeat_interleave(t, dim=1)[:, None, None, :]  # (B, 1, 1, L)
        q = self.queries.expand(b, -1, -1)
        for block in self.decoder:
            q = block(q, None, memory, memory_mask)
        return self.head(self.decoder_norm(q))
