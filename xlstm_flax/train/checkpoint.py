"""Orbax checkpoints of the training state, saved atomically, the last K kept.

A step directory is written under a temporary name and renamed when complete, so a process killed
mid-save leaves the previous checkpoints untouched; unfinished temporary directories are ignored
(and removed when the next manager opens the directory).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"  # inside a run directory


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save and how many checkpoints to keep (saves also happen at the end and on
    SIGINT/SIGTERM)."""

    every: int = 1000   # save every N steps
    keep: int = 3       # keep the last K checkpoints

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")


class Checkpointer:
    """Save / restore ``{"params", "opt_state"}`` pytrees plus JSON metadata under ``directory``."""

    def __init__(self, directory: str | Path, keep: int):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, metadata: dict) -> None:
        """Write ``state`` (a pytree of arrays) and ``metadata`` (JSON) for ``step``; blocks until done."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata)), force=True)
        self._manager.wait_until_finished()

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restore into the structure, dtypes and shardings of ``target`` (arrays or
        ``jax.ShapeDtypeStruct``); returns ``(state, metadata, step)``, the latest step by default."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta, step

    def close(self) -> None:
        self._manager.close()
