"""Compiled Triton kernels are kept on disk across processes (kernels/triton/disk_cache.py): a second
process that lowers the same function compiles nothing and lowers a byte-identical module (PTX
included); other tuning compiles again; ``off`` and a cache directory that cannot be written only cost
the reuse. Each run is a fresh Python process (jax-triton's in-memory cache would hide the disk
otherwise), through benchmarks/lowering_time.py's ``lower_once``: the Triton forward, two kernels."""

from benchmarks.lowering_time import lower_once
from tests.kernels.lowering import skip_module_unless_lowerable

skip_module_unless_lowerable()

SHAPE = (1, 2, 64, 32, 32)


def lower(cache, **tuning) -> dict:
    return lower_once(SHAPE, "bfloat16", cache, mode="fw", **tuning)


def test_second_process_compiles_nothing_and_lowers_the_same_module(tmp_path):
    first = lower(tmp_path / "cache")
    assert first["compiled"] == 2  # the states and the parallel kernel
    second = lower(tmp_path / "cache")
    assert (second["compiled"], second["digest"]) == (0, first["digest"])
    other = lower(tmp_path / "cache", num_warps_intra=2)
    assert other["compiled"] == 1 and other["digest"] != first["digest"]  # the parallel kernel, anew


def test_off_and_an_unwritable_directory_compile_every_time(tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should be")
    runs = [lower("off"), lower(blocked), lower(blocked)]
    assert [run["compiled"] for run in runs] == [2, 2, 2]
    assert len({run["digest"] for run in runs}) == 1
    assert blocked.read_text() == "a file where the cache directory should be"
