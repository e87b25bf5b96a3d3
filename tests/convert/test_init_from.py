"""train.init_from: a run starts at step 0 with a fresh optimiser from the parameters of an HF
directory or of another run (also across scan_layers), and refuses a checkpoint of another network.

The runs take one step whose learning rate is 0 (linear warmup starts at 0), so the saved parameters
must equal the source's bit for bit."""

import sysconfig
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx, traverse_util

from xlstm_flax import load_trained_model
from xlstm_flax.config import ConfigError, save_config
from xlstm_flax.convert import load_hf, save_hf
from xlstm_flax.convert.hf import ModelTensors, read_params
from xlstm_flax.model import xLSTMLMModel
from xlstm_flax.train import load_recipe, loop, train

from ..model.helpers import perturb_params

RECIPE = f"""
model:
  preset: tiny
  embedding_dim: 32
  num_blocks: 2
  slstm_at: []
  mlstm: {{num_heads: 2, dim_round_to: 16, chunk_size: 16, kernel: parallel--jax}}
data: {{path: "{sysconfig.get_paths()["stdlib"]}/json/*.py", val_fraction: 0.2}}
optim: {{lr: 1.0e-2, warmup_steps: 1}}
train: {{steps: 1, batch_size: 2, seq_len: 16, eval_every: 1, eval_batches: 1, sample_tokens: 0,
         tensorboard: false}}
"""


def hf_layout(model) -> dict:
    """Parameters keyed by HF tensor name (so stacked and unstacked models compare)."""
    source = ModelTensors(model, "model")
    return {name: source.read(name) for name in source.names}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A recipe file and an HF export of a perturbed model with the recipe's network."""
    root = tmp_path_factory.mktemp("init_from")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE)
    model = perturb_params(xLSTMLMModel(load_recipe(recipe).model, rngs=nnx.Rngs(5)), seed=6, scale=0.1)
    return recipe, save_hf(model, root / "hf"), hf_layout(model)


def test_run_starts_from_hf_then_from_a_scanned_run(pretrained, tmp_path):
    recipe, hf_dir, expected = pretrained
    first = train(load_recipe(recipe, [f"run_dir={tmp_path / 'a'}", f"train.init_from={hf_dir}"]))
    assert first.start_step == 0 and first.step == 1
    model, _, step = load_trained_model(tmp_path / "a")
    assert step == 1
    got = hf_layout(model)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    second = train(
        load_recipe(
            recipe, [f"run_dir={tmp_path / 'b'}", f"train.init_from={tmp_path / 'a'}", "model.scan_layers=true"]
        )
    )
    assert second.start_step == 0
    got = hf_layout(load_trained_model(tmp_path / "b")[0])
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_other_network_or_bad_path_is_refused(pretrained, tmp_path, monkeypatch):
    """Both before the data is read (or the model built)."""
    recipe, hf_dir, _ = pretrained
    monkeypatch.setattr(loop, "load_corpus", lambda *a: pytest.fail("data read before init_from was checked"))
    config = load_recipe(recipe, [f"run_dir={tmp_path / 'c'}", f"train.init_from={hf_dir}", "model.mlstm.num_heads=4"])
    with pytest.raises(ConfigError, match=r"network differs .*mlstm\.num_heads: 2 vs 4"):
        train(config)
    run_source = save_config(load_recipe(recipe), tmp_path / "run" / "config.yaml").parent  # a run's saved config
    config = load_recipe(recipe, [f"run_dir={tmp_path / 'c'}", f"train.init_from={run_source}", "model.num_blocks=3"])
    with pytest.raises(ConfigError, match=r"network differs .*num_blocks: 2 vs 3"):
        train(config)
    config = load_recipe(recipe, [f"run_dir={tmp_path / 'd'}", f"train.init_from={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="nowhere.*neither an HF checkpoint directory"):
        train(config)
    assert not (tmp_path / "d").exists()


def test_finetune_recipe_fits_its_fixture():
    """configs/finetune_hf.yaml (the README's example) describes the network of its init_from."""
    from xlstm_flax.convert.hf_config import architecture_differences

    from .conftest import FIXTURE_DIR

    config = load_recipe(FIXTURE_DIR.parents[2] / "configs" / "finetune_hf.yaml")
    assert Path(config.train.init_from) == Path("tests/fixtures/hf/bytes_h64")
    _, hf_config = load_hf(FIXTURE_DIR / "bytes_h64")
    assert architecture_differences(hf_config, config.model) == []


def test_any_model_refills_from_another_through_hf_names():
    """Run directories seed runs through the same names, also for blocks HF lacks (sLSTM)."""

    from ..model.helpers import make_model, small_config

    source = make_model(small_config(), seed=1)  # an mLSTM block and an sLSTM block
    target = nnx.to_pure_dict(nnx.state(xLSTMLMModel(small_config(), rngs=nnx.Rngs(9)), nnx.Param))
    shardings = jax.tree.map(lambda x: x.sharding, target)
    filled = traverse_util.flatten_dict(read_params(ModelTensors(source, "source"), target, shardings, 2))
    expected = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(source, nnx.Param)))
    assert filled.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_array_equal(np.asarray(filled[path]), np.asarray(value), err_msg=str(path))
