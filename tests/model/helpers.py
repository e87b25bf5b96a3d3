"""Small model configs and helpers shared by the model tests (CPU-sized: width 32, a few blocks)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xlstm_flax.layers import mLSTMLayerConfig, sLSTMLayerConfig
from xlstm_flax.model import xLSTMLMConfig, xLSTMLMModel

VOCAB = 40


def small_config(variant: str = "xlstm7b", *, kernel: str = "parallel--jax", **overrides) -> xLSTMLMConfig:
    """Width 32, 2 blocks (an mLSTM block, then an sLSTM block), 2 mLSTM heads, chunk size 4 (so short
    sequences take the kernels' padding and multi-chunk paths); input-gate bias 0 so the gates move."""
    mlstm = mLSTMLayerConfig(
        variant=variant,
        num_heads=2,
        kernel=kernel,
        chunk_size=4,
        dim_round_to=8,
        igate_bias_init=0.0,
        proj_factor=2.0,
        qkv_proj_blocksize=4,
    )
    fields = dict(
        vocab_size=VOCAB,
        embedding_dim=32,
        num_blocks=2,
        slstm_at=(1,),
        mlstm=mlstm,
        slstm=sLSTMLayerConfig(num_heads=2, conv_kernel_size=3),
    )
    fields.update(overrides)
    return xLSTMLMConfig(**fields)


def perturb_params(model: nnx.Module, seed: int, scale: float = 0.3) -> nnx.Module:
    """Adds N(0, scale^2) noise to every parameter (in place), so that zero-initialised weights
    (gates, sLSTM recurrence) take part in equivalence tests; returns the model. The noise comes
    from numpy (no per-shape XLA compilations)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    noisy = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape), x.dtype), state)
    nnx.update(model, noisy)
    return model


def make_model(config: xLSTMLMConfig, *, seed: int = 0, perturb: bool = True) -> xLSTMLMModel:
    model = xLSTMLMModel(config, rngs=nnx.Rngs(seed))
    return perturb_params(model, seed + 1) if perturb else model


def random_tokens(seed: int, batch: int, length: int, vocab: int = VOCAB) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, vocab, dtype=jnp.int32)


def assert_close_to_scale(actual, expected, rel: float, what: str) -> None:
    """|actual - expected| <= rel * max|expected| everywhere (a tolerance relative to the scale)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.abs(expected).max()
    err = np.abs(actual - expected).max()
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel} * scale {scale:.3g}"


def param_count(model_or_abstract) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model_or_abstract, nnx.Param)))


def replace_mlstm(config: xLSTMLMConfig, **fields) -> xLSTMLMConfig:
    return dataclasses.replace(config, mlstm=dataclasses.replace(config.mlstm, **fields))


def jit_call(module: nnx.Module, *args, **kwargs):
    """``module(*args, **kwargs)`` compiled with ``nnx.jit`` (eager op-by-op dispatch is slow on CPU)."""
    return nnx.jit(lambda m, *a: m(*a, **kwargs))(module, *args)
