"""The chunked cross-entropy equals the plain one, values and gradients (to the parameters of the head,
to the hidden states and to the weights), with and without per-token weights, for a length that is not a multiple of
the chunk, through a tied-embedding, soft-capped head: the model's capped head, and its logits before the
cap with the loss applying the cap (as training calls it). Tolerance: fp32, 1e-6 of the scale (only the
order of the sums differs)."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.model.helpers import VOCAB, assert_close_to_scale, make_model, small_config
from xlstm_flax.train.loss import chunked_cross_entropy, cross_entropy

REL_TOL = 1e-6
BATCH, LENGTH, CHUNK = 3, 13, 4  # 13 = 3 full chunks and one of 1
SOFT_CAP = 5.0
HEAD_FORMS = ["capped head", "cap in the loss"]


def head_and_cap(model, form):
    """The head and soft cap that ``chunked_cross_entropy`` takes for the model's loss in ``form``."""
    return (model.head, None) if form == "capped head" else (model.uncapped_logits, SOFT_CAP)


@pytest.fixture(scope="module")
def inputs():
    model = make_model(small_config(tie_embeddings=True, logit_soft_cap=SOFT_CAP, num_blocks=1, slstm_at=()), seed=7)
    rng = np.random.default_rng(11)
    features = jnp.asarray(rng.standard_normal((BATCH, LENGTH, 32)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, VOCAB, (BATCH, LENGTH)), jnp.int32)
    weights = jnp.asarray(rng.random((BATCH, LENGTH)) > 0.3, jnp.float32)
    return model, features, targets, weights


def loss_and_grads(model, features, targets, weights, chunk, form):
    graphdef, params = nnx.split(model)

    def loss(params, features):
        head, cap = head_and_cap(nnx.merge(graphdef, params), form)
        return chunked_cross_entropy(head, features, targets, weights, chunk, cap)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, features)


@pytest.mark.parametrize("form", HEAD_FORMS)
@pytest.mark.parametrize("weighted", [False, True])
def test_chunked_equals_plain(inputs, weighted, form):
    model, features, targets, weights = inputs
    weights = weights if weighted else None
    plain, (plain_params, plain_features) = loss_and_grads(model, features, targets, weights, None, "capped head")
    expected = cross_entropy(model.head(features), targets, weights)
    np.testing.assert_allclose(plain, expected, rtol=REL_TOL)  # chunk None is the plain loss
    value, (grad_params, grad_features) = loss_and_grads(model, features, targets, weights, CHUNK, form)
    np.testing.assert_allclose(value, plain, rtol=REL_TOL)
    assert_close_to_scale(grad_features, plain_features, REL_TOL, "gradient to the hidden states")
    for path, got, want in zip(
        jax.tree_util.tree_leaves_with_path(grad_params), jax.tree.leaves(grad_params), jax.tree.leaves(plain_params)
    ):
        if np.abs(np.asarray(want)).max() > 0:  # head parameters (the blocks' gradients are zero here)
            assert_close_to_scale(got, want, REL_TOL, f"gradient {jax.tree_util.keystr(path[0])}")
    assert np.abs(np.asarray(grad_features)).max() > 0


@pytest.mark.parametrize("form", HEAD_FORMS)
def test_gradient_to_the_weights_equals_plain(inputs, form):
    """The weights' gradient (each position's loss over the weight sum, minus the mean loss over it)."""
    model, features, targets, weights = inputs
    head, cap = head_and_cap(model, form)

    def loss(weights, chunk):
        return chunked_cross_entropy(head, features, targets, weights, chunk, cap)

    plain = jax.jit(jax.grad(loss), static_argnums=1)(weights, None)
    chunked = jax.jit(jax.grad(loss), static_argnums=1)(weights, CHUNK)
    assert np.abs(np.asarray(plain)).max() > 0
    assert_close_to_scale(chunked, plain, REL_TOL, "gradient to the weights")


def test_changed_parameters_are_used_outside_jit(inputs):
    """Called eagerly twice on one model whose parameters changed in between, the loss is that of the
    new parameters (nothing traced in the first call is reused)."""
    model, features, targets, _ = inputs
    model = nnx.clone(model)
    before = chunked_cross_entropy(model.head, features, targets, chunk=CHUNK)
    np.testing.assert_allclose(before, cross_entropy(model.head(features), targets), rtol=REL_TOL)
    nnx.update(model, jax.tree.map(lambda p: 2 * p, nnx.state(model, nnx.Param)))
    after = chunked_cross_entropy(model.head, features, targets, chunk=CHUNK)
    expected = cross_entropy(model.head(features), targets)
    assert abs(float(expected) - float(before)) > 1e-3
    np.testing.assert_allclose(after, expected, rtol=REL_TOL)


def test_chunk_is_checked(inputs):
    model, features, targets, _ = inputs
    with pytest.raises(ValueError, match="loss chunk must be >= 0"):
        chunked_cross_entropy(model.head, features, targets, chunk=-2)
    with pytest.raises(ValueError, match=r"features shape \(3, 12, 32\)"):
        chunked_cross_entropy(model.head, features[:, :12], targets, chunk=4)


@pytest.mark.parametrize("form", HEAD_FORMS)
def test_no_full_logits_in_forward_or_backward_and_logits_computed_once(inputs, form):
    """No (B, ., V) array of the traced value-and-gradient holds more than one chunk of logits, and it
    holds three head matmuls (the logits, and the products for the gradients to the head's kernel and to
    the hidden states): the backward does not compute the logits again."""
    model, features, targets, weights = inputs
    graphdef, params = nnx.split(model)

    def loss(params, features):
        head, cap = head_and_cap(nnx.merge(graphdef, params), form)
        return chunked_cross_entropy(head, features, targets, weights, CHUNK, cap)

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(params, features)
    eqns = list(_all_eqns(jaxpr.jaxpr))
    outvars = [v for eqn in eqns for v in eqn.outvars]
    sizes = [v.aval.size for v in outvars if v.aval.ndim >= 3 and v.aval.shape[-1] == VOCAB]
    assert sizes and max(sizes) <= BATCH * CHUNK * VOCAB, max(sizes)
    assert sum(eqn.primitive.name == "dot_general" for eqn in eqns) == 3


def _all_eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _all_eqns(sub)
