"""mLSTM kernel backends behind one calling convention (installed as ``xlstm_flax.kernels``).

Sequence kernels (``get_kernel("chunkwise--jax")`` etc.)::

    h = kernel(q, k, v, i, f, *, c_initial=None, n_initial=None, m_initial=None,
               return_last_states=False, qk_scale=None, eps=1e-6, chunk_size=..., segment_ids=None,
               **impl_options)

    q, k: (B, NH, S, DHQK)   v: (B, NH, S, DHV)   i, f: (B, NH, S) raw gate pre-activations
    c: (B, NH, DHQK, DHV)    n: (B, NH, DHQK)     m: (B, NH)
    segment_ids: optional (B, S) int document ids; where the id changes the state restarts from zero
    (m = 0), the initial state applies to the first segment only (docs/math.md, "Document resets").
    returns h (B, NH, S, DHV) in q's dtype, or (h, (c, n, m)) with fp32 states (those of the last segment).

Step kernel ``"step--jax"``: ``h, (c, n, m) = kernel(q, k, v, i, f, c, n, m, qk_scale=None, eps=1e-6)``
with q, k: (B, NH, DHQK), v: (B, NH, DHV), i, f: (B, NH).
"""

from .registry import (
    AUTO,
    available_kernels,
    default_kernel,
    get_kernel,
    register_kernel,
    registered_kernel,
    resolve_kernel_name,
)

register_kernel("parallel--jax", ".jax.parallel:mlstm_parallel")
register_kernel("recurrent--jax", ".jax.recurrent:mlstm_recurrent")
register_kernel("chunkwise--jax", ".jax.chunkwise:mlstm_chunkwise")
register_kernel("step--jax", ".jax.step:mlstm_step")
register_kernel("chunkwise--triton", ".triton.autograd:mlstm_chunkwise_triton")

__all__ = [
    "AUTO",
    "available_kernels",
    "default_kernel",
    "get_kernel",
    "register_kernel",
    "registered_kernel",
    "resolve_kernel_name",
]
