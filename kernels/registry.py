"""Registry of mLSTM kernel backends, looked up by name ("<mode>--<impl>").

Sequence kernels share one calling convention (see ``xlstm_flax.kernels`` docs):

    h = kernel(q, k, v, i, f, *, c_initial=None, n_initial=None, m_initial=None,
               return_last_states=False, qk_scale=None, eps=1e-6, chunk_size=..., segment_ids=None,
               **impl_options)

Step kernels ("step--*") advance one token: ``h, (c, n, m) = kernel(q, k, v, i, f, c, n, m, ...)``.
Backends may be registered lazily as ``"module:attribute"`` strings so that importing the registry
never imports Triton.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

AUTO = "auto"
FALLBACK_KERNEL = "chunkwise--jax"
TRITON_KERNEL = "chunkwise--triton"

_KERNELS: dict[str, Callable | str] = {}
_told_fallback = False


def register_kernel(name: str, fn: Callable | str, *, overwrite: bool = False) -> None:
    """Registers ``fn`` (a callable, or a lazy ``"module:attribute"`` path) under ``name``."""
    if not isinstance(name, str) or "--" not in name:
        raise ValueError(f"kernel name must look like '<mode>--<impl>', got {name!r}")
    if name == AUTO:
        raise ValueError("'auto' is reserved for default_kernel()")
    if name in _KERNELS and not overwrite:
        raise ValueError(f"kernel {name!r} is already registered (pass overwrite=True to replace it)")
    if not (callable(fn) or (isinstance(fn, str) and fn.count(":") == 1 and all(fn.split(":")))):
        raise ValueError(f"kernel {name!r}: fn must be a callable or a 'module:attribute' path, got {fn!r}")
    _KERNELS[name] = fn


@contextlib.contextmanager
def registered_kernel(name: str, fn: Callable | str, *, overwrite: bool = False) -> Iterator[str]:
    """Registers ``fn`` under ``name`` for the ``with`` block only; afterwards the name is removed, or its
    previous entry restored when ``overwrite`` replaced one. Yields ``name``."""
    previous = _KERNELS.get(name)
    register_kernel(name, fn, overwrite=overwrite)
    try:
        yield name
    finally:
        if previous is None:
            _KERNELS.pop(name, None)
        else:
            _KERNELS[name] = previous


def available_kernels(mode: str | None = None) -> list[str]:
    """Sorted registered names, optionally only those of one mode ("chunkwise", "step", ...)."""
    names = sorted(_KERNELS)
    if mode is not None:
        names = [n for n in names if n.split("--")[0] == mode]
    return names


NO_GPU = "no CUDA GPU"


def triton_unusable_reason() -> str | None:
    """Why the Triton kernels cannot run here (:data:`NO_GPU`, or jax-triton's import error); None when a
    CUDA device is visible to JAX and jax_triton imports."""
    import jax

    try:
        if not jax.devices("gpu"):
            return NO_GPU
    except RuntimeError:
        return NO_GPU
    try:
        from .triton import compat

        compat.import_jax_triton()
    except ImportError as err:
        return f"a CUDA GPU but jax-triton does not import ({err})"
    return None


def triton_usable() -> bool:
    """True when a CUDA device is visible to JAX and jax_triton imports."""
    return triton_unusable_reason() is None


def default_kernel() -> str:
    """The Triton chunkwise kernel on a CUDA device with jax-triton, else ``chunkwise--jax``."""
    return TRITON_KERNEL if TRITON_KERNEL in _KERNELS and triton_usable() else FALLBACK_KERNEL


def resolve_kernel_name(name: str) -> str:
    """Maps ``"auto"`` to the default kernel; checks that other names are registered."""
    global _told_fallback
    if name == AUTO:
        chosen = default_kernel()
        if chosen != TRITON_KERNEL and not _told_fallback:
            reason = triton_unusable_reason() or f"{TRITON_KERNEL!r} is not registered"
            # expected on a CPU-only machine (said once, at info level); a GPU without jax-triton is a setup error
            log = logger.info if reason == NO_GPU else logger.warning
            log("kernel 'auto': %s here, using %r", reason, chosen)
            _told_fallback = True
        return chosen
    if name not in _KERNELS:
        raise ValueError(f"unknown kernel {name!r}; available kernels: {', '.join(available_kernels())} (or 'auto')")
    return name


def get_kernel(name: str) -> Callable:
    """The callable registered under ``name`` (``"auto"``: :func:`default_kernel`'s)."""
    name = resolve_kernel_name(name)
    fn = _KERNELS[name]
    if isinstance(fn, str):
        module_name, attr = fn.split(":")
        fn = getattr(importlib.import_module(module_name, package=__package__), attr)
        _KERNELS[name] = fn
    return fn
