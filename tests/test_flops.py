"""FLOP counts of xlstm_flax.flops against hand counts of small configs, and the peak-FLOP/s table."""

import dataclasses
from types import SimpleNamespace

import jax
import pytest

from xlstm_flax import flops
from xlstm_flax.layers import FFNConfig, mLSTMLayerConfig
from xlstm_flax.model import xLSTMLMConfig

from .model.helpers import make_model, param_count

V, D, NH, QK, VD, HIDDEN, BLOCKS = 32, 64, 2, 32, 64, 192, 2  # QK: q/k width, VD: v width


def mlstm_only_config(**overrides) -> xLSTMLMConfig:
    """Two xLSTM-7B blocks, D=64, 2 heads of DHQK=16, DHV=32, FFN hidden 192, untied head."""
    fields = dict(
        vocab_size=V,
        embedding_dim=D,
        num_blocks=BLOCKS,
        mlstm=mLSTMLayerConfig(num_heads=NH, dim_round_to=16, kernel="chunkwise--jax"),
        ffn=FFNConfig(proj_factor=3.0),
    )
    fields.update(overrides)
    return xLSTMLMConfig(**fields)


def hand_count_per_token() -> int:
    """N by hand: per block two norms, q, k, v, o, two gates (weight + bias), head norm, out_proj, FFN;
    then the out norm and the V x D head (the embedding table is a lookup, not counted)."""
    block = 2 * D + 2 * D * QK + 2 * D * VD + 2 * (D * NH + NH) + VD + VD * D + 3 * D * HIDDEN
    return BLOCKS * block + D + V * D


def test_param_part_is_the_hand_count_and_the_nnx_count_less_the_embedding():
    config = mlstm_only_config()
    assert config.ffn.hidden_dim(D) == HIDDEN and config.mlstm.qk_dim(D) == QK
    model = make_model(config, perturb=False)
    n = flops.param_count_per_token(config)
    assert n == hand_count_per_token()
    assert n == param_count(model) - model.embedding.embedding.size  # untied: the V x D lm_head is in the count
    tied = dataclasses.replace(config, tie_embeddings=True)
    assert flops.param_count_per_token(tied) == n  # the tied head reads the V x D embedding instead


def test_mlstm_part_is_the_chunkwise_hand_count():
    config = mlstm_only_config()
    dhqk, dhv = QK // NH, VD // NH
    # S = 100 -> default chunk 128; per head and token: intra (DHQK + DHV) L, inter and states 2 x (2 DHQK DHV + 2 DHQK)
    per_head = (dhqk + dhv) * 128 + 2 * (2 * dhqk * dhv + 2 * dhqk)
    assert flops.mlstm_forward_flops_per_token(config, 100) == per_head * NH * BLOCKS
    chunked = dataclasses.replace(config, mlstm=dataclasses.replace(config.mlstm, chunk_size=32))
    per_head_32 = (dhqk + dhv) * 32 + 2 * (2 * dhqk * dhv + 2 * dhqk)
    assert flops.mlstm_forward_flops_per_token(chunked, 100) == per_head_32 * NH * BLOCKS
    one_slstm = dataclasses.replace(config, slstm_at=(1,))
    assert flops.mlstm_forward_flops_per_token(one_slstm, 100) == per_head * NH  # sLSTM blocks add none
    with pytest.raises(ValueError, match="seq_len"):
        flops.mlstm_forward_flops_per_token(config, 0)


def test_train_and_forward_totals():
    config, S = mlstm_only_config(), 100
    n, rec = hand_count_per_token(), flops.mlstm_forward_flops_per_token(config, S)
    assert flops.train_flops_per_token(config, S) == 6 * n + 3 * rec
    assert flops.forward_flops_per_token(config, S) == 2 * n + rec
    last_only = flops.forward_flops_per_token(config, S, logits_at_every_position=False)
    assert last_only == pytest.approx(2 * (n - V * D) + 2 * V * D / S + rec, rel=1e-12)


def test_peak_flops_table():
    def card(kind):
        return SimpleNamespace(platform="gpu", device_kind=kind)

    assert flops.peak_flops_per_second(card("NVIDIA H200")) == 989e12
    assert flops.peak_flops_per_second(card("NVIDIA H100 80GB HBM3")) == 989e12
    assert flops.peak_flops_per_second(card("NVIDIA H100 PCIe")) == 756e12
    assert flops.peak_flops_per_second(card("Some Future Card")) is None
    assert flops.peak_flops_per_second(jax.devices("cpu")[0]) is None
