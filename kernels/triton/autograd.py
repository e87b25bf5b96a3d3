"""Registry entry ``"chunkwise--triton"``: the Triton chunkwise kernels behind the common calling convention
(docs/kernels.md), wrapped in ``jax.custom_vjp``.

:func:`mlstm_chunkwise_triton` checks the inputs and resolves both tuning configs once; everything
below it takes them as given. The custom_vjp's forward saves what the exact backward needs (inputs,
initial states, h and the per-step den, m and signed n.(s q); the last four named
``common.KERNEL_RESIDUALS`` for rematerialisation policies). The backward recomputes the chunk states
by default, with the forward's exact call (same config), so that XLA can merge the two when forward and
backward are compiled together; ``save_states=True`` keeps the forward's instead (more memory held
between forward and backward: (S / chunk_size + 1) * DHQK * (DHV + 1) values per head, C in q's dtype
by default).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from .. import common
from . import launch
from .chunkwise_bw import launch_backward
from .chunkwise_fw import launch_forward, recompute_states
from .shared import KERNEL_NAME, MAX_CHUNK, MIN_BLOCK, check_dtypes, check_power_of_two
from .tuning import BW_OPTIONS, FW_OPTIONS, BwConfig, FwConfig, resolve_bw_config, resolve_fw_config


@dataclasses.dataclass(frozen=True)
class _Options:
    qk_scale: float
    eps: float
    save_states: bool  # keep the forward's chunk states as a residual instead of recomputing them
    fw_config: FwConfig
    bw_config: BwConfig


def _require_triton_backend() -> None:
    launch.require_triton_backend(KERNEL_NAME, "chunkwise--jax")


def _chunk_size_intra(S: int, chunk_size, chunk_size_intra) -> int:
    """``chunk_size`` (alias ``chunk_size_intra``), else the package's ``common.default_chunk_size(S)``."""
    if None not in (chunk_size, chunk_size_intra) and chunk_size != chunk_size_intra:
        raise ValueError(f"chunk_size={chunk_size} and chunk_size_intra={chunk_size_intra} disagree")
    chosen = chunk_size if chunk_size is not None else chunk_size_intra
    if chosen is None:
        return common.default_chunk_size(S)
    check_power_of_two("chunk_size", chosen, MIN_BLOCK, MAX_CHUNK)
    return chosen


def _resolve_options(dims: common.Dims, dtype, intra: int, qk_scale, eps, save_states, impl_options) -> _Options:
    """Both configs from ``impl_options`` (each name goes to the config that has it), checked once."""
    unknown = set(impl_options) - FW_OPTIONS - BW_OPTIONS
    if unknown:
        raise ValueError(f"unknown tuning option(s) {sorted(unknown)} for {KERNEL_NAME}")
    if not isinstance(save_states, bool):
        raise ValueError(f"{KERNEL_NAME}: save_states must be True or False, got {save_states!r}")
    fw_given = {name: value for name, value in impl_options.items() if name in FW_OPTIONS}
    bw_given = {name: value for name, value in impl_options.items() if name in BW_OPTIONS}
    fw_config = resolve_fw_config(dims, dtype, KERNEL_NAME, **fw_given, chunk_size_intra=intra)
    bw_config = resolve_bw_config(dims, dtype, KERNEL_NAME, **bw_given, chunk_size_intra=intra)
    return _Options(common.default_qk_scale(dims.DHQK, qk_scale), float(eps), save_states, fw_config, bw_config)


def mlstm_chunkwise_triton(
    q,
    k,
    v,
    i,
    f,
    *,
    c_initial=None,
    n_initial=None,
    m_initial=None,
    return_last_states=False,
    qk_scale=None,
    eps=1e-6,
    chunk_size=None,
    segment_ids=None,
    save_states=False,
    **impl_options,
):
    """mLSTM over any S with the Triton chunkwise kernels (S padded to a multiple of the intra chunk).

    q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); i, f: (B, NH, S); optional initial states
    c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH). ``chunk_size`` is ``chunk_size_intra`` (default
    ``common.default_chunk_size(S)``: 256 from S = 2048 on, else min(128, S rounded up to a power of
    two >= 16)); ``impl_options`` are the fields of ``FwConfig`` (forward) and ``BwConfig`` (backward),
    see ``kernels/triton/tuning.py``. ``save_states``: under differentiation, keep the forward's chunk
    states for the backward instead of recomputing them (faster, fp32 states of every chunk boundary
    held until the backward). ``segment_ids`` (B, S) int: document resets (docs/math.md section 5; the
    ``*_segments_kernel`` variants run only when given). Returns h (B, NH, S, DHV) in q's dtype, or
    ``(h, (c, n, m))`` with fp32 states when ``return_last_states``.
    """
    dims = common.check_inputs(q, k, v, i, f, c_initial, n_initial, m_initial)
    common.check_options(chunk_size, qk_scale, eps)
    resets = common.segment_resets(segment_ids, dims)
    check_dtypes(q, jnp.float32)
    intra = _chunk_size_intra(dims.S, chunk_size, impl_options.pop("chunk_size_intra", None))
    padded = dims._replace(S=common.padded_length(dims.S, intra))
    options = _resolve_options(padded, q.dtype, intra, qk_scale, eps, save_states, impl_options)
    _require_triton_backend()
    initial = common.initial_states(dims, c_initial, n_initial, m_initial)
    (q, k, v, i, f), S = common.pad_sequence(q, k, v, i, f, intra)
    h, last_states = _chunkwise(q, k, v, i, f, *initial, common.pad_resets(resets, padded.S), options)
    h = h[:, :, :S]
    return (h, last_states) if return_last_states else h


def _forward(q, k, v, i, f, c0, n0, m0, resets, options: _Options):
    result = launch_forward(
        q, k, v, i, f, (c0, n0, m0), options.fw_config, options.qk_scale, options.eps, jnp.float32, resets
    )
    return result, result.states.last()


@functools.partial(jax.custom_vjp, nondiff_argnums=(9,))
def _chunkwise(q, k, v, i, f, c0, n0, m0, resets, options):
    result, last_states = _forward(q, k, v, i, f, c0, n0, m0, resets, options)
    return result.matH, last_states


def _chunkwise_fwd(q, k, v, i, f, c0, n0, m0, resets, options):
    result, last_states = _forward(q, k, v, i, f, c0, n0, m0, resets, options)
    saved_states = result.states if options.save_states else None
    # h is tagged where it is both output and residual, so that a policy keeping the tag needs no second forward
    outputs = (result.matH, result.vecDen, result.vecM, result.vecNQ)
    matH, den, m, nq = (checkpoint_name(x, common.KERNEL_RESIDUALS) for x in outputs)
    return (matH, last_states), (q, k, v, i, f, c0, n0, m0, matH, den, m, nq, resets, saved_states)


def _backward(options, residuals, cotangents):
    """Exact gradients (chunkwise_bw.py) for q, k, v, i, f and the initial states c0, n0, m0 (none for
    the segment starts ``resets``)."""
    matH_bar, (matC_bar, vecN_bar, scaM_bar) = cotangents
    *forward_residuals, resets, states = residuals
    if states is None:  # recompute them with the forward's own call
        _, k, v, i, f, c0, n0, m0 = forward_residuals[:8]
        states = recompute_states(k, v, i, f, (c0, n0, m0), options.fw_config, resets)
    grads = launch_backward(
        tuple(forward_residuals),
        states,
        (matH_bar, matC_bar, vecN_bar, scaM_bar),
        options.qk_scale,
        options.eps,
        options.bw_config,
        resets,
    )
    return (*grads, None)


_chunkwise.defvjp(_chunkwise_fwd, _backward)
