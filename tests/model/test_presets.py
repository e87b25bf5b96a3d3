"""Every preset builds (large ones abstractly with nnx.eval_shape), has the parameter count its name
says (within 5%), and maps int32 (B, S) tokens to float32 (B, S, V) logits."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from xlstm_flax.model import xLSTMLMModel
from xlstm_flax.presets import PRESETS

from .helpers import param_count

NOMINAL = {"125m": 125e6, "350m": 350e6, "1.3b": 1.3e9, "7b": 7e9}
NOMINAL.update({f"{size}-xlstm71": NOMINAL[size] for size in ("125m", "350m", "1.3b")})


def abstract_model(name):
    return nnx.eval_shape(lambda: xLSTMLMModel(PRESETS[name], rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("name", list(NOMINAL))
def test_large_preset_param_count_and_output_shape(name):
    model = abstract_model(name)
    count = param_count(model)
    assert abs(count / NOMINAL[name] - 1) < 0.05, f"{name}: {count / 1e6:.1f}M parameters"
    params = nnx.state(model, nnx.Param)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    tokens = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    logits = nnx.eval_shape(lambda m, t: m(t), model, tokens)
    assert logits.shape == (2, 8, PRESETS[name].vocab_size) and logits.dtype == jnp.float32


def test_7b_preset_matches_the_published_xlstm_7b_shapes():
    model = abstract_model("7b")
    assert len(model.blocks.blocks) == 32
    block = model.blocks.blocks[0]
    layer = block.mixer
    shapes = {
        "embedding": (model.embedding.embedding.shape, (50304, 4096)),
        "lm_head": (model.lm_head.kernel.shape, (4096, 50304)),
        "q": (layer.q.kernel.shape, (4096, 2048)),
        "k": (layer.k.kernel.shape, (4096, 2048)),
        "v": (layer.v.kernel.shape, (4096, 4096)),
        "ogate_preact": (layer.ogate_preact.kernel.shape, (4096, 4096)),
        "igate_preact": (layer.igate_preact.kernel.shape, (4096, 8)),
        "fgate_preact.bias": (layer.fgate_preact.bias.shape, (8,)),
        "multihead_norm": (layer.multihead_norm.scale.shape, (4096,)),
        "out_proj": (layer.out_proj.kernel.shape, (4096, 4096)),
        "ffn.proj_up_gate": (block.ffn.proj_up_gate.kernel.shape, (4096, 10944)),
        "ffn.proj_down": (block.ffn.proj_down.kernel.shape, (10944, 4096)),
    }
    wrong = {k: v for k, v in shapes.items() if tuple(v[0]) != v[1]}
    assert not wrong, wrong
    assert layer.q.bias is None and layer.out_proj.bias is None  # use_bias=False as published


def test_tiny_preset_runs_on_cpu():
    cfg = PRESETS["tiny"]
    model = xLSTMLMModel(cfg, rngs=nnx.Rngs(0))
    assert 0.5e6 < param_count(model) < 2e6
    assert cfg.block_kinds().count("slstm") == 1 and cfg.vocab_size == 258
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)
    logits = nnx.jit(lambda m, t: m(t))(model, tokens)
    assert logits.shape == (2, 16, 258) and logits.dtype == jnp.float32
    assert bool(jnp.isfinite(logits).all())


@pytest.mark.parametrize("size", ["125m", "350m", "1.3b"])
def test_xlstm71_presets_put_slstm_at_one_block_in_eight(size):
    base, mixed = PRESETS[size], PRESETS[f"{size}-xlstm71"]
    kinds = mixed.block_kinds()
    assert [i for i, k in enumerate(kinds) if k == "slstm"] == list(range(3, base.num_blocks, 8))
    assert mixed.slstm.num_heads == 4 and mixed.slstm.conv_kernel_size == 4 and mixed.slstm.kernel == "auto"
    assert (mixed.embedding_dim, mixed.num_blocks, mixed.mlstm) == (base.embedding_dim, base.num_blocks, base.mlstm)
