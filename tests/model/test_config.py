"""Config validation: impossible values raise errors naming the field; field types stay simple so
the YAML loader can build every config; the presets round-trip through that loader."""

import dataclasses
import re
import types
import typing

import numpy as np
import pytest

from xlstm_flax.config import from_dict, to_dict
from xlstm_flax.layers import FFNConfig, mLSTMLayerConfig, sLSTMLayerConfig
from xlstm_flax.layers.config import round_up
from xlstm_flax.model import xLSTMLMConfig
from xlstm_flax.presets import PRESETS, get_preset

SIMPLE = {int, float, bool, str}


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: xLSTMLMConfig(embedding_dim=100, mlstm=mLSTMLayerConfig(num_heads=3)), "mlstm.num_heads"),
        (lambda: xLSTMLMConfig(num_blocks=4, slstm_at=(4,)), "slstm_at"),
        (lambda: xLSTMLMConfig(num_blocks=4, slstm_at=(1, 1)), "slstm_at"),
        (
            lambda: xLSTMLMConfig(embedding_dim=30, slstm_at=(0,), slstm=sLSTMLayerConfig(num_heads=4)),
            "slstm.num_heads",
        ),
        (lambda: xLSTMLMConfig(num_blocks=4, slstm_at=(1,), scan_layers=True), "scan_layers"),
        (lambda: xLSTMLMConfig(compute_dtype="float8"), "compute_dtype"),
        (lambda: xLSTMLMConfig(remat=True, remat_policy="dots"), "remat_policy"),
        (lambda: xLSTMLMConfig(remat_policy="save_matmuls"), "remat_policy"),
        (lambda: xLSTMLMConfig(norm="batchnorm"), "norm"),
        (lambda: xLSTMLMConfig(vocab_size=0), "vocab_size"),
        (lambda: xLSTMLMConfig(logit_soft_cap=-1.0), "logit_soft_cap"),
        (lambda: mLSTMLayerConfig(kernel="chunkwise--nonexistent"), "mLSTMLayerConfig.kernel"),
        (lambda: mLSTMLayerConfig(kernel="step--jax"), "mLSTMLayerConfig.kernel"),
        (lambda: mLSTMLayerConfig(step_kernel="parallel--jax"), "mLSTMLayerConfig.step_kernel"),
        (lambda: mLSTMLayerConfig(variant="mamba"), "mLSTMLayerConfig.variant"),
        (lambda: mLSTMLayerConfig(fgate_bias_min=6.0, fgate_bias_max=3.0), "fgate_bias_min"),
        (lambda: mLSTMLayerConfig(chunk_size=0), "chunk_size"),
        (lambda: sLSTMLayerConfig(conv_kernel_size=-1), "sLSTMLayerConfig.conv_kernel_size"),
        (lambda: FFNConfig(proj_factor=0.0), "FFNConfig.proj_factor"),
    ],
)
def test_impossible_values_name_the_field(make, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make()


def test_unknown_kernel_error_lists_available_kernels():
    with pytest.raises(ValueError, match="parallel--jax"):
        mLSTMLayerConfig(kernel="flash")


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError, match="tiny.*7b"):
        get_preset("13b")
    with pytest.raises(ValueError, match=r"unknown model preset \['tiny'\]"):
        get_preset(["tiny"])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: xLSTMLMConfig(vocab_size=64.5), "xLSTMLMConfig.vocab_size: expected int, got float 64.5"),
        (lambda: xLSTMLMConfig(num_blocks="2"), "xLSTMLMConfig.num_blocks: expected int, got str '2'"),
        (lambda: xLSTMLMConfig(slstm_at=1), "xLSTMLMConfig.slstm_at: expected tuple, got int 1"),
        (lambda: xLSTMLMConfig(mlstm={"num_heads": 2}), "xLSTMLMConfig.mlstm: expected a mLSTMLayerConfig, got dict"),
        (lambda: xLSTMLMConfig(mlstm=sLSTMLayerConfig()), "expected a mLSTMLayerConfig, got sLSTMLayerConfig"),
        (lambda: mLSTMLayerConfig(chunk_size=16.0), "mLSTMLayerConfig.chunk_size: expected int, got float 16.0"),
        (lambda: FFNConfig(proj_factor="big"), "FFNConfig.proj_factor: expected float, got str 'big'"),
    ],
)
def test_fields_of_the_wrong_type_are_named(make, message):
    """Configs built in Python get the type checks the YAML loader gives recipes (a float vocab_size used to
    fail deep inside JAX, a list slstm_at made the config unhashable for jit)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_lists_become_tuples_and_numbers_python_numbers():
    config = xLSTMLMConfig(
        num_blocks=np.int64(4), slstm_at=[1, np.int32(3)], norm_eps=0, ffn=FFNConfig(proj_factor=np.float32(1.5))
    )
    assert config.slstm_at == (1, 3) and type(config.num_blocks) is int and isinstance(config.norm_eps, float)
    assert type(config.ffn.proj_factor) is float
    plain = xLSTMLMConfig(num_blocks=4, slstm_at=(1, 3), norm_eps=0.0, ffn=FFNConfig(proj_factor=1.5))
    assert config == plain and hash(config) == hash(plain)


def _assert_simple_fields(cls, path=""):
    for name, annotation in typing.get_type_hints(cls).items():
        where = f"{path}{name}: {annotation}"
        if dataclasses.is_dataclass(annotation):
            _assert_simple_fields(annotation, f"{path}{name}.")
            continue
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is tuple:
            assert len(args) == 2 and args[1] is Ellipsis and args[0] in SIMPLE, where
        elif origin in (typing.Union, types.UnionType):
            assert type(None) in args and len(args) == 2, where
            assert next(a for a in args if a is not type(None)) in SIMPLE, where
        else:
            assert annotation in SIMPLE, where


def test_config_fields_have_simple_types():
    _assert_simple_fields(xLSTMLMConfig)
    assert dataclasses.fields(xLSTMLMConfig) and xLSTMLMConfig.__dataclass_params__.frozen


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_the_yaml_loader(name):
    assert from_dict(xLSTMLMConfig, to_dict(PRESETS[name]), source="test") == PRESETS[name]


def test_widths_follow_the_xlstm_7b_rounding():
    """xLSTM-7B: qk 2048 (factor 0.5), v 4096, FFN 10944 (2.667 * 4096 rounded up to 64)."""
    cfg = get_preset("7b")
    assert cfg.mlstm.qk_dim(4096) == 2048 and cfg.mlstm.v_dim(4096) == 4096
    assert cfg.ffn.hidden_dim(4096) == 10944
    assert round_up(64.5, 64) == 128 and round_up(128, 64) == 128
