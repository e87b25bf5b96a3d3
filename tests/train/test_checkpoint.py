"""Asynchronous saves: while a save is in flight (its commit held back) another reader of the directory
sees only the previous, complete checkpoint and restores it, as a restart after a crash at that moment
would; once ``wait()`` returns, the new step is listed and restores exactly. Metadata is saved as it was
when ``save`` returned."""

import asyncio
import gc
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.handlers.json_checkpoint_handler import JsonCheckpointHandler
from orbax.checkpoint._src.path import atomicity

from tests.train.run_helpers import truncate_checkpoint
from xlstm_flax.train.checkpoint import Checkpointer, CheckpointRestoreError


def random_state(seed: int):
    rng = np.random.default_rng(seed)
    return {
        "params": {"w": jnp.asarray(rng.standard_normal((64, 32)), jnp.float32)},
        "opt_state": {"m": jnp.asarray(rng.standard_normal((64, 32)), jnp.float32), "count": jnp.int32(seed)},
    }


def assert_same(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_save_in_flight_is_not_complete_until_wait(tmp_path, monkeypatch):
    first, second = random_state(1), random_state(2)
    writer = Checkpointer(tmp_path, keep=3)
    writer.save(1, first, {"step": 1})
    writer.wait()

    release, held = threading.Event(), []
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def held_finalize(self, *args, **kwargs):  # the commit (rename) of the save waits for `release`
        held.append(self)
        while not release.is_set():
            await asyncio.sleep(0.01)
        return await finalize(self, *args, **kwargs)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", held_finalize)
    writer.save(2, second, {"step": 2})
    try:
        reader = Checkpointer(tmp_path, keep=3, read_only=True)
        assert reader.all_steps() == [1]  # a crash now leaves step 1, complete
        state, meta, step, skipped = reader.restore_newest(random_state(9))
        assert (step, meta, skipped) == (1, {"step": 1}, [])
        assert_same(state, first)
        reader.close()
    finally:
        release.set()
    writer.wait()
    assert held  # the save did go through the held commit
    reader = Checkpointer(tmp_path, keep=3, read_only=True)
    state, meta, step = reader.restore(random_state(9))
    assert (reader.all_steps(), step, meta) == ([1, 2], 2, {"step": 2})
    assert_same(state, second)
    reader.close()
    writer.close()


def test_metadata_changed_after_save_returns_is_saved_as_it_was(tmp_path, monkeypatch):
    """The training loop keeps appending to the log window it passed to ``save``; the checkpoint must
    hold the window as it was at the save, however late the background thread writes the JSON."""
    release, written = threading.Event(), []
    write_json = JsonCheckpointHandler._save_fn

    async def held_write_json(self, x, directory):  # the background JSON write waits for `release`
        while not release.is_set():
            await asyncio.sleep(0.01)
        written.append(x)
        return await write_json(self, x, directory)

    monkeypatch.setattr(JsonCheckpointHandler, "_save_fn", held_write_json)
    writer = Checkpointer(tmp_path, keep=3)
    window = [4.25, 4.5]
    writer.save(1, random_state(1), {"step": 1, "log_window": window})
    window.append(3.75)  # what the next training step does while the save is in flight
    release.set()
    writer.close()
    assert written  # the save did go through the held write
    reader = Checkpointer(tmp_path, keep=3, read_only=True)
    _, meta, _ = reader.restore(random_state(9))
    reader.close()
    assert meta == {"step": 1, "log_window": [4.25, 4.5]}


def test_a_failed_restore_leaves_no_read_in_flight(tmp_path, monkeypatch, caplog):
    """orbax returns at a restore's first error; the other reads of that restore must be finished or
    cancelled by then, not left to end later on a closed event loop (where their callbacks fail)."""
    rng = np.random.default_rng(0)
    state = {f"w{i}": jnp.asarray(rng.standard_normal((256, 64)), jnp.float32) for i in range(24)}
    writer = Checkpointer(tmp_path, keep=3)
    writer.save(1, state, {"step": 1})
    writer.close()
    truncate_checkpoint(tmp_path / "1")
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    reader = Checkpointer(tmp_path, keep=3, read_only=True)
    with pytest.raises(CheckpointRestoreError, match=f"checkpoint {tmp_path / '1'} does not restore"):
        reader.restore(jax.tree.map(jnp.zeros_like, state))
    reader.close()
    unfinished = [t for t in gc.get_objects() if isinstance(t, asyncio.Task) and not t.done()]
    assert unfinished == []
    time.sleep(0.5)  # time for any read still in flight to end
    gc.collect()
    assert [str(u.exc_value) for u in unraisable] == []
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []  # "Task was destroyed but..."


def test_placeholder_leaves_are_left_unread(tmp_path):
    """A target whose optimiser leaves are orbax's placeholder restores the parameters alone (inference)."""
    saved = random_state(1)
    writer = Checkpointer(tmp_path, keep=1)
    writer.save(1, saved, {"step": 1})
    writer.close()
    target = random_state(9)
    target["opt_state"] = jax.tree.map(lambda _: ocp.PLACEHOLDER, target["opt_state"])
    reader = Checkpointer(tmp_path, keep=1, read_only=True)
    state, _, _ = reader.restore(target)
    reader.close()
    assert_same(state["params"], saved["params"])
    assert all(leaf is ocp.PLACEHOLDER for leaf in jax.tree.leaves(state["opt_state"]))


def test_a_step_that_is_not_an_int_is_named(tmp_path):
    """``load_trained_model(run, step="600")`` said "no checkpoint of step 600 (steps: [400, 600])"."""
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=1)
    with pytest.raises(TypeError, match="step must be an int or None, got '600'"):
        checkpointer.existing_step("600")
    checkpointer.close()
