"""The HF config mapping without checkpoints: HF's default config is our 7b preset, widths follow
HF's rounding, and our presets export to HF numbers that rebuild the same widths."""

import dataclasses

import pytest

from xlstm_flax.convert import HFConfigError, from_hf_config, to_hf_config
from xlstm_flax.convert.hf_config import HF_DEFAULTS, architecture_differences
from xlstm_flax.layers import FFNConfig, mLSTMLayerConfig
from xlstm_flax.layers.config import hf_ffn_width
from xlstm_flax.model import xLSTMLMConfig
from xlstm_flax.presets import PRESETS, get_preset


def test_hf_default_config_is_the_7b_preset():
    hf = from_hf_config({"model_type": "xlstm"}, tie_embeddings=False)
    assert architecture_differences(hf, get_preset("7b")) == []
    exported = to_hf_config(get_preset("7b"))
    assert {k: exported[k] for k in HF_DEFAULTS} == HF_DEFAULTS


@pytest.mark.parametrize("name", [n for n in PRESETS if not PRESETS[n].slstm_at])
def test_presets_export_to_numbers_that_rebuild_their_widths(name):
    config = get_preset(name)
    again = from_hf_config(to_hf_config(config), tie_embeddings=config.tie_embeddings)
    assert architecture_differences(again, config) == []


def test_hf_rounding_differs_from_ours_where_hf_truncates():
    assert hf_ffn_width(96 * 0.667, 64) == 64 and FFNConfig(proj_factor=0.667).hidden_dim(96) == 128
    assert FFNConfig(proj_factor=0.667, width_rounding="hf").hidden_dim(96) == 64
    hf = mLSTMLayerConfig(qk_dim_factor=0.29, width_rounding="hf")
    assert hf.qk_dim(100) == int(100 * 0.29) == 28  # the float product is 28.999...
    assert (
        mLSTMLayerConfig(qk_dim_factor=0.5).qk_dim(96) == 64
        and mLSTMLayerConfig(qk_dim_factor=0.5, width_rounding="hf").qk_dim(96) == 48
    )
    with pytest.raises(ValueError, match="width_rounding: must be one of"):
        FFNConfig(width_rounding="down")


def test_export_finds_a_factor_for_widths_hf_would_truncate():
    """Our width ceil(100 * 0.29) = 29; HF's int(100 * 0.29) is 28, so the export nudges the factor."""
    mlstm = mLSTMLayerConfig(num_heads=1, qk_dim_factor=0.29, dim_round_to=1)
    config = xLSTMLMConfig(vocab_size=10, embedding_dim=100, num_blocks=1, mlstm=mlstm)
    assert config.mlstm.qk_dim(100) == 29
    factor = to_hf_config(config)["qk_dim_factor"]
    assert int(100 * factor) == 29 and abs(factor - 0.29) < 1e-15


def test_soft_cap_none_cannot_be_exported():
    config = dataclasses.replace(get_preset("125m"), logit_soft_cap=None)
    with pytest.raises(HFConfigError, match="logit_soft_cap: HF's config needs a number"):
        to_hf_config(config)
