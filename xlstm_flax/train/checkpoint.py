"""Orbax checkpoints of the training state, saved atomically and asynchronously, the last K kept.

A save copies the arrays to host memory and returns; a background thread writes them while training
goes on. The step directory is written under a temporary name and renamed when complete, so a process
killed mid-save leaves the previous checkpoints untouched; unfinished temporary directories are ignored
(and removed when the next writing manager opens the directory). :meth:`Checkpointer.wait` (also done by
the next save and by :meth:`Checkpointer.close`) blocks until the save in flight is complete.

A checkpoint that does not restore (a truncated file, a disk error) is skipped by
:meth:`Checkpointer.restore_newest`, which falls back to the newest one that does and reports what it
skipped and why; nothing is ever deleted for being unreadable.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"  # inside a run directory


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save and how many checkpoints to keep (saves also happen at the end and on
    SIGINT/SIGTERM)."""

    every: int = 1000  # save every N steps
    keep: int = 3  # keep the last K checkpoints

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")


@dataclasses.dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint that did not restore: its step, directory and the reason (one line)."""

    step: int
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"checkpoint {self.path} does not restore ({self.reason})"


class CheckpointRestoreError(RuntimeError):
    """A checkpoint (or every checkpoint of a directory) failed to restore; the message names each one."""

    def __init__(self, message: str, checkpoints: list[SkippedCheckpoint]):
        super().__init__(message)
        self.checkpoints = checkpoints


class Checkpointer:
    """Save / restore ``{"params", "opt_state"}`` pytrees plus JSON metadata under ``directory``.
    ``read_only``: never create, clean up or write anything there (for restoring only)."""

    def __init__(self, directory: str | Path, keep: int, *, read_only: bool = False):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=not read_only,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest step, counting a save still in flight."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, metadata: dict) -> None:
        """Start writing ``state`` (a pytree of arrays) and ``metadata`` (JSON) for ``step``, once the
        previous save has finished; returns when the arrays are copied to host memory (``state`` may then
        be donated or changed), before they are on disk."""
        self.wait()
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata)),
            force=True,
        )

    def wait(self) -> None:
        """Block until the save in flight (if any) is complete on disk; raises its error if it failed."""
        self._manager.wait_until_finished()

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restore into the structure, dtypes and shardings of ``target`` (arrays or
        ``jax.ShapeDtypeStruct``); returns ``(state, metadata, step)``, the latest step by default.
        Raises ``FileNotFoundError`` for a missing step, ``CheckpointRestoreError`` for one that fails."""
        steps = self.all_steps()
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory} (steps: {steps})")
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )
            return restored.state, restored.meta, step
        except Exception as err:  # orbax / tensorstore raise bare Exception and ValueError for bad data
            failed = SkippedCheckpoint(step, self.step_dir(step), _reason(err))
        _collect_abandoned_reads()  # once the traceback, which holds them, is gone
        raise CheckpointRestoreError(str(failed), [failed])

    def restore_newest(self, target: Any) -> tuple[Any, dict, int, list[SkippedCheckpoint]]:
        """Like :meth:`restore` from the newest checkpoint that restores; also returns the newer ones
        that failed (left where they are). Raises ``FileNotFoundError`` when there is no checkpoint and
        ``CheckpointRestoreError`` (naming each one and why) when none restores."""
        skipped = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return (*self.restore(target, step), skipped)
            except CheckpointRestoreError as err:
                skipped += err.checkpoints
        if not skipped:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        raise CheckpointRestoreError("no checkpoint restores: " + "; ".join(map(str, skipped)), skipped)

    def step_dir(self, step: int) -> Path:
        """The directory of one step's checkpoint."""
        return self.directory / str(step)

    def close(self) -> None:
        """Finish the save in flight, then release the manager."""
        self.wait()
        self._manager.close()


def _reason(err: BaseException) -> str:
    """The innermost cause of a restore failure, on one line (orbax wraps tensorstore's message)."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _collect_abandoned_reads() -> None:
    """A failed orbax restore leaves its other array reads as unfinished coroutines; collect them now and
    quietly, rather than have the garbage collector print their errors at some later moment."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook
