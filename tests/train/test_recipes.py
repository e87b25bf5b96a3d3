"""The recipes in configs/ show the mLSTM kernel switch with its choices, and an mLSTM or sLSTM kernel that
cannot run on this machine stops the run when the recipe loads: one-line error naming the key, nothing read or
written."""

from pathlib import Path

import pytest
import yaml

from xlstm_flax.cli import main
from xlstm_flax.config import ConfigError
from xlstm_flax.kernels import available_kernels, registry
from xlstm_flax.train import load_recipe

RECIPES = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
SEQUENCE_KERNELS = [name for name in available_kernels() if not name.startswith("step--")]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_shows_the_kernel_switch_and_its_choices(path):
    text = path.read_text()
    assert yaml.safe_load(text)["model"]["mlstm"]["kernel"] == "auto"
    line = next(line for line in text.splitlines() if line.strip().startswith("kernel:"))
    missing = [name for name in ["auto", *SEQUENCE_KERNELS] if f'"{name}"' not in line.partition("#")[2]]
    assert not missing, f"{path.name}: the kernel comment does not list {missing}"


@pytest.mark.parametrize(
    "key, triton_kernel, fallback",
    [("mlstm", "chunkwise--triton", "chunkwise--jax"), ("slstm", "recurrent--triton", "recurrent--jax")],
)
def test_triton_kernel_on_a_machine_without_it_fails_at_load(
    key, triton_kernel, fallback, tmp_path, capsys, monkeypatch
):
    """The tiny preset has both block kinds; the sLSTM kernel name is checked like the mLSTM one."""
    monkeypatch.setattr(registry, "triton_usable", lambda: False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {preset: tiny}\ndata: {path: no/such/*.txt}\n")  # reading it would fail
    triton = f"model.{key}.kernel={triton_kernel}"
    with pytest.raises(
        ConfigError,
        match=rf"recipe\.yaml: <top level>: model\.{key}\.kernel: '{triton_kernel}' "
        rf"needs a CUDA GPU visible to JAX and the jax-triton package.*or '{fallback}'",
    ):
        load_recipe(recipe, [triton])
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(recipe), f"run_dir={run_dir}", triton]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and f"model.{key}.kernel" in err, err
    assert not run_dir.exists()
    model = load_recipe(recipe, [f"model.{key}.kernel={fallback}"]).model
    assert (model.resolved_kernel() if key == "mlstm" else model.resolved_slstm_kernel()) == fallback


def test_overrides_given_as_one_string_are_refused():
    """A string is a sequence of one-character overrides: it gave "bad override 't'"."""
    with pytest.raises(
        TypeError, match="overrides must be a list of 'key=value' strings, got the string 'train.steps=5'"
    ):
        load_recipe(RECIPES[0], "train.steps=5")
