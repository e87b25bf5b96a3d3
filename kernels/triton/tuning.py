"""Tuning of the Triton chunkwise kernels: one config per direction, defaults filled and rules checked once.

:class:`FwConfig` tiles the forward (its names are the public keywords of ``mlstm_chunkwise_fw``);
:class:`BwConfig` tiles the backward with names that say what each block covers. Both share only
``chunk_size_intra``, the spacing of the chunk states the backward reads, and ``states_in_input_dtype``
(store the materialised chunk states C and their cotangents dC in q's dtype; n, m and the returned
last / initial-state values stay fp32). The default values are the fastest of the H100 and H200 sweeps in
``benchmarks/results/``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from .. import common
from .shared import KERNEL_NAME, MAX_CHUNK, MIN_BLOCK, check_int_range, check_power_of_two, padded_dim


@dataclasses.dataclass(frozen=True)
class FwConfig:
    """Every tuning choice of one forward call.

    Recurrent kernel (chunk states): ``chunk_size_inter`` steps per update, a ``siz_b_DHQK_inter`` x
    ``siz_b_DHV_inter`` state tile per program. Parallel kernel (outputs): ``siz_b_L_parallel`` query
    steps and ``siz_b_DH_parallel`` columns of DHV per program, key steps in blocks of ``siz_b_L_loop``,
    DHQK contracted in blocks of ``siz_b_DH_loop``. ``chunk_size_intra``: steps between stored states.
    ``states_in_input_dtype``: the stored chunk states C in q's dtype (their consumers cast them to it
    before their dots anyway, so h is unchanged; half the state bytes for 16-bit inputs), else fp32.

    ``materialise_scores``: the outputs in two kernels instead of the parallel kernel. A scores kernel
    (the parallel kernel's row/key blocks, DHQK blocks, warps and stages) stores the gated scores of every
    key block j <= i in q's dtype (a (B, NH, S, chunk_size_intra) buffer); an output kernel multiplies
    them with v: ``siz_b_L_output`` rows (default ``siz_b_L_parallel``) and ``siz_b_DH_parallel`` columns
    per program, DHQK and steps contracted ``siz_b_K_output`` at a time (default min(64,
    ``siz_b_L_parallel``)), ``num_warps_output`` / ``num_stages_output``. Where either of its blocks is
    larger than ``siz_b_L_parallel`` the scores kernel also writes the zero blocks above the diagonal that
    the output kernel's tiles read.
    """

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
    states_in_input_dtype: bool
    materialise_scores: bool
    siz_b_L_output: int
    siz_b_K_output: int
    num_warps_output: int
    num_stages_output: int


@dataclasses.dataclass(frozen=True)
class BwConfig:
    """Every tuning choice of one backward call.

    Recurrent kernel (state cotangents, walked backwards): ``chunk_size_recurrent`` steps per update, a
    ``block_dhqk_recurrent`` x ``block_dhv_recurrent`` tile per program. Parallel kernels (dq; dk and
    dv): a program owns ``block_steps_owned`` steps (rows of dq, of dk / dv) and ``block_dh_owned``
    columns of the gradient (of DHQK for dq and dk, of DHV for dv, clamped to it), loops over the
    other steps in blocks of ``block_steps_looped`` and contracts the other head dim in blocks of
    ``block_dh_contracted`` (clamped to it). ``chunk_size_intra``: the forward's, the states' spacing.
    ``states_in_input_dtype``: the stored state cotangents dC in q's dtype (dk and dv cast them to it
    before their dots; dC0 stays fp32), else fp32. The forward's option of the same name.
    ``materialise_bw_scores``: a scores kernel (the parallel kernels' step blocks, contracted blocks,
    warps and stages) first stores the gated scores dS (from dh . v) and P (from q . k) of every
    chunk in q's dtype (two (B, NH, S, chunk_size_intra) buffers), and dq, dk, dv read them instead of
    recomputing them for every head-dim tile they own.
    """

    chunk_size_intra: int
    chunk_size_recurrent: int
    block_dhqk_recurrent: int
    block_dhv_recurrent: int
    num_warps_recurrent: int
    num_stages_recurrent: int
    block_steps_owned: int
    block_steps_looped: int
    block_dh_owned: int
    block_dh_contracted: int
    num_warps_parallel: int
    num_stages_parallel: int
    states_in_input_dtype: bool
    materialise_bw_scores: bool


FW_OPTIONS = frozenset(f.name for f in dataclasses.fields(FwConfig))
BW_OPTIONS = frozenset(f.name for f in dataclasses.fields(BwConfig))
STATE_OPTIONS = (
    "chunk_size_inter",
    "chunk_size_intra",
    "siz_b_DHQK_inter",
    "siz_b_DHV_inter",
    "num_warps_inter",
    "num_stages_inter",
    "states_in_input_dtype",
)


def state_tuning(config: FwConfig) -> dict:
    """The choices of ``config`` that ``mlstm_chunkwise_states`` takes (its recurrent kernel's)."""
    return {name: getattr(config, name) for name in STATE_OPTIONS}


def state_dtype(config: FwConfig | BwConfig, dtype):
    """The dtype of the stored chunk states C (forward) or dC (backward) for q/k/v of ``dtype``."""
    return jnp.dtype(dtype) if config.states_in_input_dtype else jnp.dtype(jnp.float32)


def fitting_chunk_size(S: int, caller: str) -> int:
    """The package's chunk size (``common.default_chunk_size``) shortened to divide S, for the low-level
    functions that do not pad; ValueError unless S is a multiple of MIN_BLOCK."""
    if S % MIN_BLOCK:
        raise ValueError(
            f"S={S}: S must be a multiple of {MIN_BLOCK} for {caller}; the registry entry '{KERNEL_NAME}' pads any S"
        )
    return min(common.default_chunk_size(S), S & -S)


FEW_BATCH_HEADS = 16  # at most this many (batch, head) pairs: 64-row state tiles (state_tile_rows)


def state_tile_rows(DHQK: int, dtype, batch_heads: int) -> int:
    """DHQK rows of a state-walk tile (forward C, backward dC) for ``batch_heads`` = B x NH.

    128 for 16-bit inputs from DHQK = 128 on: two programs per SM, since n walks in programs of its own
    (H200, states kernel alone: 7B layer 1.15 -> 1.08 ms, 8x16x8192x128x256 0.96 -> 0.79 ms;
    benchmarks/results/h200_recurrent_split_2026-12-03.md). With at most FEW_BATCH_HEADS pairs that grid
    leaves SMs with one program or none, and 64 rows were faster (H200, two processes at 1x8x8192x256x512:
    forward 0.361-0.366 -> 0.346-0.353 ms, forward+backward 1.043-1.047 -> 1.009-1.018; 2x8x8192x256x512:
    0.639 -> 0.616 and 1.836 -> 1.803; benchmarks/results/h200_session27_2026-12-06.md). Otherwise
    min(64, padded DHQK).
    """
    if jnp.dtype(dtype).itemsize <= 2 and DHQK >= 128 and batch_heads > FEW_BATCH_HEADS:
        return 128
    return min(64, padded_dim(DHQK))


def fw_defaults(
    DHQK: int, DHV: int, dtype, chunk_size_intra: int, batch_heads: int, materialise_scores: bool | None = None
) -> dict:
    """Per-shape forward defaults of every choice but chunk_size_intra (``batch_heads`` = B x NH sets the
    state tiles); ``siz_b_DH_loop`` follows ``materialise_scores`` (None: the shape's default, below).

    bf16/fp16: the fastest configuration of the H100 sweep at (DHQK, DHV) = (256, 512) and (128, 256),
    with 3 parallel-kernel stages from DHQK = 256 on (H200 sweep at 7B: 4.02 -> 3.63 ms). fp32 operands
    are twice as large: smaller parallel-kernel tiles, so shared memory stays within the H100's 227 KiB.
    Both: recurrent tile :func:`state_tile_rows` x min(64, padded DHV) over inter chunks of min(128,
    intra) steps, 4 warps, 2 stages; chunk states in the input dtype (fp32 for fp32 inputs).
    bf16/fp16 with DHV wider than one 256-column tile (where the parallel kernel would recompute q k^T
    per tile): ``materialise_scores`` with the scores kernel's q k^T as one dot up to DHQK = 256 (H200,
    7B layer: forward 3.17 -> 2.66 ms; at 128 x 256, one DHV tile, it lost: 2.50 -> 2.75 ms); its output
    kernel with 128-row tiles, 8 warps and the parallel kernel's stages. From DHQK = 256 on its scores
    kernel takes 64-row blocks with 4 warps and 2 stages, two programs per SM (H100, forward: 7B layer
    2.206 -> 2.112 ms, 32x8x2048 2.246 -> 2.157, 1x8x8192 0.391 -> 0.377; it lost at 128 x 256, 19 %).
    :func:`resolve_fw_config` fills in the output kernel's blocks, which otherwise follow ``siz_b_L_parallel``.
    """
    intra = chunk_size_intra
    dhqk_pad, dhv_pad = padded_dim(DHQK), padded_dim(DHV)
    both = dict(
        chunk_size_inter=min(128, intra),
        siz_b_DHQK_inter=state_tile_rows(DHQK, dtype, batch_heads),
        siz_b_DHV_inter=min(64, dhv_pad),
        num_warps_inter=4,
        num_stages_inter=2,
        states_in_input_dtype=True,
    )
    if jnp.dtype(dtype).itemsize <= 2:
        materialise = dhv_pad > 256 if materialise_scores is None else materialise_scores  # several DHV tiles
        half_rows = materialise and DHQK >= 256  # 64-row scores blocks, two programs per SM
        return dict(
            both,
            materialise_scores=materialise,
            num_stages_intra=3 if DHQK >= 256 and not half_rows else 2,
            siz_b_L_parallel=min(64 if half_rows else 128, intra),
            siz_b_L_loop=min(64, intra),
            siz_b_DH_parallel=min(256, dhv_pad),
            siz_b_DH_loop=dhqk_pad if dhqk_pad <= (256 if materialise else 128) else 64,
            num_warps_intra=4 if half_rows else 8,
            **({"siz_b_L_output": min(128, intra)} if half_rows else {}),  # the output kernel's tiles as before
            num_warps_output=8,
            num_stages_output=3 if DHQK >= 256 else 2,
        )
    return dict(
        both,
        materialise_scores=False,
        siz_b_L_parallel=min(64, intra),
        siz_b_L_loop=min(64, intra),
        siz_b_DH_parallel=min(128, dhv_pad),
        siz_b_DH_loop=min(64, dhqk_pad),
        num_warps_intra=4,
        num_stages_intra=2,
        num_warps_output=4,
        num_stages_output=2,
    )


def bw_defaults(DHQK: int, DHV: int, dtype, chunk_size_intra: int, batch_heads: int) -> dict:
    """Per-shape backward defaults of every choice but chunk_size_intra (``batch_heads`` = B x NH sets the
    state-cotangent tiles).

    Step blocks min(64, intra), recurrent chunk min(128, intra); owned head-dim tile min(128, padded DHV)
    for 16-bit inputs, min(64, padded DHV) for fp32 (twice the bytes per tile); contracted blocks
    min(64, padded DHQK); recurrent tile :func:`state_tile_rows` x min(64, padded DHV) (as the
    forward's); 4 warps and 2 stages everywhere, except 16-bit inputs with
    DHQK >= 256: 3 parallel-kernel stages (H200 sweep at 7B: backward kernels 9.04 -> 7.89 ms,
    forward+backward 12.56 -> 11.12 ms). State
    cotangents in the input dtype (fp32 for fp32 inputs). ``materialise_bw_scores`` for 16-bit inputs:
    H200 bf16 forward+backward 8.79 -> 7.64 ms at 8x8x8192x256x512, 7.57 -> 6.92 at 8x16x8192x128x256,
    1.78 -> 1.52 at 1x8x8192x256x512, 1.65 -> 1.40 at 8x8x4096x64x128, 4.52 -> 3.78 at 8x4x4096x384x768
    (benchmarks/results/h200_bw_scores_2026-12-02.md); not timed for fp32, so off there.
    """
    intra = chunk_size_intra
    dhqk_pad, dhv_pad = padded_dim(DHQK), padded_dim(DHV)
    sixteen_bit = jnp.dtype(dtype).itemsize <= 2
    wide = sixteen_bit and DHQK >= 256
    return dict(
        chunk_size_recurrent=min(128, intra),
        block_dhqk_recurrent=state_tile_rows(DHQK, dtype, batch_heads),
        block_dhv_recurrent=min(64, dhv_pad),
        num_warps_recurrent=4,
        num_stages_recurrent=2,
        block_steps_owned=min(64, intra),
        block_steps_looped=min(64, intra),
        block_dh_owned=min(128 if sixteen_bit else 64, dhv_pad),
        block_dh_contracted=min(64, dhqk_pad),
        num_warps_parallel=4,
        num_stages_parallel=3 if wide else 2,
        states_in_input_dtype=True,
        materialise_bw_scores=sixteen_bit,
    )


def _filled(given: dict, allowed: frozenset, dims: common.Dims, caller: str) -> tuple[dict, int]:
    """``given`` without None values (ValueError on unknown names) and the chunk_size_intra to use."""
    unknown = set(given) - allowed
    if unknown:
        raise ValueError(f"unknown tuning option(s) {sorted(unknown)} for {caller}")
    given = {name: value for name, value in given.items() if value is not None}
    intra = given.pop("chunk_size_intra", None)
    return given, fitting_chunk_size(dims.S, caller) if intra is None else intra


def _check_chunks(S: int, intra: int, name_inter: str, inter: int) -> None:
    check_power_of_two("chunk_size_intra", intra, MIN_BLOCK, MAX_CHUNK)
    check_power_of_two(name_inter, inter, MIN_BLOCK, MAX_CHUNK)
    if inter > intra:  # both powers of two: inter <= intra is the same as inter dividing intra
        raise ValueError(f"{name_inter}={inter} must be <= chunk_size_intra={intra} (and divide it)")
    if S % intra:
        raise ValueError(
            f"sequence length S={S} must be a multiple of chunk_size_intra={intra} "
            f"(the registry entry '{KERNEL_NAME}' pads any S)"
        )


def _check_launch(config, warps: tuple[str, ...], stages: tuple[str, ...], flags: tuple[str, ...]) -> None:
    for name in flags:
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(config, name)!r}")
    for name in warps:
        check_power_of_two(name, getattr(config, name), 1, 16)
    for name in stages:
        check_int_range(name, getattr(config, name), 1, 8)


def resolve_fw_config(dims: common.Dims, dtype=jnp.float32, caller: str = "mlstm_chunkwise_fw", **given) -> FwConfig:
    """``given`` choices (None = default) over :func:`fw_defaults` for q/k/v of ``dtype``, every rule
    checked (ValueError naming it). chunk_size_intra defaults to :func:`fitting_chunk_size`."""
    given, intra = _filled(given, FW_OPTIONS, dims, caller)
    defaults = fw_defaults(dims.DHQK, dims.DHV, dtype, intra, dims.B * dims.NH, given.get("materialise_scores"))
    chosen = {**defaults, **given, "chunk_size_intra": intra}
    rows = chosen["siz_b_L_parallel"]
    chosen.setdefault("siz_b_L_output", rows)
    chosen.setdefault("siz_b_K_output", min(64, rows))
    config = FwConfig(**chosen)
    _check_chunks(dims.S, intra, "chunk_size_inter", config.chunk_size_inter)
    dhqk_pad, dhv_pad = padded_dim(dims.DHQK), padded_dim(dims.DHV)
    for name, high in (
        ("siz_b_L_parallel", intra),
        ("siz_b_L_loop", intra),
        ("siz_b_DH_parallel", dhv_pad),
        ("siz_b_DH_loop", dhqk_pad),
        ("siz_b_DHQK_inter", dhqk_pad),
        ("siz_b_DHV_inter", dhv_pad),
        ("siz_b_L_output", intra),
        ("siz_b_K_output", intra),
    ):
        check_power_of_two(name, getattr(config, name), MIN_BLOCK, high)
    _check_launch(
        config,
        ("num_warps_intra", "num_warps_inter", "num_warps_output"),
        ("num_stages_intra", "num_stages_inter", "num_stages_output"),
        ("states_in_input_dtype", "materialise_scores"),
    )
    return config


def resolve_bw_config(dims: common.Dims, dtype=jnp.float32, caller: str = "mlstm_chunkwise_bw", **given) -> BwConfig:
    """``given`` choices (None = default) over :func:`bw_defaults`, every rule checked (ValueError naming
    it). chunk_size_intra defaults to :func:`fitting_chunk_size`."""
    given, intra = _filled(given, BW_OPTIONS, dims, caller)
    defaults = bw_defaults(dims.DHQK, dims.DHV, dtype, intra, dims.B * dims.NH)
    config = BwConfig(**{**defaults, **given, "chunk_size_intra": intra})
    _check_chunks(dims.S, intra, "chunk_size_recurrent", config.chunk_size_recurrent)
    dhqk_pad, dhv_pad = padded_dim(dims.DHQK), padded_dim(dims.DHV)
    dh_pad = max(dhqk_pad, dhv_pad)
    for name, high in (
        ("block_steps_owned", intra),
        ("block_steps_looped", intra),
        ("block_dh_owned", dh_pad),
        ("block_dh_contracted", dh_pad),
        ("block_dhqk_recurrent", dhqk_pad),
        ("block_dhv_recurrent", dhv_pad),
    ):
        check_power_of_two(name, getattr(config, name), MIN_BLOCK, high)
    _check_launch(
        config,
        ("num_warps_parallel", "num_warps_recurrent"),
        ("num_stages_parallel", "num_stages_recurrent"),
        ("states_in_input_dtype", "materialise_bw_scores"),
    )
    return config
