"""Kernel registry: registration, lazy lookup, unknown names, and "auto" on a machine without GPU."""

import logging

import pytest

from xlstm_flax import kernels
from xlstm_flax.kernels import registry
from xlstm_flax.kernels.jax.chunkwise import mlstm_chunkwise
from xlstm_flax.kernels.jax.parallel import mlstm_parallel
from xlstm_flax.kernels.jax.step import mlstm_step

JAX_KERNELS = ["chunkwise--jax", "parallel--jax", "recurrent--jax", "step--jax"]


def test_builtin_kernels_are_listed():
    assert set(JAX_KERNELS) <= set(kernels.available_kernels())
    assert kernels.available_kernels() == sorted(kernels.available_kernels())
    assert "step--jax" in kernels.available_kernels("step")
    assert all(name.startswith("step--") for name in kernels.available_kernels("step"))


def test_lazy_entries_resolve_to_the_backends():
    assert kernels.get_kernel("parallel--jax") is mlstm_parallel
    assert kernels.get_kernel("step--jax") is mlstm_step


def test_registered_kernel_scopes_a_registration():
    def my_kernel(*args, **kwargs):
        return "mine"

    with kernels.registered_kernel("parallel--mine", my_kernel) as name:
        assert name == "parallel--mine"
        assert kernels.get_kernel("parallel--mine") is my_kernel
        assert "parallel--mine" in kernels.available_kernels("parallel")
        with kernels.registered_kernel("step--lazy", ".jax.step:mlstm_step"):
            assert kernels.get_kernel("step--lazy") is mlstm_step
    assert "parallel--mine" not in kernels.available_kernels()
    assert "step--lazy" not in kernels.available_kernels()
    with pytest.raises(ValueError, match="unknown kernel 'parallel--mine'"):
        kernels.get_kernel("parallel--mine")


def test_registered_kernel_removes_the_name_when_the_block_raises():
    with pytest.raises(RuntimeError, match="inside"):
        with kernels.registered_kernel("parallel--boom", lambda *a, **k: None):
            raise RuntimeError("inside")
    assert "parallel--boom" not in kernels.available_kernels()


def test_register_refuses_duplicates_unless_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        kernels.register_kernel("parallel--jax", lambda *a, **k: None)
    replacement = lambda *a, **k: None  # noqa: E731
    with kernels.registered_kernel("parallel--jax", replacement, overwrite=True):
        assert kernels.get_kernel("parallel--jax") is replacement
    assert kernels.get_kernel("parallel--jax") is mlstm_parallel  # the previous entry is back


@pytest.mark.parametrize("bad_name", ["parallel", "auto", 3])
def test_register_refuses_bad_names(bad_name):
    with pytest.raises(ValueError):
        kernels.register_kernel(bad_name, lambda *a, **k: None)
    assert bad_name not in kernels.available_kernels()


@pytest.mark.parametrize("bad_fn", ["no_colon", "a:b:c", ":attr", 5])
def test_register_refuses_what_is_neither_a_callable_nor_a_module_path(bad_fn):
    with pytest.raises(ValueError, match="fn must be a callable or a 'module:attribute' path"):
        kernels.register_kernel("custom--bad", bad_fn)
    assert "custom--bad" not in kernels.available_kernels()


def test_unknown_name_lists_the_available_kernels():
    with pytest.raises(ValueError, match="unknown kernel 'chunkwise--cuda'") as info:
        kernels.get_kernel("chunkwise--cuda")
    for name in JAX_KERNELS:
        assert name in str(info.value)


def test_auto_falls_back_to_chunkwise_jax_without_gpu(monkeypatch, caplog):
    """On a CPU-only machine the fallback is expected: said once, at info level, never as a warning."""
    monkeypatch.setattr(registry, "_told_fallback", False)  # said once per process
    assert not registry.triton_usable()
    assert registry.triton_unusable_reason() == registry.NO_GPU
    assert kernels.default_kernel() == "chunkwise--jax"
    with caplog.at_level(logging.INFO, logger=registry.__name__):
        assert kernels.get_kernel("auto") is mlstm_chunkwise
        assert kernels.get_kernel("auto") is mlstm_chunkwise
    told = [r for r in caplog.records if "using 'chunkwise--jax'" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.INFO, told
    assert "no CUDA GPU" in told[0].getMessage()


def test_auto_warns_when_a_gpu_lacks_jax_triton(monkeypatch, caplog):
    """A GPU whose jax-triton does not import is a setup error: the fallback is a warning naming the cause."""
    reason = "a CUDA GPU but jax-triton does not import (No module named 'jax_triton')"
    monkeypatch.setattr(registry, "triton_unusable_reason", lambda: reason)
    monkeypatch.setattr(registry, "_told_fallback", False)
    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        assert kernels.get_kernel("auto") is mlstm_chunkwise
    assert [r.getMessage() for r in caplog.records] == [f"kernel 'auto': {reason} here, using 'chunkwise--jax'"]
