"""Projections of one input joined into one matmul, and narrow ones into one multiply-and-sum (decode
steps), equal the Linears run one by one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from xlstm_flax.layers import FFNConfig, GatedFFN, mLSTMLayer, mLSTMLayerConfig, projections
from xlstm_flax.layers.init import dense
from xlstm_flax.layers.projections import JOIN_WIDTH, MAX_JOINED_ROWS, project

from .helpers import perturb_params


def linears(dtype, param_dtype, biased_dtype=None, gate_width=4):
    """Two joinable projections (widths JOIN_WIDTH without bias and 2 * JOIN_WIDTH with one) and a
    gate-like one, ``gate_width`` wide with fp32 output, all from width 24, with random kernels and
    biases; ``biased_dtype``: the second one's compute and parameter dtype instead."""
    rngs = nnx.Rngs(0)
    common = dict(axes=("embed", "heads"), kernel_init=nnx.initializers.normal(0.5), rngs=rngs)
    random_bias = nnx.initializers.normal(0.5)
    plain = dense(24, JOIN_WIDTH, use_bias=False, dtype=dtype, param_dtype=param_dtype, **common)
    biased_dtype = biased_dtype or param_dtype
    biased = dense(
        24, 2 * JOIN_WIDTH, use_bias=True, dtype=biased_dtype, param_dtype=biased_dtype, bias_init=random_bias, **common
    )
    gate = dense(
        24,
        gate_width,
        use_bias=True,
        dtype=None,
        param_dtype=param_dtype,
        preferred_element_type=jnp.float32,
        bias_init=random_bias,
        **common,
    )
    return plain, biased, gate


def dots(fn, x) -> int:
    return str(jax.make_jaxpr(fn)(x)).count("dot_general")


@pytest.mark.parametrize("gate_width", [4, JOIN_WIDTH])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_joined_projections_equal_each_linear(dtype, gate_width):
    """The two joinable Linears run as one matmul, a 4-wide gate as a multiply-and-sum (no matmul); a
    JOIN_WIDTH-wide gate (fp32 output) joins the matmul (an fp32 product rounded to each output dtype).
    Either way one matmul. fp32: within 1e-5 of the float64
    matmul. bf16: every output has its Linear's dtype and shape; bf16 outputs within one bf16 rounding
    (2^-7 of the largest value) of the Linear's own, the fp32 gate output within 1e-5 of the float64
    matmul of the same bf16 values (exact products, fp32 sums)."""
    layers = linears(dtype, dtype, gate_width=gate_width)
    x = jax.random.normal(jax.random.key(1), (2, 3, 24), jnp.float32).astype(dtype)
    assert dots(lambda x: project(x, *layers), x) == 1
    joined = jax.jit(lambda x: project(x, *layers))(x)
    for linear, got in zip(layers, joined):
        alone = linear(x)
        assert got.dtype == alone.dtype and got.shape == alone.shape
        exact = np.asarray(x, np.float64) @ np.asarray(linear.kernel[...], np.float64)
        if linear.bias is not None:
            exact = exact + np.asarray(linear.bias[...], np.float64)
        if got.dtype == jnp.float32:
            np.testing.assert_allclose(np.asarray(got), exact, rtol=1e-5, atol=1e-5)
        else:
            scale = np.abs(exact).max()
            np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(alone, np.float64), atol=scale / 128)


def test_many_rows_mixed_dtypes_or_tensor_parallel_run_each_linear():
    """More than MAX_JOINED_ROWS rows, joinable Linears computing in different dtypes (also through a
    bias that promotes the product), a Linear with its own precision, or a mesh that splits the output
    axes over tensor-parallel devices: one matmul per such Linear, and with many rows the outputs are
    bitwise the Linears' own. The narrow gate runs as a multiply-and-sum whenever the rows are few, the
    mesh is not tensor-parallel and it multiplies as a plain Linear."""
    layers = linears(jnp.bfloat16, jnp.bfloat16)
    many = jax.random.normal(jax.random.key(2), (MAX_JOINED_ROWS + 1, 24)).astype(jnp.bfloat16)
    few = many[:MAX_JOINED_ROWS]
    assert dots(lambda x: project(x, *layers), many) == 3
    assert dots(lambda x: project(x, *layers), few) == 1
    for got, linear in zip(project(many, *layers), layers):
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(linear(many), np.float32))

    mixed = linears(jnp.bfloat16, jnp.bfloat16, biased_dtype=jnp.float32)
    assert dots(lambda x: project(x, *mixed), few) == 2
    plain, fp32_bias, gate = linears(jnp.bfloat16, jnp.bfloat16)  # no dtype, bf16 kernel, fp32 bias: fp32
    fp32_bias.dtype, fp32_bias.bias = None, nnx.Param(fp32_bias.bias[...].astype(jnp.float32))
    assert dots(lambda x: project(x, plain, fp32_bias, gate), few) == 2
    precise, biased, gate = linears(jnp.bfloat16, jnp.bfloat16)  # its own precision: not the joined matmul's
    precise.precision = jax.lax.Precision.HIGHEST
    assert dots(lambda x: project(x, precise, biased, gate), few) == 2
    gate.precision = jax.lax.Precision.HIGHEST
    assert dots(lambda x: project(x, precise, biased, gate), few) == 3

    mesh = AbstractMesh((2, 2), ("data", "tensor"), axis_types=(AxisType.Explicit,) * 2)
    with jax.sharding.use_abstract_mesh(mesh):
        assert dots(lambda x: project(x, *layers), few) == 3
    untensored = AbstractMesh((4, 1), ("data", "tensor"), axis_types=(AxisType.Explicit,) * 2)
    with jax.sharding.use_abstract_mesh(untensored):
        assert dots(lambda x: project(x, *layers), few) == 1


def test_layer_steps_with_joined_projections_equal_steps_without(monkeypatch):
    """An xLSTM-7B mLSTM layer (v and output gate 256 wide: joined) and a gated FFN (hidden 512: both
    up projections joined), fp32, one decode step: equal to the same step with joining off, within 1e-5
    of each output's largest value (fp32 sums in another order); the step holds fewer matmuls."""
    cfg = mLSTMLayerConfig(num_heads=2, kernel="parallel--jax", step_kernel="step--jax", dim_round_to=128)
    layer = perturb_params(mLSTMLayer(256, cfg, num_blocks=2, rngs=nnx.Rngs(0)), 1, scale=0.5)
    ffn = perturb_params(GatedFFN(256, FFNConfig(proj_factor=2.0), num_blocks=2, rngs=nnx.Rngs(2)), 3, scale=0.5)
    x = jax.random.normal(jax.random.key(4), (3, 256))
    state = jax.tree.map(lambda a: jax.random.uniform(jax.random.key(5), a.shape), layer.init_state(3))

    def run():  # a new function each time, so that no trace is reused across the patch
        def step(x):
            y, new_state = layer.step(x, state)
            return ffn(y), new_state

        return jax.jit(step)(x), dots(step, x)

    joined, joined_dots = run()
    monkeypatch.setattr(projections, "MAX_JOINED_ROWS", 0)
    alone, alone_dots = run()
    assert joined_dots < alone_dots
    for got, expected in zip(jax.tree.leaves(joined), jax.tree.leaves(alone)):
        scale = np.abs(np.asarray(expected)).max()
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-5 * scale)


def test_joined_gradients_equal_each_linears():
    """With few rows (a small training batch also takes the joined paths) the gradients of a random
    weighting of every output, to the input and every kernel and bias, equal those of the Linears run
    one by one: fp32, within 1e-5 of each gradient's largest value (fp32 sums in another order)."""
    layers = linears(jnp.float32, jnp.float32)
    x = jax.random.normal(jax.random.key(6), (2, 5, 24))
    weights = [jax.random.normal(jax.random.key(7 + j), linear(x).shape) for j, linear in enumerate(layers)]
    graphdef, params = nnx.split(layers)

    def loss(params, x, joined):
        outputs = project(x, *nnx.merge(graphdef, params)) if joined else [f(x) for f in nnx.merge(graphdef, params)]
        return sum(jnp.sum(w * y) for w, y in zip(weights, outputs))

    assert dots(lambda x: project(x, *layers), x) == 1
    got, expected = (jax.grad(loss, argnums=(0, 1))(params, x, joined) for joined in (True, False))
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=0, atol=1e-5 * np.abs(np.asarray(e)).max())
