"""Probe (issue 10): does Triton's Hopper warp specialization, or a 2-CTA cluster, compile the forward state walk?

Compiles variants of the chunk-state walk (``chunkwise_fw_kernels._state_walk``: C += K^T diag(w) V per
128-step chunk, k and v through TMA descriptors) for sm_90 without a GPU, with ``tl.range(...,
warp_specialize=True)`` or ``num_ctas=2``, and prints per variant whether the compile succeeded, how many
warp-specialised regions and warps the kernel got, its shared memory and its multicast loads (a cluster's
CTAs sharing one load of k). Nothing runs; the variants only differ in where the per-chunk gate values
come from (3 pipeline stages, 4 warps, 128 x 64 state tiles):

* ``matmul``: no gates (C += K^T V): the plain matmul loop that the warp specialization is made for;
* ``gates elementwise``: a TMA-loaded (1, L) tile of precomputed weights scales v element by element;
* ``gates reduced``: the library's walk, whose chunk decay and stabiliser are reductions of the loaded
  gate tile to scalars.

    python benchmarks/triton_ws_probe.py     # any machine with triton (cpu_session27_2026-12-06.md)
"""

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

L, BQ, BV, S, DHQK, DHV = 128, 128, 64, 8192, 256, 512


# fmt: off
@triton.jit
def walk(descK, descV, descW, matC_all, MODE: tl.constexpr, WS: tl.constexpr, S: tl.constexpr, L: tl.constexpr,
         BQ: tl.constexpr, BV: tl.constexpr, DHQK: tl.constexpr, DHV: tl.constexpr):
    pid_q, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    matC = tl.zeros((BQ, BV), tl.float32)
    scaM = 0.0
    for step in tl.range(S // L, warp_specialize=WS):
        row = bh * (S // L) + step
        k = descK.load([row * L, pid_q * BQ])
        v = descV.load([row * L, pid_v * BV])
        if MODE == 0:  # matmul
            matC = tl.dot(tl.trans(k), v, matC)
        else:
            w = tl.reshape(descW.load([row, 0]), (L,))
            if MODE == 1:  # gates elementwise
                matC = tl.dot(tl.trans(k), (v * w[:, None]).to(v.dtype), matC)
            else:  # gates reduced to the chunk's scalars
                m_new = tl.maximum(scaM, tl.max(w))
                weighted_v = (v * tl.exp(w - m_new)[:, None]).to(v.dtype)
                matC = tl.exp(scaM - m_new) * matC + tl.dot(tl.trans(k), weighted_v)
                scaM = m_new
    offs = (pid_q * BQ + tl.arange(0, BQ))[:, None] * DHV + pid_v * BV + tl.arange(0, BV)[None, :]
    tl.store(matC_all + bh * DHQK * DHV + offs, matC.to(tl.bfloat16))
# fmt: on


def probe(mode: int, ws: bool, num_ctas: int) -> str:
    signature = {
        "descK": f"tensordesc<bf16[{L},{BQ}]>",
        "descV": f"tensordesc<bf16[{L},{BV}]>",
        "descW": f"tensordesc<fp32[1,{L}]>",
        "matC_all": "*bf16",
    }
    constants = dict(MODE=mode, WS=ws, S=S, L=L, BQ=BQ, BV=BV, DHQK=DHQK, DHV=DHV)
    signature.update(dict.fromkeys(constants, "constexpr"))
    source = ASTSource(fn=walk, signature=signature, constexprs=constants)
    try:
        compiled = triton.compile(
            source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=3, num_ctas=num_ctas)
        )
    except RuntimeError as error:
        return f"compile failed ({str(error).splitlines()[0][:60]})"
    regions = compiled.asm["ttgir"].count("ttg.warp_specialize")
    multicasts = compiled.asm["ptx"].count(".multicast")
    return (
        f"{regions} warp-specialised region(s), {compiled.metadata.num_warps} warps, "
        f"{compiled.metadata.shared} B shared, {multicasts} multicast loads"
    )


def main():
    for mode, name in enumerate(["matmul", "gates elementwise", "gates reduced"]):
        for ws, num_ctas in [(False, 1), (True, 1), (False, 2)]:
            print(f"| {name} | warp_specialize={ws} | num_ctas={num_ctas} | {probe(mode, ws, num_ctas)} |", flush=True)


if __name__ == "__main__":
    main()
