"""Asynchronous saves: while a save is in flight (its commit held back) another reader of the directory
sees only the previous, complete checkpoint and restores it, as a restart after a crash at that moment
would; once ``wait()`` returns, the new step is listed and restores exactly."""

import asyncio
import threading

import jax
import jax.numpy as jnp
import numpy as np
from orbax.checkpoint._src.path import atomicity

from xlstm_flax.train.checkpoint import Checkpointer


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
