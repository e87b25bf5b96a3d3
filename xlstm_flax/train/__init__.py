"""Config-driven training: recipes (``recipe``), data, optimiser, checkpoints, metrics and the loop.

Python use::

    from xlstm_flax.train import load_recipe, train
    result = train(load_recipe("configs/train_tiny.yaml", ["train.steps=100"]))

The names below are imported on first use, so ``xlstm_flax.train.data`` and friends load without
the model.
"""

import importlib

_EXPORTS = {  # name: its module in this package (".memory": xlstm_flax.memory)
    "NonFiniteLossError": "loop",
    "OutOfMemoryError": ".memory",  # raised by train() when the state or the step would not fit
    "TrainResult": "loop",
    "train": "loop",
    "RunConfig": "recipe",
    "TrainConfig": "recipe",
    "load_recipe": "recipe",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
