"""The generic YAML -> dataclass loader: unknown keys, wrong types, impossible values, overrides."""

import dataclasses

import pytest

from xlstm_flax.config import ConfigError, load_config, save_config


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    sizes: tuple[int, ...] = (1, 2)
    name: str | None = None

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0, got {self.rate}")


@dataclasses.dataclass(frozen=True)
class Outer:
    count: int
    flag: bool = False
    inner: Inner = dataclasses.field(default_factory=Inner)


PRESETS = {"small": Inner(rate=0.25, sizes=(4,), name="small")}


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def load(tmp_path, text, overrides=()):
    return load_config(write(tmp_path, text), Outer, overrides, presets={Inner: PRESETS.__getitem__})


def test_valid_file_and_conversions(tmp_path):
    cfg = load(tmp_path, "count: 3\ninner: {rate: 2, sizes: [5, 6], name: x}\n")
    assert cfg == Outer(count=3, inner=Inner(rate=2.0, sizes=(5, 6), name="x"))
    assert isinstance(cfg.inner.rate, float) and isinstance(cfg.inner.sizes, tuple)


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "count: 3\ninner: {rtae: 1.0}\n")
    message = str(err.value)
    assert "inner.rtae" in message and "did you mean 'rate'" in message and "recipe.yaml" in message


def test_unknown_top_level_key_without_close_match_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'; valid keys: count, flag, inner"):
        load(tmp_path, "count: 3\nzzz: 1\n")


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("count: many\n", "count", "expected int, got str 'many'"),
        ("count: 2.5\n", "count", "expected int, got float 2.5"),
        ("count: true\n", "count", "expected int, got bool True"),
        ("count: 1\nflag: 1\n", "flag", "expected bool, got int 1"),
        ("count: 1\ninner: {sizes: [1, x]}\n", "inner.sizes[1]", "expected int, got str 'x'"),
        ("count: 1\ninner: {sizes: 3}\n", "inner.sizes", "expected tuple"),
        ("count: 1\ninner: {name: 3}\n", "inner.name", "expected str, got int 3"),
        ("count: 1\ninner: 3\n", "inner", "expected a mapping"),
    ],
)
def test_wrong_type_names_key_and_file(tmp_path, text, key, expected):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert f"{key}" in str(err.value) and expected in str(err.value) and "recipe.yaml" in str(err.value)


def test_impossible_value_names_section_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe\.yaml: inner: rate must be >= 0, got -1.0"):
        load(tmp_path, "count: 1\ninner: {rate: -1}\n")


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe\.yaml.*missing required key\(s\): count"):
        load(tmp_path, "flag: true\n")


def test_overrides_are_yaml_scalars(tmp_path):
    cfg = load(
        tmp_path, "count: 1\n", ["count=7", "inner.rate=3e-4", "inner.sizes=[8, 9]", "inner.name=null", "flag=true"]
    )
    assert cfg == Outer(count=7, flag=True, inner=Inner(rate=3e-4, sizes=(8, 9), name=None))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("inner.rtae=1", r"override 'inner\.rtae=1'.*recipe\.yaml.*unknown key 'inner\.rtae'; did you mean 'rate'"),
        ("inner.rate", r"bad override 'inner\.rate': expected dotted\.key=value"),
        ("count=abc", r"count: expected int, got str 'abc'"),
        ("count.x=1", r"count is a value, not a section"),
        ("inner..rate=1", r"bad override"),
    ],
)
def test_bad_override(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load(tmp_path, "count: 1\n", [override])


def test_preset_then_field_overrides(tmp_path):
    cfg = load(tmp_path, "count: 1\ninner: {preset: small, rate: 0.75}\n")
    assert cfg.inner == Inner(rate=0.75, sizes=(4,), name="small")
    with pytest.raises(ConfigError, match=r"recipe\.yaml: inner\.preset: 'large'"):
        load(tmp_path, "count: 1\ninner: {preset: large}\n")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", Outer)
    with pytest.raises(ConfigError, match=r"recipe\.yaml: not valid YAML"):
        load(tmp_path, "count: [1\n")


def test_merge_keys_may_be_overridden(tmp_path):
    """``<<: *anchor`` merges a mapping whose keys the explicit ones may override: not a key given twice."""
    cfg = load(tmp_path, "count: 1\ninner: {<<: {rate: 0.5, sizes: [2]}, rate: 0.75}\n")
    assert cfg.inner.rate == 0.75 and cfg.inner.sizes == (2,)


@pytest.mark.parametrize(
    "text, key, line", [("count: 1\ncount: 2\n", "count", 2), ("inner:\n  rate: 1\n  rate: 2\n", "rate", 3)]
)
def test_a_key_given_twice_is_refused(tmp_path, text, key, line):
    """PyYAML keeps the last of two equal keys; a recipe with one twice is refused, naming it and its line."""
    with pytest.raises(
        ConfigError, match=rf"recipe\.yaml: not valid YAML: the key '{key}' appears twice \(again on line {line}\)"
    ):
        load(tmp_path, text)


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load(tmp_path, "count: 4\ninner: {preset: small}\n", ["inner.sizes=[1, 2, 3]"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml", comment="resolved here\nsecond line")
    assert path.read_text().startswith("# resolved here\n# second line\ncount: 4\n")
    assert load_config(path, Outer) == cfg


@pytest.mark.parametrize("name", ["tiny", "125m", "350m", "1.3b", "7b"])
def test_shipped_recipes_load(name):
    from pathlib import Path

    from xlstm_flax.presets import get_preset
    from xlstm_flax.train import load_recipe

    recipe = load_recipe(Path(__file__).parents[2] / "configs" / f"train_{name}.yaml")
    assert recipe.model.vocab_size == get_preset(name).vocab_size
    assert recipe.model.embedding_dim == get_preset(name).embedding_dim


def test_recipe_errors_name_the_model_key_and_file(tmp_path):
    from xlstm_flax.train import load_recipe

    path = write(tmp_path, "model: {preset: tiny}\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml\): unknown key 'model\.num_blcks'; did you mean 'num_blocks'"):
        load_recipe(path, ["model.num_blcks=2"])
    with pytest.raises(ConfigError, match=r"recipe\.yaml: model: .*slstm_at.*out of range"):
        load_recipe(path, ["model.slstm_at=[9]"])
    with pytest.raises(ConfigError, match=r"recipe\.yaml: model\.preset: unknown model preset 'huge'"):
        load_recipe(path, ["model.preset=huge"])
    with pytest.raises(ConfigError, match=r"recipe\.yaml: <top level>: optim.warmup_steps=100 exceeds train.steps=10"):
        load_recipe(path, ["train.steps=10"])
    with pytest.raises(ConfigError, match=r"recipe\.yaml: <top level>: missing required key\(s\): model"):
        load_recipe(write(tmp_path, "seed: 1\n"))
