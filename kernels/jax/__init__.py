"""Pure-JAX mLSTM backends (registered as "parallel--jax", "recurrent--jax", "chunkwise--jax",
"step--jax"): one module per algorithm, all with the calling convention of ``xlstm_flax.kernels``."""
