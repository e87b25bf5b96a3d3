"""Projections of one input joined into one matmul, and narrow 16-bit ones into one multiply-and-sum (decode
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
    """Two joinable projections (widths JOIN_WIDTH without bias and 2 * JOIN_WIDTH with one) and two
    gate-like ones (``gate_width`` and 3 wide, fp32 output, computing in the promoted dtype), all from width
    24, with random kernels and biases; ``biased_dtype``: the second one's compute and parameter dtype."""
    rngs = nnx.Rngs(0)
    common = dict(axes=("embed", "heads"), kernel_init=nnx.initializers.normal(0.5), rngs=rngs)
    random_bias = nnx.initializers.normal(0.5)
    plain = dense(24, JOIN_WIDTH, use_bias=False, dtype=dtype, param_dtype=param_dtype, **common)
    biased_dtype = biased_dtype or param_dtype
    biased = dense(
        24, 2 * JOIN_WIDTH, use_bias=True, dtype=biased_dtype, param_dtype=biased_dtype, bias_init=random_bias, **common
    )
    gate = dict(
        use_bias=True, dtype=None, param_dtype=param_dtype, preferred_element_type=jnp.float32, bias_init=random_bias
    )
    return plain, biased, dense(24, gate_width, **gate, **common), dense(24, 3, **gate, **common)


def dots(fn, x) -> int:
    return str(jax.make_jaxpr(fn)(x)).count("dot_general")


@pytest.mark.parametrize(
    "dtype, gate_width, matmuls",
    [(jnp.float32, 4, 3), (jnp.bfloat16, 4, 1), (jnp.float32, JOIN_WIDTH, 2), (jnp.bfloat16, JOIN_WIDTH, 2)],
)
def test_joined_projections_equal_each_linear(dtype, gate_width, matmuls):
    """The two joinable Linears run as one matmul. Two narrow gates run as one multiply-and-sum (no matmul)
    in bf16; in fp32 each runs as its own matmul (the sum would skip the GPU's TF32 products). A JOIN_WIDTH
    wide gate (fp32 output) joins the matmul (an fp32 product rounded to each output dtype) and leaves the
    3-wide one alone. fp32: within 1e-5 of the float64 matmul. bf16: every output has its Linear's dtype
    and shape; bf16 outputs within one bf16 rounding (2^-7 of the largest value) of the Linear's own, the
    fp32 gate outputs within 1e-5 of the float64 matmul of the same bf16 values (exact products, fp32 sums)."""
    layers = linears(dtype, dtype, gate_width=gate_width)
    x = jax.random.normal(jax.random.key(1), (2, 3, 24), jnp.float32).astype(dtype)
    assert dots(lambda x: project(x, *layers), x) == matmuls
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
    bias that promotes the product), a Linear with its own precision or of a subclass, or a mesh that
    splits the output axes over tensor-parallel devices: one matmul per such Linear, and with many rows the
    outputs are bitwise the Linears' own. The narrow gates run as one multiply-and-sum whenever the rows
    are few, the mesh is not tensor-parallel, both multiply as plain Linears and the input and kernels have
    their 16-bit compute dtype."""
    layers = linears(jnp.bfloat16, jnp.bfloat16)
    many = jax.random.normal(jax.random.key(2), (MAX_JOINED_ROWS + 1, 24)).astype(jnp.bfloat16)
    few = many[:MAX_JOINED_ROWS]
    assert dots(lambda x: project(x, *layers), many) == 4
    assert dots(lambda x: project(x, *layers), few) == 1
    for got, linear in zip(project(many, *layers), layers):
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(linear(many), np.float32))

    mixed = linears(jnp.bfloat16, jnp.bfloat16, biased_dtype=jnp.float32)
    assert dots(lambda x: project(x, *mixed), few) == 2
    plain, fp32_bias, *gates = linears(jnp.bfloat16, jnp.bfloat16)  # no dtype, bf16 kernel, fp32 bias: fp32
    fp32_bias.dtype, fp32_bias.bias = None, nnx.Param(fp32_bias.bias[...].astype(jnp.float32))
    assert dots(lambda x: project(x, plain, fp32_bias, *gates), few) == 2
    precise, biased, gate, second = linears(jnp.bfloat16, jnp.bfloat16)  # own precision: not the joined op's
    precise.precision = jax.lax.Precision.HIGHEST
    assert dots(lambda x: project(x, precise, biased, gate, second), few) == 2
    gate.precision = jax.lax.Precision.HIGHEST  # the other gate alone: no group to sum with
    assert dots(lambda x: project(x, precise, biased, gate, second), few) == 4

    class Scaled(nnx.Linear):  # computes more than the product: never joined
        def __call__(self, x):
            return 2 * super().__call__(x)

    scaled = Scaled(24, 3, dtype=None, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(3))
    scaled_and_gate = lambda x: project(x, scaled, layers[2])  # noqa: E731
    assert dots(scaled_and_gate, few) == 2
    np.testing.assert_array_equal(np.asarray(scaled_and_gate(few)[0]), np.asarray(scaled(few)))

    mesh = AbstractMesh((2, 2), ("data", "tensor"), axis_types=(AxisType.Explicit,) * 2)
    with jax.sharding.use_abstract_mesh(mesh):
        assert dots(lambda x: project(x, *layers), few) == 4
    untensored = AbstractMesh((4, 1), ("data", "tensor"), axis_types=(AxisType.Explicit,) * 2)
    with jax.sharding.use_abstract_mesh(untensored):
        assert dots(lambda x: project(x, *layers), few) == 1


def test_narrow_linears_sum_only_16_bit_inputs_and_kernels():
    """The multiply-and-sum takes x and the kernels as they are: only when both already have the Linears'
    16-bit compute dtype. fp32 x with bf16 gate kernels (compute fp32, promoted), and fp32 x into gates
    computing in bf16 (``dtype`` set: x would be rounded first), run as the Linears do."""
    *_, gate, second = linears(jnp.bfloat16, jnp.bfloat16)
    x = jax.random.normal(jax.random.key(4), (3, 24))
    assert dots(lambda x: project(x, gate, second), x.astype(jnp.bfloat16)) == 0
    assert dots(lambda x: project(x, gate, second), x) == 2
    gate.dtype = second.dtype = jnp.bfloat16
    assert dots(lambda x: project(x, gate, second), x) == 2
    for got, linear in zip(project(x, gate, second), (gate, second)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(linear(x)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_steps_with_joined_projections_equal_steps_without(monkeypatch, dtype):
    """An xLSTM-7B mLSTM layer (v and output gate 256 wide: joined; two 2-wide gates: summed in bf16) and a
    gated FFN (hidden 512: both up projections joined), one decode step: equal to the same step with
    joining off, within 1e-5 (fp32: sums in another order) or 2^-7 (bf16: one rounding of an output) of
    each output's largest value. The step holds 4 matmuls fewer (q, k, v and the output gate as one, the
    two up projections as one), and in bf16 also none for the gates: 6 fewer."""
    cfg = mLSTMLayerConfig(num_heads=2, kernel="parallel--jax", step_kernel="step--jax", dim_round_to=128)
    kinds = dict(dtype=dtype, param_dtype=dtype)
    layer = perturb_params(mLSTMLayer(256, cfg, num_blocks=2, **kinds, rngs=nnx.Rngs(0)), 1, scale=0.5)
    ffn = GatedFFN(256, FFNConfig(proj_factor=2.0), num_blocks=2, **kinds, rngs=nnx.Rngs(2))
    ffn = perturb_params(ffn, 3, scale=0.5)
    x = jax.random.normal(jax.random.key(4), (3, 256)).astype(dtype)
    state = jax.tree.map(lambda a: jax.random.uniform(jax.random.key(5), a.shape), layer.init_state(3))

    def run():  # a new function each time, so that no trace is reused across the patch
        def step(x):
            y, new_state = layer.step(x, state)
            return ffn(y), new_state

        return jax.jit(step)(x), dots(step, x)

    joined, joined_dots = run()
    monkeypatch.setattr(projections, "MAX_JOINED_ROWS", 0)
    alone, alone_dots = run()
    assert alone_dots - joined_dots == (4 if dtype == jnp.float32 else 6)
    tol = 1e-5 if dtype == jnp.float32 else 2.0**-7
    for got, expected in zip(jax.tree.leaves(joined), jax.tree.leaves(alone)):
        got, expected = np.asarray(got, np.float32), np.asarray(expected, np.float32)
        np.testing.assert_allclose(got, expected, rtol=0, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("dtype, matmuls, tol", [(jnp.float32, 3, 1e-5), (jnp.bfloat16, 1, 2.0**-7)])
def test_joined_gradients_equal_each_linears(dtype, matmuls, tol):
    """With few rows (a small training batch also takes the joined paths) the gradients of a random
    weighting of every output, to the input and every kernel and bias, equal those of the Linears run
    one by one, within ``tol`` of each gradient's largest value: fp32 1e-5 (fp32 sums in another order),
    bf16 2^-7 (one bf16 rounding)."""
    layers = linears(dtype, dtype)
    x = jax.random.normal(jax.random.key(6), (2, 5, 24)).astype(dtype)
    weights = [jax.random.normal(jax.random.key(7 + j), linear(x).shape) for j, linear in enumerate(layers)]
    graphdef, params = nnx.split(layers)

    def loss(params, x, joined):
        outputs = project(x, *nnx.merge(graphdef, params)) if joined else [f(x) for f in nnx.merge(graphdef, params)]
        return sum(jnp.sum(w * y.astype(jnp.float32)) for w, y in zip(weights, outputs))

    assert dots(lambda x: project(x, *layers), x) == matmuls
    got, expected = (jax.grad(loss, argnums=(0, 1))(params, x, joined) for joined in (True, False))
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        assert g.dtype == e.dtype and g.shape == e.shape
        g, e = np.asarray(g, np.float32), np.asarray(e, np.float32)
        np.testing.assert_allclose(g, e, rtol=0, atol=tol * np.abs(e).max())
