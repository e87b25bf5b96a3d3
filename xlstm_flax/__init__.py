"""xlstm-flax: xLSTM language models in JAX / Flax NNX with Triton mLSTM kernels."""

__version__ = "0.1.0"
