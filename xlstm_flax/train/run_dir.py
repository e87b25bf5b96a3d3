"""A run directory's lifecycle: starting a run never loses the run that was there before.

A run directory holds one run, the files in ``RUN_FILES``. A start goes through three stages:

1. :func:`open_run_dir`, before any data or model is loaded, only reads (and checks that it could write
   there): what ``run_dir`` holds and what this start does with it. An empty or absent directory gets a
   fresh run; a run there is continued with ``resume`` (its saved config checked by
   :mod:`xlstm_flax.train.resume`), replaced with ``overwrite``, and refused without either; files that
   are not a run's (no checkpoint, no metrics and no saved run config) are refused in every case.
2. :meth:`RunDirectory.session` once everything is loaded and checked: a replaced run's files are moved
   aside into ``.replaced-run/``, a resumed run's unrestorable checkpoints into
   ``unrestorable-checkpoints/`` (kept, never deleted), and a new run writes its config.
3. :meth:`RunDirectory.commit` after the first finished training step: a resumed run drops its metric
   records past the checkpoint (the steps are replayed), saves the config and appends the allowed config
   changes to ``config_changes.jsonl``.
4. :meth:`RunDirectory.drop_replaced` once the new run has a complete checkpoint: the replaced run is
   deleted.

Until the commit, any failure (an exception, Ctrl-C) rolls the directory back: what this start wrote is
removed and every moved file goes back; a replacing run also rolls back after its commit for as long
as it has no complete checkpoint (a NaN loss at step 3 gives the old run back). A process killed in
between leaves ``.replaced-run/``; the next start in that directory moves the replaced run back first
(or deletes it, if the new run had completed a checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from ..config import ConfigError, save_config
from .checkpoint import CHECKPOINT_DIR, SkippedCheckpoint, saved_steps
from .compile_cache import COMPILE_CACHE_DIR
from .metrics import LOSS_CURVE_FILE, METRICS_FILE, TENSORBOARD_DIR, drop_records_after
from .profiler import PROFILE_DIR
from .recipe import CONFIG_FILE, RunConfig
from .resume import load_saved_config, resume_changes

CHANGES_FILE = "config_changes.jsonl"  # one record per resume that changed allowed keys
UNRESTORABLE_DIR = "unrestorable-checkpoints"
RUN_FILES = (
    CONFIG_FILE,
    CHECKPOINT_DIR,
    METRICS_FILE,
    LOSS_CURVE_FILE,
    TENSORBOARD_DIR,
    CHANGES_FILE,
    UNRESTORABLE_DIR,
    PROFILE_DIR,
    COMPILE_CACHE_DIR,
)
ASIDE_DIR = ".replaced-run"  # the replaced run, until the new one has a complete checkpoint
DELETING_DIR = ".replaced-run.deleting"  # renamed from ASIDE_DIR once the new run has a checkpoint, then deleted

FRESH, RESUME, REPLACE = "fresh", "resume", "replace"


@dataclasses.dataclass
class RunDirectory:
    """One start in ``path``: ``mode`` is FRESH, RESUME or REPLACE; ``changes`` the allowed config
    changes of a resume (``{key: [saved, now]}``)."""

    path: Path
    config: RunConfig
    mode: str
    changes: dict[str, list]
    found: tuple[str, ...]  # the RUN_FILES present when the directory was opened
    committed: bool = False
    replaced_waiting: bool = False  # a replaced run sits in ASIDE_DIR until the new run has a checkpoint
    _moved: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)
    _created: list[Path] = dataclasses.field(default_factory=list)  # directories this start made, innermost first
    _start: int = 0
    _comment: str = ""

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @contextlib.contextmanager
    def session(self, start: int, skipped: list[SkippedCheckpoint], comment: str) -> Iterator[RunDirectory]:
        """Prepare the directory for a run that starts after step ``start``; roll back unless the
        block called :meth:`commit` before it ended (normally or not)."""
        self._start, self._comment = start, comment
        self._created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            if self.mode == REPLACE:
                self._move_all(_checkpoints_first(self.found), self.path / ASIDE_DIR)
                self.replaced_waiting = True
            for checkpoint in skipped:
                self._move_all([checkpoint.path.name], self.path / UNRESTORABLE_DIR, source=checkpoint.path.parent)
            if self.mode != RESUME:
                save_config(self.config, self.path / CONFIG_FILE, comment=comment)
            yield self
        except KeyboardInterrupt:  # maybe a second Ctrl-C while a checkpoint was still being written
            self._settle(save_may_be_in_flight=True)
            raise
        except BaseException:
            self._settle()
            raise
        self._settle()

    @property
    def restores_on_failure(self) -> bool:
        """Whether a failure now gives the directory back as it was before this start."""
        return not self.committed or self.replaced_waiting

    def _settle(self, save_may_be_in_flight: bool = False) -> None:
        """At the session's end (normal or not): keep the new run if it committed, deleting a replaced run
        once the new one has a complete checkpoint; else roll back. While a save may still be writing into
        the new run, a replaced run is left aside for the next start's ``_recover`` to settle."""
        self.drop_replaced()
        if save_may_be_in_flight and self.committed and self.replaced_waiting:
            return
        if self.restores_on_failure:
            self.rollback()

    def commit(self) -> None:
        """The new run has finished its first step: make its directory final, except that a replaced run
        waits for :meth:`drop_replaced` (idempotent)."""
        if self.committed:
            return
        if self.mode == RESUME:
            drop_records_after(self.path / METRICS_FILE, self._start)
            save_config(self.config, self.path / CONFIG_FILE, comment=self._comment)
            if self.changes:
                with (self.path / CHANGES_FILE).open("a") as file:
                    file.write(json.dumps({"resumed_after_step": self._start, "changes": self.changes}) + "\n")
        self.committed = True

    def drop_replaced(self) -> None:
        """Delete the replaced run once the new run has a complete checkpoint (cheap to call every step)."""
        if self.replaced_waiting and self.committed and saved_steps(self.checkpoint_dir):
            _delete_aside(self.path)
            self.replaced_waiting = False

    def rollback(self) -> None:
        """Remove what this start wrote and move every moved file back."""
        kept = {*self.found, UNRESTORABLE_DIR} if self.mode == RESUME else {UNRESTORABLE_DIR}
        for name in RUN_FILES:
            if name not in kept:
                _remove(self.path / name)
        for source, target in reversed(self._moved):
            target.rename(source)
        self._moved.clear()
        self.committed = self.replaced_waiting = False
        for folder in (self.path / ASIDE_DIR, self.path / UNRESTORABLE_DIR, *self._created):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def _move_all(self, names, target_dir: Path, source: Path | None = None) -> None:
        source = self.path if source is None else source
        target_dir.mkdir(exist_ok=True)
        for name in names:
            target = _free_name(target_dir / name)
            (source / name).rename(target)
            self._moved.append((source / name, target))


def open_run_dir(config: RunConfig, log: Callable[[str], None]) -> RunDirectory:
    """What ``config.run_dir`` holds and what this start will do with it; raises ConfigError for a run
    there without resume/overwrite, or a resume whose config changes the training trajectory. Writes
    nothing, except that it finishes what an interrupted overwrite left (``_recover``)."""
    path = Path(config.run_dir)
    _check_writable(path)
    _recover(path, log)
    found = tuple(name for name in RUN_FILES if _holds(path / name))
    if not found:
        return RunDirectory(path, config, FRESH, {}, found)
    if not _is_run(path):
        raise ConfigError(
            f"run_dir={str(path)!r} holds {', '.join(found)} but no xlstm-flax run (no checkpoint, no "
            f"{METRICS_FILE}, and its {CONFIG_FILE} is not a saved run config): choose another run_dir; "
            "nothing there is replaced"
        )
    if config.overwrite:
        return RunDirectory(path, config, REPLACE, {}, found)
    if not config.resume:
        raise ConfigError(
            f"run_dir={str(path)!r} already holds a run ({', '.join(found)}): pass resume=true "
            "to continue it or overwrite=true to replace it"
        )
    saved = path / CONFIG_FILE
    if not saved.is_file():
        raise ConfigError(
            f"resume=true, but {path} holds no {CONFIG_FILE} to check this config against (it holds {', '.join(found)})"
        )
    saved_config, replaced = load_saved_config(saved)
    return RunDirectory(path, config, RESUME, resume_changes(saved_config, config, saved, replaced), found)


def _check_writable(path: Path) -> None:
    """ConfigError unless a run could be written at ``path``: ``path`` or its nearest existing parent is a
    directory in which this process can create (and then removes) a folder."""
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        where = "" if existing == path else f": {existing}"
        raise ConfigError(f"run_dir={str(path)!r}{where} is a file, not a directory")
    try:
        with tempfile.TemporaryDirectory(prefix=".write-check-", dir=existing):
            pass
    except OSError as err:
        raise ConfigError(f"run_dir={str(path)!r}: cannot write in {existing} ({err.strerror})") from None


def _is_run(path: Path) -> bool:
    """Whether ``path`` holds a run: a checkpoint, metrics or a ``config.yaml`` with every RunConfig section."""
    if (path / CHECKPOINT_DIR).is_dir() and any((path / CHECKPOINT_DIR).iterdir()):
        return True
    if (path / METRICS_FILE).is_file():
        return True
    try:
        saved = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(saved, dict) and {f.name for f in dataclasses.fields(RunConfig)} <= saved.keys()


def _recover(path: Path, log: Callable[[str], None]) -> None:
    """Finish what a killed process left: a replacement's deletion once the new run had a complete checkpoint,
    or else its rollback (the new run's files removed, the replaced run moved back)."""
    if (path / DELETING_DIR).exists():
        shutil.rmtree(path / DELETING_DIR)
    aside = path / ASIDE_DIR
    if not aside.is_dir():
        return
    if saved_steps(path / CHECKPOINT_DIR):  # checkpoints move aside first and back last: these are the new run's
        _delete_aside(path)
        log(
            f"deleted the run that an interrupted overwrite=true start replaced in {path}: the new run has a checkpoint"
        )
        return
    for name in RUN_FILES:
        _remove(path / name)
    for name in reversed(_checkpoints_first(RUN_FILES)):
        if (aside / name).exists():
            (aside / name).rename(path / name)
    aside.rmdir()
    log(f"moved back the run in {path} that an interrupted overwrite=true start had set aside")


def _checkpoints_first(names) -> list[str]:
    """``names`` with the checkpoint folder first: set aside first and moved back last, so that while a
    replaced run is aside, complete checkpoints in the run directory can only be the new run's."""
    return sorted(names, key=lambda name: name != CHECKPOINT_DIR)


def _delete_aside(path: Path) -> None:
    """Delete the replaced run: renamed first, so a kill midway never leaves half a run to move back."""
    (path / ASIDE_DIR).rename(path / DELETING_DIR)
    shutil.rmtree(path / DELETING_DIR)


def _holds(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``... if taken."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
