"""Per-kernel breakdown of the Triton chunkwise mLSTM (bf16) at one shape: time, FLOP, bytes and % of each
kernel's own roofline floor, for the forward's kernels, the backward's and the JAX glue.

    python benchmarks/kernel_breakdown.py [--shape 8x8x8192x256x512] [--reps 20] [--out benchmarks/results/NAME.md]
    python benchmarks/kernel_breakdown.py --profile-once   # one forward+backward, e.g. under ncu

Each kernel is jitted and timed on its own with the library's default tuning: the median per call of
``QUEUED_CALLS`` calls issued back to back (benchmarks/timing.py), the card's time without the host's
dispatch and wait around each call (before session 18 each call was waited for, which added 0.1-0.4 ms
per row). "forward parallel" is the whole forward minus the states kernel and the gate cumsum (one XLA
program holds all three); "glue" rows are the jnp work around the kernels; the last rows compare the sum
with the registry's forward and forward+backward (where XLA merges the backward's recomputed chunk states
with the forward's identical call).

Counting (per kernel, B NH heads of S steps, K = DHQK, V = DHV, L = chunk_size_intra, tiles of the
resolved configs; FLOP as the kernel's tiles do them, so recomputed score tiles count):
* states (forward): 2 S K V (K^T V); bytes: read k, v and the gates, write the states at the NC + 1
  boundaries (C in bf16 by default, fp32 with states_in_input_dtype=False; the store dominates at 7B).
* parallel (forward): 2 S K V (q C) + per causal tile pair 2 LQ LK (K splits_V + V), splits_V = DHV
  blocks (q k^T is recomputed for each); bytes: read q, k, v, gates, states once, write h, den, m, nq.
* step 1 (mden = m + log(den + eps), dden, dnq): 2 S V; bytes: read dh, h, den, m, nq, write mden, dden, dnq.
* dC recurrence: 2 S K V; bytes: read q, dh, four gate vectors, write the dC (bf16 by default), dn states.
* dq: 2 S K V (dh C^T) + per tile pair 2 BT BJ (V splits + K), splits = DHQK blocks (dh v^T is
  recomputed for each); dk likewise (dh v^T per DHQK block, times q); dv: q k^T per DHV block, times dh.
  Bytes: each kernel's inputs read once (states included) and its outputs written once.
* with ``materialise_bw_scores`` (the 16-bit default) a scores kernel does per tile pair 2 BT BJ (V + K)
  and writes one (BT, BJ) tile of dS and of P per pair; dq, dk and dv then do 2 S K V + per tile pair
  2 BT BJ K (dq, dk) or V (dv), reading those tiles instead of v (dq, dk) or q (dv) for the scores.
Floor = max(FLOP / matmul ceiling, bytes / copy ceiling), the card's ceilings (benchmarks/timing.py).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.timing

from benchmarks.timing import (  # noqa: E402
    QUEUED_CALLS,
    floor_ms,
    markdown_table,
    median_ms,
    mlstm_inputs,
    shape_parser,
    write_report,
)
from xlstm_flax.kernels import common, get_kernel  # noqa: E402
from xlstm_flax.kernels.triton import chunkwise_bw as bw  # noqa: E402
from xlstm_flax.kernels.triton.chunkwise_fw import mlstm_chunkwise_fw_result, mlstm_chunkwise_states  # noqa: E402
from xlstm_flax.kernels.triton.shared import cdiv, chunk_log_forget_cumsum, heads_flat  # noqa: E402
from xlstm_flax.kernels.triton.tuning import resolve_bw_config, resolve_fw_config, state_tuning  # noqa: E402

EPS = 1e-6  # the registry's default
BW_KERNELS = ("states", "step 1", "dC recurrence", "dS, P scores", "dq", "dk", "dv")  # scores: when materialised


def causal_pairs(L: int, rows: int, cols: int) -> int:
    """Tile pairs per chunk of L steps that a kernel with ``rows``-step owned blocks and ``cols``-step
    looped blocks computes: for owned block r, the looped blocks up to its last step."""
    return sum(cdiv((r + 1) * rows, cols) for r in range(L // rows))


def kernel_work(shape, fw, bwc, itemsize: int = 2) -> dict:
    """{kernel: (FLOP, minimum bytes)} of the counting in the module docstring."""
    B, NH, S, K, V = shape
    H, L = B * NH, fw.chunk_size_intra
    NC, chunks = S // L, S // L
    c_size, dc_size = (itemsize if config.states_in_input_dtype else 4 for config in (fw, bwc))
    states = H * (NC + 1) * (K * V * c_size + (K + 1) * 4)
    qk, v, gate = H * S * K * itemsize, H * S * V * itemsize, H * S * 4
    kv_flop = 2 * H * S * K * V
    splits_v = cdiv(V, fw.siz_b_DH_parallel)
    par_pairs = causal_pairs(L, fw.siz_b_L_parallel, fw.siz_b_L_loop) * chunks * H
    par_flop = 2 * fw.siz_b_L_parallel * fw.siz_b_L_loop * (K * splits_v + V) * par_pairs
    bw_pairs = causal_pairs(L, bwc.block_steps_owned, bwc.block_steps_looped) * chunks * H
    tile = 2 * bwc.block_steps_owned * bwc.block_steps_looped
    own_q, own_v = min(bwc.block_dh_owned, K), min(bwc.block_dh_owned, V)
    work = {
        "states": (kv_flop, qk + v + 2 * gate + states),
        "forward parallel": (kv_flop + par_flop, 2 * qk + 2 * v + 2 * gate + states + v + 3 * gate),
        "step 1": (2 * H * S * V, 2 * v + 6 * gate),
        "dC recurrence": (kv_flop, qk + v + 4 * gate + H * (NC + 1) * (K * V * dc_size + K * 4)),
    }
    if not bwc.materialise_bw_scores:
        return work | {
            "dq": (kv_flop + tile * (V * cdiv(K, own_q) + K) * bw_pairs, 3 * qk + 2 * v + 5 * gate + states),
            "dk": (kv_flop + tile * (V * cdiv(K, own_q) + K) * bw_pairs, 3 * qk + 2 * v + 7 * gate + states),
            "dv": (kv_flop + tile * (K * cdiv(V, own_v) + V) * bw_pairs, 2 * qk + 3 * v + 5 * gate + states),
        }
    scores = tile // 2 * bw_pairs * itemsize  # bytes of one of dS, P: one (BT, BJ) tile per pair
    return work | {
        "dS, P scores": (tile * (K + V) * bw_pairs, 2 * qk + 2 * v + 4 * gate + 2 * scores),
        "dq": (kv_flop + tile * K * bw_pairs, 3 * qk + v + 3 * gate + states + scores),
        "dk": (kv_flop + tile * K * bw_pairs, 3 * qk + v + 3 * gate + states + scores),
        "dv": (kv_flop + tile * V * bw_pairs, qk + 2 * v + 2 * gate + states + scores),
    }


def backward_kernel_calls(input_sets, tuning: dict) -> dict:
    """{name: (jitted fn, [its args for each input set])} for the backward's kernels alone (residuals from
    the default forward), so that consecutive timed calls read different buffers, as the whole
    forward+backward's calls do."""
    q, _, v, _, _, _ = input_sets[0]
    B, NH, S, K = q.shape
    dims, dtype = common.Dims(B, NH, S, K, v.shape[-1]), q.dtype
    config = resolve_bw_config(dims, dtype, **tuning)
    fw_config = resolve_fw_config(dims, dtype, chunk_size_intra=config.chunk_size_intra)
    s = K**-0.5
    m0 = jnp.zeros((B, NH), jnp.float32)
    forward = jax.jit(lambda *a: mlstm_chunkwise_fw_result(*a, eps=EPS))
    kernel_args = jax.jit(lambda *a: bw.kernel_args(*a, eps=EPS, chunk_size_intra=config.chunk_size_intra)[0])
    states = jax.jit(
        lambda k, v, i, f: tuple(heads_flat(x) for x in mlstm_chunkwise_states(k, v, i, f, **state_tuning(fw_config)))
    )
    zeros_c, zeros_n = jnp.zeros((B * NH, K, v.shape[-1]), jnp.float32), jnp.zeros((B * NH, K), jnp.float32)
    dstates_fn = jax.jit(lambda a: bw.state_cotangents(a, zeros_c, zeros_n, s, config)[:2])
    scores_fn = jax.jit(lambda a: bw.scores_call(a, s, config))
    fns = {
        "dS, P scores": scores_fn,
        "states": states,
        "dC recurrence": dstates_fn,
        "dq": jax.jit(lambda a, st, dS: bw.dq_call(a, st, s, config, dS)),
        "dk": jax.jit(lambda a, ds, dS: bw.dk_dv_call(a, ds, s, config, True, dS)),
        "dv": jax.jit(lambda a, ds, P: bw.dk_dv_call(a, ds, s, config, False, P)[0]),
        "step 1": jax.jit(lambda *a: bw.step_cotangents(*a, EPS)),
    }
    if not config.materialise_bw_scores:
        del fns["dS, P scores"]
    arg_sets = {name: [] for name in fns}
    for q, k, v, i, f, dh in input_sets:
        fw = forward(q, k, v, i, f)
        args = kernel_args(q, k, v, i, f, m0, fw.matH, fw.vecDen, fw.vecM, fw.vecNQ, dh)
        all_states, dstates = states(k, v, i, f), dstates_fn(args)
        dS, P = scores_fn(args) if config.materialise_bw_scores else (None, None)
        per_kernel = {
            "dS, P scores": (args,),
            "states": (k, v, i, f),
            "dC recurrence": (args,),
            "dq": (args, all_states, dS),
            "dk": (args, dstates, dS),
            "dv": (args, dstates, P),
            "step 1": (dh, fw.matH, fw.vecDen, fw.vecM, fw.vecNQ),
        }
        for name in fns:
            arg_sets[name].append(per_kernel[name])
    return {name: (fn, arg_sets[name]) for name, fn in fns.items()}


def device_ms(fn, input_sets, reps: int) -> float:
    """Median ms per call of ``fn`` with ``QUEUED_CALLS`` calls in flight (the card's time)."""
    return median_ms(fn, input_sets, reps=reps, queued=QUEUED_CALLS)


def kernel_timings(input_sets, tuning: dict, reps: int, names=BW_KERNELS) -> dict:
    """Median ms of each backward kernel of ``names`` (BW_KERNELS, in that order) for one backward
    configuration."""
    calls = backward_kernel_calls(input_sets, tuning)
    return timed_each({name: calls[name] for name in names if name in calls}, reps)


def timed_each(calls: dict, reps: int) -> dict:
    """Median ms of each ``fn`` of ``calls`` (name -> (jitted fn, its argument sets), rotated), each timed
    back to back on its own. Timed in turns, each would run right after another, often heavier one and
    read slower: at the 7B layer such times summed to 9.1 ms against 7.0 ms for the whole forward+backward
    (benchmarks/results/h200_session12_2026-12-03.md)."""
    return {name: device_ms(fn, arg_sets, reps) for name, (fn, arg_sets) in calls.items()}


def registry_call(mode: str):
    """The registry's chunkwise--triton, jitted: forward h, or the gradients of q, k, v, i, f."""
    kernel = get_kernel("chunkwise--triton")
    if mode == "fw":
        return jax.jit(lambda q, k, v, i, f, dh: kernel(q, k, v, i, f))

    def fwbw(q, k, v, i, f, dh):
        h, vjp = jax.vjp(kernel, q, k, v, i, f)
        return vjp(dh.astype(h.dtype))

    return jax.jit(fwbw)


def breakdown(shape, reps: int) -> tuple[list, list]:
    """(rows, notes) of the per-kernel table at ``shape``."""
    B, NH, S, K, V = shape
    dims = common.Dims(B, NH, S, K, V)
    fw_config = resolve_fw_config(dims, jnp.bfloat16, chunk_size_intra=common.default_chunk_size(S))
    bw_config = resolve_bw_config(dims, jnp.bfloat16, chunk_size_intra=fw_config.chunk_size_intra)
    input_sets = [mlstm_inputs(shape, jnp.bfloat16, seed) for seed in (0, 1)]
    work = kernel_work(shape, fw_config, bw_config)
    rows = []

    def add(name, ms, flop_bytes=None):
        if flop_bytes is None:
            rows.append([name, ms, "-", "-", "-", "-", "-"])
        else:
            flop, nbytes = flop_bytes
            floor = floor_ms(flop, nbytes)
            rows.append([name, ms, flop / 1e9, nbytes / 1e9, floor, 100 * floor / ms, flop / ms / 1e9])
        print(markdown_table(COLUMNS, rows[-1:]).splitlines()[-1], flush=True)

    five = [x[:5] for x in input_sets]
    cumsum = jax.jit(lambda f: chunk_log_forget_cumsum(f, fw_config.chunk_size_intra))
    glue_fw = device_ms(cumsum, [(x[4],) for x in input_sets], reps)
    whole_fw = device_ms(jax.jit(lambda *a: mlstm_chunkwise_fw_result(*a, eps=EPS).matH), five, reps)
    per_kernel = timed_each(backward_kernel_calls(input_sets, {}), reps)
    add("forward: states (recurrent)", per_kernel["states"], work["states"])
    add(
        "forward: parallel (whole forward - states - glue)",
        whole_fw - per_kernel["states"] - glue_fw,
        work["forward parallel"],
    )
    add("glue: forward gate cumsum", glue_fw)
    backward = [name for name in BW_KERNELS[1:] if name in per_kernel]
    for name in backward:
        add(f"backward: {name}", per_kernel[name], work[name])
    kernel_sum = whole_fw + sum(per_kernel[name] for name in backward)
    add("sum: forward + backward kernels above", kernel_sum)
    for mode in ("fw", "fwbw"):
        add(f"registry chunkwise--triton {mode}", device_ms(registry_call(mode), input_sets, reps))
    notes = [
        f"- shape B x NH x S x DHQK x DHV = {'x'.join(map(str, shape))}, bf16, library defaults",
        f"- forward config: {fw_config}",
        f"- backward config: {bw_config}",
        "- registry fw+bw - sum = the rest of the glue (gate gradients, the m-path vjp, reshapes) "
        "minus what XLA overlaps or merges",
    ]
    return rows, notes


COLUMNS = ["kernel", "ms", "GFLOP", "min GB", "floor ms", "% of floor", "TFLOP/s"]


def main(argv=None) -> int:
    parser = shape_parser(__doc__, "8x8x8192x256x512")
    parser.add_argument(
        "--profile-once",
        action="store_true",
        help="run one registry forward+backward (compiled first) and exit, e.g. under ncu",
    )
    args = parser.parse_args(argv)
    shape = args.shape
    if args.profile_once:
        inputs = mlstm_inputs(shape, jnp.bfloat16, 0)
        jax.block_until_ready(registry_call("fwbw")(*inputs))
        return 0
    rows, notes = breakdown(shape, args.reps)
    write_report("Per-kernel breakdown, Triton chunkwise mLSTM", [notes, [markdown_table(COLUMNS, rows)]], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
