"""Run options of issue 11 end to end on CPU: a profiled step range leaves a trace in <run_dir>/profile,
``compile_cache: run`` stores the compiled steps in <run_dir>/jax_cache (and puts JAX's settings back
after the run), ``peak_tflops`` adds ``mfu`` = tokens/s x FLOPs per token / peak to the train records,
and the chunked loss trains."""

import jax
import numpy as np
import pytest

from tests.train.test_train import CHEAP, run
from xlstm_flax.config import ConfigError
from xlstm_flax.flops import train_flops_per_token
from xlstm_flax.train import load_recipe
from xlstm_flax.train.compile_cache import cache_directory, compilation_cache
from xlstm_flax.train.metrics import latest_records, read_metrics

OPTIONS = [
    *CHEAP,
    "train.steps=4",
    "train.eval_every=4",
    "train.log_every=2",
    "train.profile_steps=[2, 3]",
    "train.compile_cache=run",
    "train.peak_tflops=0.001",
    "train.loss_chunk=12",  # seq_len 32: two chunks of 12 and one of 8
]


def test_profile_compile_cache_and_mfu(recipe, tmp_path):
    cache_before = jax.config.jax_compilation_cache_dir
    result = run(recipe, tmp_path, *OPTIONS)
    assert result.step == 4 and all(np.isfinite(list(result.train_losses.values())))
    assert [p for p in (tmp_path / "profile").rglob("*") if p.is_file()], "no trace file"
    assert [p for p in (tmp_path / "jax_cache").rglob("*") if p.is_file()], "no cached compilation"
    assert jax.config.jax_compilation_cache_dir == cache_before
    config = load_recipe(recipe, [f"run_dir={tmp_path}", *OPTIONS])
    per_token = train_flops_per_token(config.model, config.train.seq_len)
    records = latest_records(read_metrics(tmp_path / "metrics.jsonl"), "train")
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        expected = record["tokens_per_s"] * per_token / (1e9 * jax.device_count())
        assert record["mfu"] == pytest.approx(expected, rel=1e-9)


def test_compile_cache_settings(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_directory("off", tmp_path) is None
    assert load_recipe(recipe, ["train.compile_cache=off"]).train.compile_cache is False  # YAML's off
    assert cache_directory(False, tmp_path) is None
    with pytest.raises(ConfigError, match="compile_cache must be a directory, run, or off"):
        load_recipe(recipe, ["train.compile_cache=true"])
    assert cache_directory("run", tmp_path / "r") == tmp_path / "r" / "jax_cache"
    assert cache_directory("~/c", tmp_path) == tmp_path / "home" / "c"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=f"train.compile_cache: cannot create {blocker / 'sub'}"):
        with compilation_cache(blocker / "sub"):
            pass
    assert not (tmp_path / "home").exists()  # nothing created by naming it


def test_uncreatable_compile_cache_stops_the_run_before_any_work(recipe, tmp_path, monkeypatch):
    """A compile_cache path that cannot be created is refused before the run directory is touched and
    before any data or model work (the corpus is never loaded); an existing run directory keeps its files."""

    def no_data(*args):
        raise AssertionError("the corpus was loaded before the compile_cache check")

    monkeypatch.setattr("xlstm_flax.train.loop.load_corpus", no_data)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=f"train.compile_cache: cannot create {blocker / 'sub'}"):
        run(recipe, run_dir, *CHEAP, f"train.compile_cache={blocker / 'sub'}", "overwrite=true")
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]
    assert (run_dir / "notes.txt").read_text() == "mine"
