"""xlstm-flax: xLSTM language models in JAX / Flax NNX with Triton mLSTM kernels.

    from flax import nnx
    from xlstm_flax import xLSTMLMModel, generate, get_preset

    model = xLSTMLMModel(get_preset("tiny"), rngs=nnx.Rngs(0))
    out = generate(model, prompts, 32, key=jax.random.key(0))  # int (B, S0) or token lists; out.tokens, out.lengths

The names below load on first use, so ``import xlstm_flax`` stays light (no JAX model code, never
Triton). Kernels: ``xlstm_flax.kernels``; training: ``xlstm_flax.train``.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "xLSTMLMConfig": "model_config",
    "xLSTMLMModel": "model",
    "xLSTMBlock": "blocks",
    "xLSTMBlockStack": "blocks",
    "FFNConfig": "layers",
    "mLSTMLayer": "layers",
    "mLSTMLayerConfig": "layers",
    "mLSTMPaperLayer": "layers",
    "mLSTMState": "layers",
    "sLSTMLayer": "layers",
    "sLSTMLayerConfig": "layers",
    "sLSTMState": "layers",
    "PRESETS": "presets",
    "get_preset": "presets",
    "generate": "sampling",
    "load_trained_model": "inference",
    "sample_text": "inference",
    "load_hf": "convert",
    "save_hf": "convert",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted([*globals(), *_EXPORTS])
