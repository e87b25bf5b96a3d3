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

import asyncio
import contextlib
import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from ..config import is_int

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


def saved_steps(directory: str | Path) -> list[int]:
    """The steps whose checkpoint is complete on disk in ``directory`` (a save writes its step directory
    under a temporary name and renames it to the step number when complete), without opening a manager."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


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
        previous save has finished; returns when the arrays are copied to host memory and ``metadata`` to
        a snapshot (either may then be donated or changed), before they are on disk."""
        metadata = json.loads(json.dumps(metadata))  # written by the background thread, maybe much later
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

    def existing_step(self, step: int | None = None) -> int:
        """``step``, or the newest step when None; ``FileNotFoundError`` (naming the directory and its steps)
        when there is no such checkpoint. Cheap: reads no array."""
        if step is not None and not is_int(step):
            raise TypeError(f"step must be an int or None, got {step!r}")
        steps = self.all_steps()
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory} (steps: {steps})")
        return step

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restore into the structure, dtypes and shardings of ``target`` (arrays or
        ``jax.ShapeDtypeStruct``; a leaf that is ``orbax.checkpoint.PLACEHOLDER`` is not read and stays
        so); returns ``(state, metadata, step)``, the latest step by default. Raises ``FileNotFoundError``
        for a missing step, ``CheckpointRestoreError`` for one that fails or whose tree differs."""
        step = self.existing_step(step)
        state = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
        args = ocp.args.Composite(state=state, meta=ocp.args.JsonRestore())
        try:
            with _event_loops_that_finish_their_tasks():
                restored = self._manager.restore(step, args=args)
            return restored.state, restored.meta, step
        except Exception as err:  # orbax / tensorstore raise bare Exception and ValueError for bad data
            failed = SkippedCheckpoint(step, self.step_dir(step), _reason(err))
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


_POLICY_LOCK = threading.Lock()


class _TaskFinishingLoop(asyncio.SelectorEventLoop):
    """An event loop that runs its pending tasks to their end before it closes. orbax runs a restore with
    ``run_until_complete`` on a fresh loop and closes it; a restore that fails returns at its first error,
    and its other reads would be left in flight on a closed loop (their callbacks then fail, or crash the
    process, whenever the reads end). Cancelling those tasks instead is not enough: a cancelled task does
    not stop its tensorstore read, whose completion still calls back into the loop."""

    def close(self) -> None:
        try:
            if not self.is_running() and not self.is_closed():
                pending = asyncio.all_tasks(self)
                if pending:
                    self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            super().close()


class _TaskFinishingPolicy(asyncio.DefaultEventLoopPolicy):
    """New loops of one thread are :class:`_TaskFinishingLoop`; other threads' as before."""

    def __init__(self, previous: asyncio.AbstractEventLoopPolicy):
        super().__init__()
        self._previous, self._thread = previous, threading.get_ident()

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        if threading.get_ident() != self._thread:
            return self._previous.new_event_loop()
        return _TaskFinishingLoop()


@contextlib.contextmanager
def _event_loops_that_finish_their_tasks():
    """While inside, event loops this thread creates finish every task before closing."""
    with _POLICY_LOCK:  # one swap at a time: concurrent restores would restore each other's policy
        previous = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(_TaskFinishingPolicy(previous))
        try:
            yield
        finally:
            asyncio.set_event_loop_policy(previous)
