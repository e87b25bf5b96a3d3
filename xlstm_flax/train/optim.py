"""Optimiser: AdamW with a weight-decay mask, warmup + decay schedule, global-norm clipping."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

DECAYS = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW hyper-parameters and the learning-rate schedule (steps are optimiser updates)."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 100  # linear warmup from 0 to lr
    decay: str = "cosine"  # "cosine", "linear" or "constant" after warmup
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # global-norm clip; None: off
    no_decay: tuple[str, ...] = ("norm", "bias", "embedding")  # parameter path parts without decay

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            raise ValueError(f"b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip}")


def make_schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``lr`` over ``warmup_steps``, then decay to ``lr * min_lr_ratio`` at
    ``total_steps``."""
    end_lr = config.lr * config.min_lr_ratio
    decay_steps = max(total_steps - config.warmup_steps, 1)
    if config.decay == "cosine":
        after = optax.cosine_decay_schedule(config.lr, decay_steps, alpha=config.min_lr_ratio)
    elif config.decay == "linear":
        after = optax.linear_schedule(config.lr, end_lr, decay_steps)
    else:
        after = optax.constant_schedule(config.lr)
    warmup = optax.linear_schedule(0.0, config.lr, config.warmup_steps)
    return optax.join_schedules([warmup, after], [config.warmup_steps])


def decay_mask(params: Any, no_decay: tuple[str, ...]) -> Any:
    """A pytree of bools like ``params``: False where any part of a parameter's path contains one of
    the ``no_decay`` words (case-insensitive), e.g. ``blocks/0/norm/scale`` or ``proj/bias``."""
    words = tuple(w.lower() for w in no_decay)

    def decays(path, _):
        parts = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))).lower() for p in path]
        return not any(word in part for part in parts for word in words)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Clip (optional) then AdamW with the schedule and the weight-decay mask."""
    adamw = optax.adamw(
        make_schedule(config, total_steps),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=lambda params: decay_mask(params, config.no_decay),
    )
    if config.grad_clip is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
