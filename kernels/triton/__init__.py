"""Triton mLSTM kernels launched from JAX (jax-triton): the low-level forward ``mlstm_chunkwise_fw``, its
chunk states ``mlstm_chunkwise_states`` and the backward ``mlstm_chunkwise_bw`` (docs/kernels.md)."""

from .chunkwise_bw import mlstm_chunkwise_bw
from .chunkwise_fw import mlstm_chunkwise_fw, mlstm_chunkwise_states
from .tuning import BwConfig, FwConfig

__all__ = ["BwConfig", "FwConfig", "mlstm_chunkwise_bw", "mlstm_chunkwise_fw", "mlstm_chunkwise_states"]
