"""Triton mLSTM kernels launched from JAX (jax-triton); ``mlstm_chunkwise_fw`` is the seed forward."""
from .chunkwise_fw import mlstm_chunkwise_fw, mlstm_chunkwise_states

__all__ = ["mlstm_chunkwise_fw", "mlstm_chunkwise_states"]
