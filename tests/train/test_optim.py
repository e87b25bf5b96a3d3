"""Optimiser: weight-decay mask by parameter path, schedules, clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlstm_flax.train.optim import OptimConfig, decay_mask, make_optimizer, make_schedule


def fake_params():
    rng = np.random.default_rng(0)

    def leaf(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype=jnp.float32)

    return {
        "embedding": {"embedding": leaf(10, 4)},
        "blocks": {
            0: {
                "mlstm": {"q": {"kernel": leaf(4, 4)}, "igate": {"bias": leaf(4)}},
                "norm_mlstm": {"scale": leaf(4)},
                "ffn": {"up": {"kernel": leaf(4, 8)}},
            }
        },
        "out_norm": {"scale": leaf(4)},
        "lm_head": {"kernel": leaf(4, 10)},
    }


def test_decay_mask_skips_norms_biases_embeddings():
    mask = decay_mask(fake_params(), OptimConfig().no_decay)
    assert mask == {
        "embedding": {"embedding": False},
        "blocks": {
            0: {
                "mlstm": {"q": {"kernel": True}, "igate": {"bias": False}},
                "norm_mlstm": {"scale": False},
                "ffn": {"up": {"kernel": True}},
            }
        },
        "out_norm": {"scale": False},
        "lm_head": {"kernel": True},
    }


def test_adamw_decays_only_masked_in_leaves():
    """With zero gradients the Adam step is 0, so only decoupled weight decay moves a parameter:
    decayed leaves shrink by exactly (1 - lr * wd), masked ones stay bit-identical."""
    cfg = OptimConfig(lr=0.1, warmup_steps=0, decay="constant", weight_decay=0.5, grad_clip=1.0)
    params = fake_params()
    optimizer = make_optimizer(cfg, total_steps=10)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zeros, optimizer.init(params), params)
    new = jax.tree.map(lambda p, u: p + u, params, updates)
    mask = decay_mask(params, cfg.no_decay)
    for (path, p), n, m in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(new), jax.tree.leaves(mask)
    ):
        expected = p * (1 - 0.1 * 0.5) if m else p
        np.testing.assert_allclose(n, expected, rtol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_warmup_then_decay_to_min(decay):
    cfg = OptimConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=10, decay=decay)
    schedule = make_schedule(cfg, total_steps=110)
    lrs = np.array([float(schedule(s)) for s in range(111)])
    np.testing.assert_allclose(lrs[[0, 5, 10]], [0.0, 5e-4, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(lrs[110], 1e-4, rtol=1e-5)
    assert (np.diff(lrs[:11]) > 0).all() and (np.diff(lrs[10:]) < 0).all()
    np.testing.assert_allclose(lrs[60], 5.5e-4, rtol=1e-5)  # midpoint: both decays halfway


def test_gradients_are_clipped_to_global_norm_before_adam():
    """Adam's second moment after one step is (1 - b2) * g_used**2; with clipping, g_used is the
    gradient scaled to global norm ``grad_clip`` (rtol 1e-5, fp32)."""
    cfg = OptimConfig(lr=1e-2, warmup_steps=0, decay="constant", b2=0.9, grad_clip=0.5)
    params = fake_params()
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 100, jnp.float32), params)
    optimizer = make_optimizer(cfg, 10)
    _, state = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    adam_state = state[1][0]  # chain(clip, adamw) -> adamw = chain(scale_by_adam, ...)
    norm = np.sqrt(sum(float((g**2).sum()) for g in jax.tree.leaves(grads)))
    for nu, g in zip(jax.tree.leaves(adam_state.nu), jax.tree.leaves(grads)):
        np.testing.assert_allclose(nu, 0.1 * (g * 0.5 / norm) ** 2, rtol=1e-5)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lr", 0.0, "lr must be > 0"),
        ("decay", "exp", "decay must be one of"),
        ("grad_clip", -1.0, "grad_clip must be > 0"),
        ("min_lr_ratio", 2.0, "min_lr_ratio must be in"),
    ],
)
def test_impossible_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(**{field: value})


def test_decay_mask_on_the_tiny_model():
    """On the real model tree: every matmul ``kernel`` decays; every 1-D parameter (norm scales,
    biases) and the embedding table do not."""
    from flax import nnx

    from xlstm_flax.model import xLSTMLMModel
    from xlstm_flax.presets import get_preset

    model = nnx.eval_shape(lambda: xLSTMLMModel(get_preset("tiny"), rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    leaves = jax.tree_util.tree_leaves_with_path(decay_mask(params, OptimConfig().no_decay))
    shapes = jax.tree.leaves(params)
    checked = {"kernel": 0, "1-D": 0, "embedding": 0}
    for (path, decays), leaf in zip(leaves, shapes):
        name = jax.tree_util.keystr(path)
        if "embedding" in name:
            assert not decays, name
            checked["embedding"] += 1
        elif len(leaf.shape) == 1:
            assert not decays, name
            checked["1-D"] += 1
        elif path[-1].key == "kernel":
            assert decays, name
            checked["kernel"] += 1
    assert checked["embedding"] == 1 and checked["1-D"] > 5 and checked["kernel"] > 10, checked
