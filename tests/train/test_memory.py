"""The train step's memory check: XLA's per-device need, the advice, and the refusals through train()
(hidden states before compiling, the compiled step, the state before it is allocated)."""

import jax
import jax.numpy as jnp
import pytest

from tests.train.test_train import CHEAP
from xlstm_flax.memory import MEMINFO, free_bytes
from xlstm_flax.train import OutOfMemoryError, load_recipe, train
from xlstm_flax.train.memory import advice, step_bytes

GiB = 2**30
HOST_FREE = free_bytes(jax.devices("cpu")[0]) if MEMINFO.exists() else None


def test_step_bytes_leaves_out_the_donated_arguments():
    x = jax.random.normal(jax.random.key(0), (512, 512), jnp.float32)

    def f(a):  # elementwise: with donation XLA writes the result into the argument's buffer
        return jnp.tanh(a) * 2.0 + 1.0

    kept = step_bytes(jax.jit(f).lower(x).compile())
    donated = step_bytes(jax.jit(f, donate_argnums=0).lower(x).compile())
    assert kept >= x.nbytes  # the output is new memory
    assert kept - donated == x.nbytes  # with donation it reuses the argument's buffer


def test_advice_names_only_the_options_that_would_change():
    assert advice(16, 4096, 1, remat=False, loss_chunk=None) == (
        "lower train.batch_size (16) or train.seq_len (4096); keep the tokens per update with a smaller "
        "batch_size and more train.grad_accum_steps (1); set model.remat: true; set train.loss_chunk below "
        "train.seq_len (e.g. 1024)"
    )
    assert "remat" not in advice(16, 4096, 1, remat=True, loss_chunk=512)
    assert "loss_chunk" not in advice(16, 4096, 1, remat=True, loss_chunk=512)


# The small recipe (width 32, seq_len 32, one mLSTM block): a batch of 2**20 rows has 4 GiB of fp32 hidden
# states and a compiled step of about 330 GiB; 2**28 rows, 1 TiB of hidden states.
@pytest.mark.skipif(HOST_FREE is None or not 4 * GiB < HOST_FREE < 300 * GiB, reason="needs 4-300 GiB free")
def test_a_step_larger_than_memory_is_refused_by_xla_count(recipe, tmp_path):
    with pytest.raises(OutOfMemoryError, match=r"the train step needs \d+\.\d GiB per device and cpu:0 has") as err:
        train(load_recipe(recipe, [f"run_dir={tmp_path / 'run'}", *CHEAP, "train.batch_size=1048576"]))
    assert "train.batch_size (1048576)" in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(HOST_FREE is None or HOST_FREE > 1024 * GiB, reason="needs less than 1 TiB free")
def test_hidden_states_larger_than_memory_are_refused_before_compiling(recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(jax.stages.Lowered, "compile", None)  # compiling would fail with a TypeError
    with pytest.raises(OutOfMemoryError, match=r"needs at least \(its hidden states alone\) 1024.0 GiB per device"):
        train(load_recipe(recipe, [f"run_dir={tmp_path / 'run'}", *CHEAP, "train.batch_size=268435456"]))
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(HOST_FREE is None or HOST_FREE > 500 * GiB, reason="needs less than 500 GiB free")
def test_a_state_larger_than_memory_is_refused_before_it_is_allocated(recipe, tmp_path):
    """Width 65536: about 576 GiB of parameters and AdamW moments, refused from their abstract shapes (had
    they been allocated first, the failure would be XLA's or the OOM killer's, not this error)."""
    with pytest.raises(OutOfMemoryError, match=r"the parameters and optimiser state need \d+\.\d GiB per device"):
        train(load_recipe(recipe, [f"run_dir={tmp_path / 'run'}", *CHEAP, "model.embedding_dim=65536"]))
    assert not (tmp_path / "run").exists()
