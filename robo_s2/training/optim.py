"""Optimisation pieces with exact ``state_dict`` round trips: AdamW groups, the LR schedule, a weight
EMA and the batch sampler."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robo_s2.errors import UserError

OPTIMIZER_IMPLS = ("auto", "loop", "foreach", "fused")


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: Sequence[float] = (0.9, 0.999),
    lr_by_prefix: Mapping[str, float] | None = None,
    impl: str = "auto",
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model``.

    Weight decay applies to matrices (``ndim >= 2``: linear weights, embeddings, queries) and not to
    biases and LayerNorm gains. ``lr_by_prefix`` gives parameters whose name starts with a prefix
    another learning rate (e.g. ``{"encoder.": 1e-5}``). ``impl``: how the update runs (the same
    math, rounded differently): ``loop`` (one tensor at a time, torch's CPU default), ``foreach``
    (batched over tensors), ``fused`` (one kernel), ``auto`` = fused (torch has fused AdamW for
    CPU and CUDA float tensors; it is what pays for an 11M-parameter ResNet on a CPU).
    """
    if impl not in OPTIMIZER_IMPLS:
        raise UserError(f"train.optimizer={impl!r}; choose one of: {', '.join(OPTIMIZER_IMPLS)}")
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group_lr = lr
        for prefix, value in (lr_by_prefix or {}).items():
            if name.startswith(prefix) and value is not None:
                group_lr = float(value)
        groups.setdefault((group_lr, p.ndim >= 2), []).append(p)
    param_groups = [
        {"params": ps, "lr": g_lr, "weight_decay": weight_decay if decay else 0.0}
        for (g_lr, decay), ps in groups.items()
    ]
    how = {"loop": {"foreach": False}, "foreach": {"foreach": True}}.get(impl, {"fused": True})
    return torch.optim.AdamW(
        param_groups, lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=weight_decay,
        **how,
    )  # fmt: skip


# how the optimizer computes (kernel, variant), as opposed to its numbers: set by the run's own
# code, never taken from a saved state (fused=True with differentiable=True, say, fails at step)
_OPTIMIZER_FLAGS = ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` for a saved state of this run's optimizer: same
    groups, same flags (else ValueError), moments in their parameters' layout."""
    saved = state["param_groups"]
    if len(saved) != len(optimizer.param_groups):
        raise ValueError(f"{len(saved)} parameter groups saved, the optimizer has "
                         f"{len(optimizer.param_groups)}")  # fmt: skip
    for i, (old, now) in enumerate(zip(saved, optimizer.param_groups, strict=True)):
        differ = [f"{k}={old.get(k)!r}" for k in _OPTIMIZER_FLAGS if old.get(k) != now.get(k)]
        if differ:
            raise ValueError(f"parameter group {i} was saved with {', '.join(differ)}")
    optimizer.load_state_dict(dict(state))
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                want = () if key == "step" else p.shape
                if isinstance(value, Tensor) and value.shape != want:
                    raise ValueError(
                        f"saved {key} has shape {tuple(value.shape)}, not {tuple(want)}"
                    )
    match_state_layout(optimizer)


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's memory layout.

    A state file stores tensors contiguous; a ``channels_last`` conv weight's moments then come
    back in another layout, and the fused AdamW kernel pairs elements by storage order, not by
    index: it would update the weights with another element's moments. Called after every
    ``optimizer.load_state_dict`` (:func:`load_optimizer_state` does).
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, Tensor) and value.shape == p.shape:
                    if value.stride() != p.stride():
                        optimizer.state[p][key] = torch.empty_like(p).copy_(value)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup ``(step+1)/warmup`` over ``warmup`` steps, then a half cosine
    from 1 down to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a module's trainable parameters (buffers copied).

    ``shadow`` is a frozen deep copy of the module holding the averaged weights. The decay warms
    up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (timm / diffusion_policy), so the
    average is not dominated by the random initial weights early in training.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.n_updates = 0
        self.shadow = copy.deepcopy(model).eval()
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        self._pairs: tuple | None = None  # (model, its params, shadow params, buffer pairs)
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        n = self.n_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step: ``shadow = decay * shadow + (1 - decay) * model`` for trainable parameters
        (one fused ``_foreach_lerp_``), buffers copied."""
        if self._pairs is None or self._pairs[0] is not model:
            params = dict(model.named_parameters())
            shadow = dict(self.shadow.named_parameters())
            src = [params[n] for n in self._names]
            dst = [shadow[n] for n in self._names]
            buffers = list(zip(self.shadow.buffers(), model.buffers(), strict=True))
            self._pairs = (model, src, dst, buffers)
        _, src, dst, buffers = self._pairs
        if dst:
            torch._foreach_lerp_(dst, [p.detach() for p in src], 1.0 - self.current_decay())
        for b_dst, b_src in buffers:
            b_dst.copy_(b_src)
        self.n_updates += 1

    def trainable_state(self) -> dict[str, Tensor]:
        """The averaged trainable parameters and all buffers (frozen weights are not saved)."""
        names = set(self._names)
        out = {n: p.detach().clone() for n, p in self.shadow.named_parameters() if n in names}
        out.update(persistent_buffers(self.shadow))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "n_updates": self.n_updates, "shadow": self.trainable_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.n_updates = int(state["n_updates"])
        missing = sorted(set(self.trainable_state()) - set(state["shadow"]))
        if missing:
            raise KeyError(f"the saved EMA weights lack {len(missing)}, e.g. {missing[:3]}")
        load_partial_state(self.shadow, state["shadow"])


def persistent_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Copies of the buffers ``state_dict`` holds: a non-persistent buffer (a constant rebuilt
    by ``__init__``) is not state, and ``load_state_dict`` would refuse it."""
    keys = model.state_dict().keys()
    return {n: b.detach().clone() for n, b in model.named_buffers() if n in keys}


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """A module's trainable parameters and its persistent buffers (what resuming needs)."""
    out = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out.update(persistent_buffers(model))
    return out


def load_partial_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load ``state`` (a subset of the model's parameters/buffers) into ``model`` through
    ``load_state_dict`` (so modules' load hooks run); unknown keys are an error."""
    result = model.load_state_dict(dict(state), strict=False)
    if result.unexpected_keys:
        raise KeyError(f"state has entries the model lacks: {result.unexpected_keys[:5]}")


class BatchSampler:
    """An endless shuffled stream of ids read ``batch_size`` at a time.

    The stream is a sequence of epochs, each a fresh permutation of ``ids`` drawn from a seeded
    ``torch.Generator``; a batch may straddle two epochs, so every id is seen once per epoch
    whatever the batch size. :meth:`state_dict` captures the generator, the current permutation
    and the position in it: a restored sampler continues with exactly the same batches.
    """

    def __init__(self, ids: np.ndarray | Tensor, batch_size: int, seed: int) -> None:
        self.ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        if self.ids.numel() == 0:
            raise ValueError("no ids to sample from")
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.perm: Tensor | None = None
        self.cursor = 0
        self.epochs = 0  # permutations drawn so far

    def next(self) -> Tensor:
        parts, need, n = [], self.batch_size, self.ids.numel()
        while need:
            if self.perm is None or self.cursor >= n:
                self.perm = torch.randperm(n, generator=self.generator)
                self.cursor = 0
                self.epochs += 1
            take = min(need, n - self.cursor)
            parts.append(self.perm[self.cursor : self.cursor + take])
            self.cursor += take
            need -= take
        return self.ids[torch.cat(parts)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "perm": None if self.perm is None else self.perm.clone(),
            "cursor": self.cursor,
            "epochs": self.epochs,
            "n": int(self.ids.numel()),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["n"]) != self.ids.numel():
            raise ValueError(
                f"sampler state is over {state['n']} ids, this one has {len(self.ids)}"
            )
        self.generator.set_state(state["generator"])
        self.perm = None if state["perm"] is None else state["perm"].clone()
        self.cursor = int(state["cursor"])
        self.epochs = int(state["epochs"])
