"""HF ``xLSTMForCausalLM`` checkpoints: parity with transformers' own outputs (fixtures made by
scripts/make_hf_fixtures.py with transformers 5.24, float32, pure-torch kernels), export -> re-import,
and the errors for broken checkpoints. Needs neither torch nor transformers."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util
from safetensors.numpy import load_file, save_file

from xlstm_flax import generate
from xlstm_flax.convert import CheckpointError, HFConfigError, load_hf, save_hf
from xlstm_flax.memory import OutOfMemoryError

from ..model.helpers import assert_close_to_scale, make_model, small_config
from .conftest import FIXTURE_DIR, FIXTURES, copy_fixture, reference

FP32_TOL = 1e-4  # max |ours - HF| / max |HF| over all logits


def flat_params(model):
    return traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("kernel", ["chunkwise--jax", "parallel--jax", "recurrent--jax"])
@pytest.mark.parametrize("name", FIXTURES)
def test_logits_match_transformers(name, kernel):
    model, _ = load_hf(FIXTURE_DIR / name, kernel=kernel)
    ref = reference(name)
    for length in (32, 37):  # 37: no multiple of 16 (HF: chunks + recurrent tail)
        logits = model(jnp.asarray(ref[f"tokens_{length}"], jnp.int32))
        assert_close_to_scale(logits, ref[f"logits_{length}"], FP32_TOL, f"{name} {kernel} S={length}")


@pytest.mark.parametrize("name", FIXTURES)
def test_greedy_continuation_matches_transformers(name):
    model, _ = load_hf(FIXTURE_DIR / name, kernel="chunkwise--jax")
    ref = reference(name)
    new = ref["greedy"].shape[1] - ref["prompt"].shape[1]
    out = generate(model, jnp.asarray(ref["prompt"], jnp.int32), new, key=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(np.concatenate([ref["prompt"], out.tokens], axis=1), ref["greedy"])


def test_config_mapping_reproduces_hf_widths():
    _, config = load_hf(FIXTURE_DIR / "h96_qk48_sharded")
    d = config.embedding_dim
    assert (config.mlstm.qk_dim(d), config.mlstm.v_dim(d), config.ffn.hidden_dim(d)) == (48, 96, 64)
    _, config = load_hf(FIXTURE_DIR / "bias_w20_v60")
    d = config.embedding_dim
    assert (config.mlstm.qk_dim(d), config.mlstm.v_dim(d), config.ffn.hidden_dim(d)) == (20, 60, 80)
    assert config.mlstm.use_bias and config.ffn.use_bias and config.norm_bias
    assert (config.mlstm.gate_soft_cap, config.logit_soft_cap, config.norm_eps, config.mlstm.eps) == (
        5.0,
        12.0,
        1e-5,
        1e-4,
    )


def test_tied_flag_with_its_own_lm_head_stays_untied():
    """HF keeps and uses a separate lm_head.weight even with tie_word_embeddings=true."""
    model, config = load_hf(FIXTURE_DIR / "tied_h64")
    assert not config.tie_embeddings and model.lm_head is not None


@pytest.mark.parametrize("name", FIXTURES)
def test_export_then_import_is_bit_identical(name, tmp_path):
    model, config = load_hf(FIXTURE_DIR / name)
    save_hf(model, tmp_path / "out", max_shard_bytes=100_000)
    again, config_again = load_hf(tmp_path / "out")
    assert config_again == config
    a, b = flat_params(model), flat_params(again)
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_array_equal(np.asarray(b[path]), np.asarray(a[path]), err_msg=str(path))


def test_tied_scanned_model_round_trip(tmp_path):
    """A tied model of ours exports a copy of the embedding as lm_head and re-imports tied; stacked
    (scan_layers) parameters split into per-block tensors (the re-import, unstacked, exports the same)."""
    base = small_config()
    config = small_config(
        slstm_at=(),
        scan_layers=True,
        tie_embeddings=True,
        norm_bias=True,
        mlstm=dataclasses.replace(base.mlstm, use_bias=True),
        ffn=dataclasses.replace(base.ffn, use_bias=True),
    )
    save_hf(make_model(config, seed=3), tmp_path / "first")
    assert json.loads((tmp_path / "first" / "config.json").read_text())["tie_word_embeddings"] is True
    first = load_file(str(tmp_path / "first" / "model.safetensors"))
    np.testing.assert_array_equal(first["lm_head.weight"], first["backbone.embeddings.weight"])
    again, config_again = load_hf(tmp_path / "first")
    assert config_again.tie_embeddings and again.lm_head is None and not config_again.scan_layers
    save_hf(again, tmp_path / "second")
    second = load_file(str(tmp_path / "second" / "model.safetensors"))
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(second[name], first[name], err_msg=name)


def test_bfloat16_load_rounds_each_parameter_once():
    model32, _ = load_hf(FIXTURE_DIR / "h96_qk48_sharded")
    model16, config = load_hf(FIXTURE_DIR / "h96_qk48_sharded", dtype="bfloat16")
    assert (config.param_dtype, config.compute_dtype) == ("bfloat16", "bfloat16")
    params32, params16 = flat_params(model32), flat_params(model16)
    for path, x in params16.items():
        assert x.dtype == jnp.bfloat16, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(params32[path]).astype(jnp.bfloat16), str(path))


def _rewrite_tensors(directory, edit):
    """Apply ``edit(dict of tensors)`` to a single-file fixture copy."""
    file = directory / "model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


V1, Q0 = "backbone.blocks.1.mlstm_layer.v.weight", "backbone.blocks.0.mlstm_layer.q.weight"


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda t: t.pop(V1), r"missing tensor\(s\) " + re.escape(V1)),
        (
            lambda t: t.update({"backbone.blocks.0.extra.weight": np.ones(3, np.float32)}),
            r"unused tensor\(s\) backbone\.blocks\.0\.extra\.weight",
        ),
        (
            lambda t: t.update({Q0: np.ones((33, 64), np.float32)}),
            r"model\.safetensors: tensor '" + re.escape(Q0) + r"' has shape \(33, 64\), expected \(32, 64\)",
        ),
    ],
)
def test_broken_tensors_are_named(tmp_path, edit, pattern):
    directory = copy_fixture("tied_h64", tmp_path)
    _rewrite_tensors(directory, edit)
    with pytest.raises(CheckpointError, match=pattern):
        load_hf(directory)


def test_wrong_model_type_and_missing_files(tmp_path):
    directory = copy_fixture("tied_h64", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(HFConfigError, match=r"config\.json: model_type is 'llama', expected 'xlstm'"):
        load_hf(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors or model\.safetensors\.index\.json in"):
        load_hf(directory)
    sharded = copy_fixture("h96_qk48_sharded", tmp_path)
    (sharded / "model-00003-of-00008.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing .*model-00003-of-00008\.safetensors"):
        load_hf(sharded)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"missing .*empty/config\.json"):
        load_hf(tmp_path / "empty")


@pytest.mark.parametrize(
    "damage, pattern",
    [
        (
            lambda d: (d / "config.json").write_text("[1, 2]"),
            r"config\.json: the top level must be a JSON object, got list",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 64),
            r"model\.safetensors: not a readable safetensors",
        ),
        (
            lambda d: (d / "model.safetensors.index.json").write_text("{weight_map"),
            r"model\.safetensors\.index\.json: not valid JSON",
        ),
    ],
    ids=["config-list", "garbage-tensors", "index-not-json"],
)
def test_unreadable_files_are_named(tmp_path, damage, pattern):
    directory = copy_fixture("tied_h64", tmp_path)
    damage(directory)
    with pytest.raises(CheckpointError, match=pattern):
        load_hf(directory)


@pytest.mark.parametrize(
    "field, value, pattern",
    [
        ("weight_mode", "fused", "weight_mode='fused' is not supported"),
        ("add_qk_norm", True, "add_qk_norm=True is not supported"),
        ("quantization_config", {"bits": 4}, r"unsupported field\(s\) quantization_config"),
        ("embedding_dim", 32, "embedding_dim=32 differs from hidden_size=64"),
        ("hidden_size", "64", "hidden_size must be an int, got '64'"),
        ("num_heads", 2.0, r"config\.json: mLSTMLayerConfig\.num_heads: expected int, got float 2\.0"),
    ],
)
def test_config_fields_that_change_the_network_are_refused(tmp_path, field, value, pattern):
    directory = copy_fixture("tied_h64", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(HFConfigError, match=pattern):
        load_hf(directory)


@pytest.mark.parametrize("dtype, gib, hint", [("float32", 8192, True), ("bfloat16", 4096, False)])
def test_parameters_larger_than_memory_are_refused_before_reading(tmp_path, dtype, gib, hint):
    """A vocabulary of 2**34 (embedding 2**34 x 64): refused from config.json's shapes alone, before the
    tensors (whose shapes would not match) are read."""
    directory = copy_fixture("tied_h64", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "vocab_size": 2**34}))
    with pytest.raises(OutOfMemoryError, match=rf"the parameters in {dtype} need {gib}\.0 GiB per device") as err:
        load_hf(directory, dtype=dtype)
    assert ("--dtype bfloat16" in str(err.value)) == hint


def test_export_refuses_existing_directory_and_inexpressible_models(tmp_path):
    model, _ = load_hf(FIXTURE_DIR / "tied_h64")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="taken already exists"):
        save_hf(model, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    with pytest.raises(HFConfigError, match="slstm_at: HF's xLSTMForCausalLM has mLSTM blocks only"):
        save_hf(make_model(small_config(), perturb=False), tmp_path / "slstm")
    assert not (tmp_path / "slstm").exists() and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, p: save_hf(m, p, dtype="float64"), ValueError, r"dtype must be one of \('float32', 'bfloat16'"),
        (lambda m, p: save_hf(m, p, max_shard_bytes=0), ValueError, "max_shard_bytes must be an int >= 1, got 0"),
        (lambda m, p: save_hf(m.config, p), TypeError, "model must be an xLSTMLMModel, got xLSTMLMConfig"),
        (lambda m, p: save_hf(m, p / "file.txt" / "out"), NotADirectoryError, "file.txt is a file, not a directory"),
    ],
    ids=["dtype", "shard-bytes", "config", "parent-file"],
)
def test_export_refuses_bad_arguments_before_writing(tmp_path, call, error, message):
    model, _ = load_hf(FIXTURE_DIR / "tied_h64")
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(error, match=message):
        call(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_sharded_placement_on_a_mesh():
    from xlstm_flax.distributed import DistributedConfig, make_mesh

    model, _ = load_hf(FIXTURE_DIR / "tied_h64", mesh=make_mesh(DistributedConfig()))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(x.sharding, jax.sharding.NamedSharding) for x in leaves)


def test_fixtures_are_small():
    sizes = {p.name: p.stat().st_size for p in FIXTURE_DIR.rglob("*") if p.is_file()}
    assert sizes and max(sizes.values()) < 1_000_000, sizes
