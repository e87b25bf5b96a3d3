"""The LM model end to end on small fp32 configs with perturbed (non-trivial) parameters:
causality, backend swap, step mode and carried state, scan/remat equivalence, gradients, one
compilation per train step, bf16 compute."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from xlstm_flax.model import xLSTMLMModel

from .helpers import (
    VOCAB,
    assert_close_to_scale,
    make_model,
    random_tokens,
    small_config,
)

KERNELS = ("parallel--jax", "chunkwise--jax", "recurrent--jax")
VARIANTS = ("xlstm7b", "paper")
# fp32 logits of different kernels / step mode / carried state agree to this fraction of their scale
FP32_REL_TOL = 1e-4


@nnx.jit
def logits_fn(model, tokens):
    return model(tokens)


@pytest.mark.parametrize("variant", VARIANTS)
def test_backend_swap_and_causality(variant):
    """Every sequence kernel gives the same logits; changing token t changes logits at t but none
    before t (checked for every kernel)."""
    tokens = random_tokens(0, 2, 10)
    t = 6
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % VOCAB)
    results = {}
    for kernel in KERNELS:
        # two calls of the same shape, so both prefixes take the same arithmetic (in one batch, XLA's CPU
        # kernels may round rows differently by their position, about 1e-6 on some CPUs)
        model = make_model(small_config(variant, kernel=kernel))
        original, edited = logits_fn(model, tokens), logits_fn(model, changed)
        np.testing.assert_allclose(
            edited[:, :t], original[:, :t], rtol=0, atol=1e-6, err_msg=f"{kernel}: a later token changed earlier logits"
        )
        assert float(jnp.abs(edited[:, t] - original[:, t]).min(axis=-1).max()) > 0, kernel
        assert float(jnp.abs(edited[:, t] - original[:, t]).max()) > 1e-3, kernel
        results[kernel] = original
    for kernel in KERNELS[1:]:
        assert_close_to_scale(results[kernel], results[KERNELS[0]], FP32_REL_TOL, f"{kernel} vs parallel")


@nnx.jit
def full_step_and_halves(model, tokens):
    """Logits of the whole sequence three ways: one call; token by token from init_state (lax.scan
    of model.step); two halves with the state carried from the first into the second."""
    full = model(tokens)

    def one_step(state, token):
        logits, state = model.step(token, state)
        return state, logits

    _, stepped = jax.lax.scan(one_step, model.init_state(tokens.shape[0]), tokens.T)
    half = tokens.shape[1] // 2
    first, state = model(tokens[:, :half], return_state=True)
    second, _ = model(tokens[:, half:], state, return_state=True)
    return full, stepped.transpose(1, 0, 2), jnp.concatenate([first, second], axis=1)


@pytest.mark.parametrize(
    "config",
    [
        small_config("xlstm7b", kernel="chunkwise--jax"),
        small_config("paper", kernel="chunkwise--jax"),
        small_config("xlstm7b", kernel="chunkwise--jax", slstm_at=(), scan_layers=True, remat=True),
    ],
    ids=["xlstm7b", "paper", "scan_layers"],
)
def test_step_mode_and_carried_state_reproduce_full_sequence(config):
    full, stepped, halves = full_step_and_halves(make_model(config), random_tokens(1, 2, 11))
    assert_close_to_scale(stepped, full, FP32_REL_TOL, "token-by-token steps vs full sequence")
    assert_close_to_scale(halves, full, FP32_REL_TOL, "two halves with carried state vs full sequence")


def test_scanned_stack_equals_the_block_loop():
    """Same parameters stacked along a block axis: nnx.scan (with remat) gives the loop's logits."""
    config = small_config(slstm_at=(), num_blocks=3)
    loop_model = make_model(config)
    scan_model = xLSTMLMModel(dataclasses.replace(config, scan_layers=True, remat=True), rngs=nnx.Rngs(5))
    params = nnx.to_pure_dict(nnx.state(loop_model, nnx.Param))
    blocks = params["blocks"]["blocks"]
    params["blocks"]["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[blocks[i] for i in range(3)])
    scan_state = nnx.state(scan_model, nnx.Param)
    nnx.replace_by_pure_dict(scan_state, params)
    nnx.update(scan_model, scan_state)
    tokens = random_tokens(2, 2, 9)
    assert_close_to_scale(logits_fn(scan_model, tokens), logits_fn(loop_model, tokens), 1e-6, "scan vs loop")


def cross_entropy(model, tokens):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_gets_a_finite_nonzero_gradient(variant):
    """At initialisation (no perturbation), with biases everywhere, an untied head and an sLSTM block."""
    mlstm = dataclasses.replace(small_config(variant).mlstm, use_bias=True)
    config = small_config(variant, mlstm=mlstm, ffn=dataclasses.replace(small_config().ffn, use_bias=True))
    model = make_model(config, perturb=False)
    grads = nnx.jit(nnx.grad(cross_entropy))(model, random_tokens(3, 2, 9))
    flat = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads))
    assert len(flat) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    bad = [
        jax.tree_util.keystr(path) for path, g in flat if not (bool(jnp.isfinite(g).all()) and bool(jnp.any(g != 0)))
    ]
    assert not bad, f"zero or non-finite gradients: {bad}"


def test_jitted_train_step_compiles_once():
    config = small_config(slstm_at=(), scan_layers=True, remat=True)
    model = make_model(config, perturb=False)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    traces = []

    @nnx.jit
    def train_step(model, optimizer, tokens):
        traces.append(1)
        loss, grads = nnx.value_and_grad(cross_entropy)(model, tokens)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, random_tokens(10 + s, 4, 12))) for s in range(4)]
    assert len(traces) == 1, f"train step traced {len(traces)} times"
    assert all(np.isfinite(losses)) and losses[-1] != losses[0]


def test_bf16_compute_keeps_fp32_params_and_logits():
    """At initialisation: parameters and logits stay fp32, matmuls run in bf16, and the logits stay
    close to fp32 compute. Tolerance: RMS difference <= 5% of the RMS logit (bf16 keeps 8 mantissa
    bits, ~0.4% per rounding, through embedding, 2 blocks and head; a max-norm bound would be
    unfair because the per-head norm amplifies rounding of heads whose output is near zero)."""
    config = small_config(compute_dtype="bfloat16", kernel="chunkwise--jax")
    model_bf16 = make_model(config, perturb=False)
    model_fp32 = make_model(dataclasses.replace(config, compute_dtype="float32"), perturb=False)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model_bf16, nnx.Param)))
    tokens = random_tokens(4, 2, 10)
    jaxpr = jax.make_jaxpr(lambda t: model_bf16(t))(tokens).jaxpr
    dot_dtypes = {e.invars[0].aval.dtype for e in _equations(jaxpr) if e.primitive.name == "dot_general"}
    assert jnp.dtype(jnp.bfloat16) in dot_dtypes, dot_dtypes
    logits, reference = logits_fn(model_bf16, tokens), logits_fn(model_fp32, tokens)
    assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())
    rms_diff = float(jnp.sqrt(jnp.mean((logits - reference) ** 2) / jnp.mean(reference**2)))
    assert 0 < rms_diff <= 0.05, rms_diff


def _equations(jaxpr):
    """All equations of a jaxpr, including those inside sub-jaxprs (scan, pjit, custom_vjp...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_bad_tokens_raise_clear_errors():
    model = make_model(small_config(), perturb=False)
    tokens = jnp.ones((2, 5), jnp.int32)
    with pytest.raises(ValueError, match="tokens must be a non-empty integer array"):
        model(jnp.zeros((2, 5), jnp.float32))
    with pytest.raises(
        ValueError, match=r"tokens must be a non-empty integer array of shape \(B, S\), got int32 \(2, 0\)"
    ):
        model(tokens[:, :0])
    with pytest.raises(ValueError, match=r"token must be a non-empty integer array of shape \(B,\)"):
        model.step(jnp.zeros((2, 1), jnp.int32), model.init_state(2))
    vocab = model.config.vocab_size
    with pytest.raises(ValueError, match=rf"tokens holds ids from 1 to {vocab}, outside \[0, {vocab}\)"):
        model(tokens.at[1, 3].set(vocab))  # eagerly: under jit it would read a NaN embedding row
    with pytest.raises(ValueError, match=rf"token holds ids from -1 to 1, outside \[0, {vocab}\)"):
        model.step(jnp.array([1, -1]), model.init_state(2))
    with pytest.raises(TypeError, match="xLSTMLMConfig"):
        xLSTMLMModel({"embedding_dim": 32}, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
def test_state_must_hold_one_state_per_block(scan_layers):
    """A state of another block count was silently zipped against the blocks (the rest skipped)."""
    config = small_config(kernel="chunkwise--jax", slstm_at=(), scan_layers=scan_layers)
    model = make_model(config, perturb=False)
    state = model.init_state(2)
    short = jax.tree.map(lambda a: a[:1], state) if scan_layers else state[:1]
    with pytest.raises(ValueError, match=rf"state must hold one state per block \({config.num_blocks} blocks"):
        model(jnp.ones((2, 5), jnp.int32), short)
    with pytest.raises(ValueError, match="state must hold one state per block"):
        model.step(jnp.ones((2,), jnp.int32), short)
    with pytest.raises(ValueError, match=r"state.*has shape .*, expected .* \(as model.init_state\(2\) makes it\)"):
        model(jnp.ones((2, 5), jnp.int32), model.init_state(1))  # another batch size
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=rf"batch_size must be an int >= 1, got {bad!r}"):
            model.init_state(bad)


def test_token_ids_are_checked_when_a_jitted_function_closes_over_them():
    """Concrete tokens captured by a jitted function are checked too (without forcing a tracer to int)."""
    model = make_model(small_config(), perturb=False)
    graphdef, params = nnx.split(model)
    good, bad = jnp.ones((2, 5), jnp.int32), jnp.full((2, 5), model.config.vocab_size, jnp.int32)
    assert jax.jit(lambda p: nnx.merge(graphdef, p)(good))(params).shape == (2, 5, model.config.vocab_size)
    with pytest.raises(ValueError, match="tokens holds ids from"):
        jax.jit(lambda p: nnx.merge(graphdef, p)(bad))(params)
