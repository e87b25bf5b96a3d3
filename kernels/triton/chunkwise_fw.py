"""Triton chunkwise mLSTM forward: the seed function ``mlstm_chunkwise_fw`` (shared/DESIGN.md 3.2).

Two kernels (chunkwise_fw_kernels.py): a recurrent kernel walks chunks of ``chunk_size_inter`` steps
and stores the state (C, n, m) at every ``chunk_size_intra`` boundary; a parallel kernel computes h,
den, m_t (and the signed n_t.(s q_t)) for chunks of ``chunk_size_intra`` steps from those states.
The only work outside Triton is the O(S) gate preparation: log(sigmoid(f)) in fp32 and its cumulative
sum restarted at every intra chunk (``vecB``).

Shapes: matQ, matK (B, NH, S, DHQK); matV (B, NH, S, DHV); vecI, vecF (B, NH, S) raw gates;
matC_initial (B, NH, DHQK, DHV), vecN_initial (B, NH, DHQK), scaM_initial (B, NH).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .. import common
from . import chunkwise_fw_kernels as kernels
from .launch import triton_call

INPUT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
MIN_BLOCK = 16  # the smallest tl.dot tile
MAX_CHUNK = 1024


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def _is_pow2(n) -> bool:
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


def check_power_of_two(name: str, value, low: int, high: int) -> None:
    if not _is_pow2(value) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} must be a power of two in [{low}, {high}]")


@dataclasses.dataclass(frozen=True)
class FwConfig:
    """Every tuning choice of one forward call (see :func:`resolve_config` for the defaults)."""

    chunk_size_inter: int
    chunk_size_intra: int
    siz_b_L_parallel: int
    siz_b_L_loop: int
    siz_b_DH_parallel: int
    siz_b_DH_loop: int
    num_warps_intra: int
    num_warps_inter: int
    num_stages_intra: int
    num_stages_inter: int
    siz_b_DHQK_inter: int
    siz_b_DHV_inter: int


STATE_TUNING = ("chunk_size_inter", "chunk_size_intra", "siz_b_DHQK_inter", "siz_b_DHV_inter", "num_warps_inter",
                "num_stages_inter")


def state_tuning(config: FwConfig) -> dict:
    """The choices of ``config`` that :func:`mlstm_chunkwise_states` takes (its recurrent kernel's)."""
    return {name: getattr(config, name) for name in STATE_TUNING}


def default_chunk_size(S: int) -> int:
    """min(256, the largest power of two dividing S)."""
    return min(256, S & -S)


def default_tuning(DHQK: int, DHV: int, dtype, chunk_size_intra: int) -> dict:
    """Per-shape defaults of every tuning choice but chunk_size_intra (see :func:`resolve_config`).

    bf16/fp16: the fastest configuration of the H100 sweep at (DHQK, DHV) = (256, 512) and (128, 256)
    (benchmarks/results/triton_fw_h100.md). fp32 operands are twice as large: smaller parallel-kernel
    tiles (those of the first GPU validation run), so shared memory stays within the H100's 227 KiB.
    """
    intra = chunk_size_intra
    dhqk_pad, dhv_pad = max(MIN_BLOCK, next_pow2(DHQK)), max(MIN_BLOCK, next_pow2(DHV))
    both = dict(siz_b_DHQK_inter=min(64, dhqk_pad), siz_b_DHV_inter=min(64, dhv_pad), num_warps_inter=4,
                num_stages_inter=2, num_stages_intra=2)
    if jnp.dtype(dtype).itemsize <= 2:
        return dict(both, chunk_size_inter=intra if DHQK >= 256 else min(128, intra),
                    siz_b_L_parallel=min(128, intra), siz_b_L_loop=min(64, intra),
                    siz_b_DH_parallel=min(256, dhv_pad), siz_b_DH_loop=dhqk_pad if dhqk_pad <= 128 else 64,
                    num_warps_intra=8)
    return dict(both, chunk_size_inter=min(128, intra), siz_b_L_parallel=min(64, intra),
                siz_b_L_loop=min(64, intra), siz_b_DH_parallel=min(128, dhv_pad), siz_b_DH_loop=min(64, dhqk_pad),
                num_warps_intra=4)


def resolve_config(dims: common.Dims, dtype=jnp.float32, **given) -> FwConfig:
    """Fills ``None`` tuning choices with the defaults for q/k/v of ``dtype`` and checks every rule
    (ValueError).

    Defaults: chunk_size_intra = :func:`default_chunk_size` (S), the rest :func:`default_tuning`:
    bf16/fp16: chunk_size_inter = chunk_size_intra if DHQK >= 256 else min(128, chunk_size_intra);
    siz_b_L_parallel = min(128, intra), siz_b_L_loop = min(64, intra), siz_b_DH_parallel =
    min(256, DHV padded to a power of two), siz_b_DH_loop = DHQK padded if <= 128 else 64, 8 warps;
    fp32: chunk_size_inter = min(128, intra), siz_b_L_parallel = siz_b_L_loop = min(64, intra),
    siz_b_DH_parallel = min(128, DHV padded), siz_b_DH_loop = min(64, DHQK padded), 4 warps;
    both: recurrent-kernel tile min(64, DHQK padded) x min(64, DHV padded), 4 warps; 2 stages.
    ``dtype`` defaults to fp32, whose defaults are the small, conservative tiles.
    """
    _, _, S, DHQK, DHV = dims
    dhqk_pad, dhv_pad = max(MIN_BLOCK, next_pow2(DHQK)), max(MIN_BLOCK, next_pow2(DHV))
    unknown = set(given) - {f.name for f in dataclasses.fields(FwConfig)}
    if unknown:
        raise ValueError(f"unknown tuning option(s) {sorted(unknown)} for chunkwise--triton")
    g = {k: v for k, v in given.items() if v is not None}
    intra = g.get("chunk_size_intra", default_chunk_size(S))
    config = FwConfig(**{**default_tuning(DHQK, DHV, dtype, intra), "chunk_size_intra": intra, **g})
    _check_chunks(S, config.chunk_size_inter, config.chunk_size_intra)
    check_power_of_two("siz_b_L_parallel", config.siz_b_L_parallel, MIN_BLOCK, intra)
    check_power_of_two("siz_b_L_loop", config.siz_b_L_loop, MIN_BLOCK, intra)
    check_power_of_two("siz_b_DH_parallel", config.siz_b_DH_parallel, MIN_BLOCK, dhv_pad)
    check_power_of_two("siz_b_DH_loop", config.siz_b_DH_loop, MIN_BLOCK, dhqk_pad)
    check_power_of_two("siz_b_DHQK_inter", config.siz_b_DHQK_inter, MIN_BLOCK, dhqk_pad)
    check_power_of_two("siz_b_DHV_inter", config.siz_b_DHV_inter, MIN_BLOCK, dhv_pad)
    for name in ("num_warps_intra", "num_warps_inter"):
        check_power_of_two(name, getattr(config, name), 1, 16)
    for name in ("num_stages_intra", "num_stages_inter"):
        value = getattr(config, name)
        if not isinstance(value, int) or not 1 <= value <= 8:
            raise ValueError(f"{name}={value!r} must be an int in [1, 8]")
    return config


def _check_chunks(S: int, inter: int, intra: int) -> None:
    check_power_of_two("chunk_size_intra", intra, MIN_BLOCK, MAX_CHUNK)
    check_power_of_two("chunk_size_inter", inter, MIN_BLOCK, MAX_CHUNK)
    if inter > intra:  # both powers of two: inter <= intra is the same as inter dividing intra
        raise ValueError(f"chunk_size_inter={inter} must be <= chunk_size_intra={intra} (and divide it)")
    if S % intra:
        raise ValueError(
            f"sequence length S={S} must be a multiple of chunk_size_intra={intra} "
            "(the registry entry 'chunkwise--triton' pads any S)"
        )


def check_dtypes(matQ, output_dtype) -> None:
    """ValueError unless q's dtype and ``output_dtype`` are float32, bfloat16 or float16."""
    if not any(matQ.dtype == d for d in INPUT_DTYPES):
        raise ValueError(f"chunkwise--triton supports q/k/v in float32, bfloat16, float16; got {matQ.dtype}")
    if not any(jnp.dtype(output_dtype) == d for d in INPUT_DTYPES):
        raise ValueError(f"output_dtype must be float32, bfloat16 or float16; got {output_dtype}")


def dot_precision(dtype) -> str:
    """fp32 operands use three TF32 products (about fp32 accuracy, on tensor cores); others ignore it."""
    return "tf32x3" if dtype == jnp.float32 else "tf32"


def chunk_log_forget_cumsum(vecF: jax.Array, chunk_size: int) -> jax.Array:
    """``vecB (B, NH, S)`` fp32: cumulative sum of log(sigmoid(f)) restarted every ``chunk_size`` steps."""
    B, NH, S = vecF.shape
    logf = common.log_sigmoid_fp32(vecF).astype(jnp.float32)
    return jnp.cumsum(logf.reshape(B, NH, S // chunk_size, chunk_size), axis=-1).reshape(B, NH, S)


def _recurrent_states(matK, matV, vecB, vecI, initial, config: FwConfig):
    B, NH, S, DHQK = matK.shape
    DHV = matV.shape[-1]
    NC = S // config.chunk_size_intra
    matC0, vecN0, scaM0 = initial
    out_shape = (
        jax.ShapeDtypeStruct((B, NH, NC + 1, DHQK, DHV), jnp.float32),
        jax.ShapeDtypeStruct((B, NH, NC + 1, DHQK), jnp.float32),
        jax.ShapeDtypeStruct((B, NH, NC + 1), jnp.float32),
    )
    grid = (-(-DHQK // config.siz_b_DHQK_inter), -(-DHV // config.siz_b_DHV_inter), B * NH)
    return triton_call(
        matK, matV, vecB, vecI, matC0, vecN0, scaM0,
        kernel=kernels.recurrent_fw_kernel, out_shape=out_shape, grid=grid,
        num_warps=config.num_warps_inter, num_stages=config.num_stages_inter,
        S=S, DHQK=DHQK, DHV=DHV, NC=NC, L_INTRA=config.chunk_size_intra, L_INTER=config.chunk_size_inter,
        BLOCK_DHQK=config.siz_b_DHQK_inter, BLOCK_DHV=config.siz_b_DHV_inter,
        DOT_PRECISION=dot_precision(matK.dtype),
    )


def mlstm_chunkwise_states(matK, matV, vecI, vecF, matC_initial=None, vecN_initial=None, scaM_initial=None,
                           *, chunk_size_inter, chunk_size_intra, siz_b_DHQK_inter=None,
                           siz_b_DHV_inter=None, num_warps_inter=None, num_stages_inter=None):
    """Runs only the recurrent kernel: the state at every ``chunk_size_intra`` boundary.

    Returns ``matC_all (B, NH, NC+1, DHQK, DHV)``, ``vecN_all (B, NH, NC+1, DHQK)``,
    ``scaM_all (B, NH, NC+1)``, fp32, NC = S / chunk_size_intra, index 0 = the initial state
    (zeros and m = 0 where not given) and index c = the state after c * chunk_size_intra steps. The
    states are stabilised: the true state is ``exp(m) * (C, n)`` (DESIGN 3.3). Buffers are
    C-contiguous, so state c of (b, h) starts at flat offset ``((b*NH + h)*(NC+1) + c) * DHQK*DHV``.
    The same tuning names as :func:`mlstm_chunkwise_fw` pick the kernel's blocks/warps/stages.
    """
    dims = common.check_inputs(matK, matK, matV, vecI, vecF, matC_initial, vecN_initial, scaM_initial)
    check_dtypes(matK, jnp.float32)
    config = resolve_config(
        dims, matK.dtype, chunk_size_inter=chunk_size_inter, chunk_size_intra=chunk_size_intra,
        siz_b_DHQK_inter=siz_b_DHQK_inter, siz_b_DHV_inter=siz_b_DHV_inter,
        num_warps_inter=num_warps_inter, num_stages_inter=num_stages_inter,
    )
    vecB = chunk_log_forget_cumsum(vecF, config.chunk_size_intra)
    initial = common.initial_states(dims, matC_initial, vecN_initial, scaM_initial)
    return _recurrent_states(matK, matV, vecB, vecI.astype(jnp.float32), initial, config)


class FwResult(NamedTuple):
    """Everything the forward computes; the custom_vjp saves vecN, vecM, vecNQ as residuals."""

    matH: jax.Array  # (B, NH, S, DHV) in q's dtype
    vecN: jax.Array  # (B, NH, S) den_t = max(|n_t . s q_t|, exp(-m_t)), output_dtype
    vecM: jax.Array  # (B, NH, S) m_t of the step recurrence, output_dtype
    vecNQ: jax.Array  # (B, NH, S) fp32, the signed n_t . (s q_t) (before abs and the exp(-m) floor)
    states: tuple  # (matC_all, vecN_all, scaM_all), see mlstm_chunkwise_states


def mlstm_chunkwise_fw_result(matQ, matK, matV, vecI, vecF, matC_initial=None, vecN_initial=None,
                              scaM_initial=None, qk_scale=None, output_dtype=jnp.float32, eps=0.0,
                              **tuning) -> FwResult:
    """The forward with every output (:class:`FwResult`); ``tuning`` as in :func:`mlstm_chunkwise_fw`."""
    dims = common.check_inputs(matQ, matK, matV, vecI, vecF, matC_initial, vecN_initial, scaM_initial)
    check_dtypes(matQ, output_dtype)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    config = resolve_config(dims, matQ.dtype, **tuning)
    B, NH, S, DHQK, DHV = dims
    NC, L = S // config.chunk_size_intra, config.chunk_size_intra
    vecB = chunk_log_forget_cumsum(vecF, L)
    vecI = vecI.astype(jnp.float32)
    initial = common.initial_states(dims, matC_initial, vecN_initial, scaM_initial)
    states = _recurrent_states(matK, matV, vecB, vecI, initial, config)
    out_shape = (
        jax.ShapeDtypeStruct((B, NH, S, DHV), matQ.dtype),
        jax.ShapeDtypeStruct((B, NH, S), output_dtype),
        jax.ShapeDtypeStruct((B, NH, S), output_dtype),
        jax.ShapeDtypeStruct((B, NH, S), jnp.float32),
    )
    grid = (-(-DHV // config.siz_b_DH_parallel), S // config.siz_b_L_parallel, B * NH)
    matH, vecN, vecM, vecNQ = triton_call(
        matQ, matK, matV, vecB, vecI, *states,
        kernel=kernels.parallel_fw_kernel, out_shape=out_shape, grid=grid,
        num_warps=config.num_warps_intra, num_stages=config.num_stages_intra,
        S=S, DHQK=DHQK, DHV=DHV, NC=NC, L=L,
        BLOCK_LQ=config.siz_b_L_parallel, BLOCK_LK=config.siz_b_L_loop,
        BLOCK_DHQK=config.siz_b_DH_loop, BLOCK_DHV=config.siz_b_DH_parallel,
        QK_SCALE=common.default_qk_scale(DHQK, qk_scale), EPS=float(eps),
        DOT_PRECISION=dot_precision(matQ.dtype),
    )
    return FwResult(matH, vecN, vecM, vecNQ, tuple(states))


def mlstm_chunkwise_fw(matQ, matK, matV, vecI, vecF, matC_initial=None, vecN_initial=None,
                       scaM_initial=None, qk_scale=None, return_last_states=False,
                       return_all_states=False, chunk_size_inter=None, chunk_size_intra=None,
                       siz_b_L_parallel=None, siz_b_L_loop=None, siz_b_DH_parallel=None,
                       siz_b_DH_loop=None, num_warps_intra=None, num_warps_inter=None,
                       num_stages_intra=None, num_stages_inter=None, output_dtype=jnp.float32, eps=0.0):
    """Chunkwise mLSTM forward with Triton (math: shared/DESIGN.md 3.3).

    Returns ``(matH, vecN, vecM, last_states_or_None, all_states_or_None)``:
    matH (B, NH, S, DHV) in q's dtype; vecN (B, NH, S) the denominator den_t (before eps) and vecM
    (B, NH, S) the stabiliser m_t, both in ``output_dtype`` (fp32 by default, the only choice the
    backward accepts); last states (C (B,NH,DHQK,DHV), n (B,NH,DHQK), m (B,NH)) fp32; all states as
    :func:`mlstm_chunkwise_states` returns them.

    q, k, v: fp32, bf16 or fp16 (dots accumulate in fp32; fp32 dots use 3xTF32, about fp32 accuracy);
    gates and states fp32. ``qk_scale`` defaults to DHQK ** -0.5 and scales q only. S must be a
    multiple of ``chunk_size_intra``. Tuning arguments left ``None`` take the per-shape and per-dtype
    defaults of :func:`resolve_config` (chunk_size_intra = min(256, largest power of two dividing S);
    the blocks tuned on an H100, benchmarks/results/triton_fw_h100.md). Rules (ValueError): chunk sizes powers of two in [16, 1024]; inter <= intra
    (for powers of two the same as intra % inter == 0); S % intra == 0; block sizes powers of two
    >= 16 and <= their chunk size / padded head dim; warps a power of two <= 16; stages in [1, 8].
    """
    result = mlstm_chunkwise_fw_result(
        matQ, matK, matV, vecI, vecF, matC_initial, vecN_initial, scaM_initial, qk_scale=qk_scale,
        output_dtype=output_dtype, eps=eps, chunk_size_inter=chunk_size_inter,
        chunk_size_intra=chunk_size_intra, siz_b_L_parallel=siz_b_L_parallel, siz_b_L_loop=siz_b_L_loop,
        siz_b_DH_parallel=siz_b_DH_parallel, siz_b_DH_loop=siz_b_DH_loop, num_warps_intra=num_warps_intra,
        num_warps_inter=num_warps_inter, num_stages_intra=num_stages_intra,
        num_stages_inter=num_stages_inter,
    )
    last_states = tuple(x[:, :, -1] for x in result.states) if return_last_states else None
    all_states = result.states if return_all_states else None
    return result.matH, result.vecN, result.vecM, last_states, all_states
