"""The persistent JAX compilation cache of a training run: compiled steps are kept on disk, so a restart
(a resumed run, the next run of the same model) skips the XLA compilation.

``train.compile_cache`` is a directory (default ``~/.cache/xlstm_flax/jax``, shared by runs and kept when
a run directory is overwritten), ``run`` (``<run_dir>/jax_cache``, part of the run: moved aside and
deleted with it by ``overwrite=true``) or ``off`` (YAML reads it as false; the string "off" works too).
Only compilations of at least ``MIN_COMPILE_SECONDS`` are stored (the train and eval steps, not the many
small helper computations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from ..config import ConfigError

COMPILE_CACHE_DIR = "jax_cache"  # inside a run directory, with train.compile_cache: run
MIN_COMPILE_SECONDS = 0.5
OFF, RUN = "off", "run"


def cache_directory(setting: str | bool, run_dir: Path) -> Path | None:
    """The cache directory ``train.compile_cache`` names for a run in ``run_dir`` (None: off)."""
    if setting is False or setting == OFF:
        return None
    if setting == RUN:
        return run_dir / COMPILE_CACHE_DIR
    return Path(setting).expanduser()


def create_cache_directory(directory: Path | None) -> None:
    """Creates ``directory`` if absent (None: nothing); one that cannot be created is a ConfigError naming
    it (one line from the CLI)."""
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"train.compile_cache: cannot create {directory} ({err.strerror})") from None


@contextlib.contextmanager
def compilation_cache(directory: Path | None) -> Iterator[None]:
    """Inside the block JAX reads and writes compiled programs in ``directory`` (created if absent, see
    :func:`create_cache_directory`; None: no change); the previous cache settings come back after it."""
    if directory is None:
        yield
        return
    create_cache_directory(directory)
    previous = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    _configure(str(directory), MIN_COMPILE_SECONDS)
    try:
        yield
    finally:
        _configure(*previous)


def _configure(directory: str | None, min_seconds: float) -> None:
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
    jax_cache.reset_cache()  # the cache object binds its directory when first used
