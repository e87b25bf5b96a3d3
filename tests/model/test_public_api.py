"""The top-level names of ``xlstm_flax``: each resolves to the object of its home module, and importing
the package (or all of its public names) loads neither Triton nor jax-triton."""

import importlib
import subprocess
import sys

import pytest

import xlstm_flax

NO_TRITON = """
import sys
import xlstm_flax
assert "jax" not in sys.modules, "import xlstm_flax loaded jax"
from xlstm_flax import *  # every public name
from xlstm_flax import kernels
kernels.available_kernels()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("triton", "jax_triton"))
assert not loaded, loaded
"""


HOMES = {  # public name -> the module that defines it
    "xLSTMLMConfig": "model_config",
    "xLSTMLMModel": "model",
    "xLSTMBlock": "blocks",
    "xLSTMBlockStack": "blocks",
    "FFNConfig": "layers.config",
    "mLSTMLayerConfig": "layers.config",
    "sLSTMLayerConfig": "layers.config",
    "mLSTMLayer": "layers.mlstm",
    "mLSTMPaperLayer": "layers.mlstm_paper",
    "mLSTMState": "layers.mlstm_cell",
    "sLSTMLayer": "layers.slstm",
    "sLSTMState": "layers.slstm",
    "PRESETS": "presets",
    "get_preset": "presets",
    "generate": "sampling",
    "load_trained_model": "inference",
    "sample_text": "inference",
    "load_hf": "convert.hf",
    "save_hf": "convert.hf",
}


def test_public_names_resolve_to_their_home_modules():
    assert sorted(xlstm_flax.__all__) == sorted(HOMES)
    for name, home in HOMES.items():
        assert getattr(xlstm_flax, name) is getattr(importlib.import_module(f"xlstm_flax.{home}"), name), name
        assert name in dir(xlstm_flax)
    assert callable(xlstm_flax.generate)  # the function, not a module of the same name
    with pytest.raises(AttributeError, match="has no attribute 'xLSTMModel'"):
        getattr(xlstm_flax, "xLSTMModel")  # noqa: B009 (the lookup is what is tested)


def test_import_loads_neither_triton_nor_jax_triton():
    child = subprocess.run([sys.executable, "-c", NO_TRITON], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
