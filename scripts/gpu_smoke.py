"""GPU environment check: jax sees the GPU, jax-triton launches a kernel, the registry imports."""

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from xlstm_flax.kernels import available_kernels, default_kernel
from xlstm_flax.kernels.triton.compat import import_jax_triton

jt = import_jax_triton()


@triton.jit
def _add(x_ptr, y_ptr, o_ptr, BLOCK: tl.constexpr):
    off = tl.arange(0, BLOCK)
    tl.store(o_ptr + off, tl.load(x_ptr + off) + tl.load(y_ptr + off))


x = jax.random.normal(jax.random.PRNGKey(0), (128,))
y = jax.random.normal(jax.random.PRNGKey(1), (128,))
out = jt.triton_call(x, y, kernel=_add, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), grid=(1,), BLOCK=128)
print("devices", jax.devices(), "jax", jax.__version__, "triton", triton.__version__)
print("add max err", float(jnp.max(jnp.abs(out - (x + y)))))
print("kernels", available_kernels(), "default", default_kernel())
