"""benchmarks/gpu_hlo.py's reading of an HLO text dump: Triton kernels by computation, from the escaped
jax-triton payloads, asynchronous slice copies by computation, and the bytes the kernels move per step by
phase and kind (the compile itself needs the CUDA PJRT plugin, which the CI set lacks; the CUDA lowering
tests decode real payloads with the same function)."""

import zlib

from benchmarks.gpu_hlo import (
    array_bytes,
    kernel_launches,
    kernel_traffic,
    largest_other_kernels,
    stack_copies_by_computation,
    triton_kernels_by_computation,
    triton_payload,
)


def escaped(data: bytes) -> str:
    """``data`` as MLIR / HLO text writes a string: printable ASCII kept, '\\\\' and '"' escaped, the
    rest as \\XX."""
    out = []
    for byte in data:
        char = chr(byte)
        out.append("\\" + char if char in '\\"' else char if 32 <= byte < 127 else f"\\{byte:02X}")
    return "".join(out)


def call_line(name: str, kernel: str) -> str:
    payload = zlib.compress(f'name "{kernel}"\x00\\ .entry {kernel}(\n\xff'.encode("latin-1"))
    return (
        f'  %{name} = (f32[2]{{0}}) custom-call(%p0), custom_call_target="triton_kernel_call_ffi", '
        f'backend_config={{opaque = "{escaped(payload)}"}}'
    )


def test_payload_round_trips_every_byte():
    data = bytes(range(256)) * 3
    assert triton_payload(escaped(zlib.compress(data))) == data


def test_kernels_are_counted_per_computation():
    text = "\n".join(
        [
            "%region_body.1 (arg: (s32[], f32[2])) -> (s32[], f32[2]) {",
            call_line("a", "recurrent_fw_kernel"),
            call_line("b", "parallel_fw_kernel"),
            "  ROOT %t = tuple(%a, %b)",
            "}",
            "",
            "ENTRY %main.7 (p: f32[2]) -> f32[2] {",
            call_line("c", "parallel_fw_kernel"),
            call_line("d", "parallel_fw_kernel"),
            "  %e = f32[2]{0} add(%c, %d)",
            "}",
        ]
    )
    found = triton_kernels_by_computation(text)
    assert found == {
        "region_body.1": {"recurrent_fw_kernel": 1, "parallel_fw_kernel": 1},
        "main.7": {"parallel_fw_kernel": 2},
    }, found


def test_array_bytes_counts_every_array_of_a_shape():
    assert array_bytes("((bf16[4,8,2048]{2,1,0}, s32[]), bf16[1,8,2048]{2,1,0}, u32[])") == (
        4 * 8 * 2048 * 2 + 4 + 8 * 2048 * 2 + 4
    )
    assert array_bytes("f32[]") == 4
    assert array_bytes("(bf16[4,8]{1,0}, s32[], f32[])", scalars=False) == 4 * 8 * 2


def test_stack_copies_are_counted_per_computation_with_the_bytes_they_write():
    def start(name, operands, result, callee):
        return (
            f"  %{name} = (({operands}), {result}, u32[]) fusion-start(%p, %i), kind=kLoop, "
            f"calls=%{callee}, backend_config={{}}"
        )

    text = "\n".join(
        [
            "%region_20.134 (arg: (s32[], f32[4,2048])) -> (s32[], f32[4,2048]) {",
            start("s1", "f32[4,2048,8]{2,1,0}, s32[]", "f32[1,2048,8]{2,1,0}", "fused_dynamic_slice.3.clone"),
            start("s2", "bf16[4,8,2048]{2,1,0}, s32[]", "bf16[1,8,2048]{2,1,0}", "fused_dynamic_slice.4"),
            start("other", "f32[4,2048]{1,0}, s32[]", "f32[1,2048]{1,0}", "fused_multiply.2"),  # not a copy
            "  %c = f32[1,2048]{1,0} copy(%x)",
            "}",
            "",
            "%region_2.28 (arg: (s32[], f32[4,2048])) -> (s32[], f32[4,2048]) {",
            start(
                "u1",
                "bf16[4,16,64]{2,1,0}, bf16[16,64]{1,0}, s32[]",
                "bf16[4,16,64]{2,1,0}",
                "fused_dynamic_update_slice",
            ),
            "}",
        ]
    )
    assert stack_copies_by_computation(text) == {
        ("region_20.134", "slice"): (2, 2048 * 8 * 4 + 8 * 2048 * 2),
        ("region_2.28", "update"): (1, 16 * 64 * 2),
    }


def test_kernel_traffic_counts_operands_and_results_per_phase_and_kind_times_trip_counts():
    def meta(name):
        return f'metadata={{op_name="jit(step)/{name}"}}'

    text = "\n".join(
        [
            "%body (arg: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {",
            "  %arg = (s32[], f32[4,8]{1,0}) parameter(0)",
            "  %x = f32[4,8]{1,0} get-tuple-element(%arg), index=1",
            f"  %gemm_fusion_dot.3 = bf16[4,16]{{1,0}} fusion(%x), kind=kCustom, calls=%gemm_fusion_dot.3_computation, "
            f"{meta('chunked_loss/jvp()/dot')}",
            f"  %e = f32[4,16]{{1,0}} fusion(%gemm_fusion_dot.3), kind=kLoop, calls=%fused_exp, "  # other: by callee
            f"{meta('chunked_loss/transpose(jvp())/exp')}",
            "  ROOT %t = (s32[], f32[4,8]{1,0}) tuple(%i, %x)",
            "}",
            "",
            "ENTRY %main.1 (p0: f32[4,8], p1: bf16[8,8]) -> f32[4,8] {",
            "  %p0 = f32[4,8]{1,0} parameter(0)",
            "  %p1 = bf16[8,8]{1,0} parameter(1)",
            f"  %m = f32[4,8]{{1,0}} fusion(%p0, %p1), kind=kCustom, calls=%gemm_fusion_dot, "
            f"{meta('jvp()/dot_general')}",
            f'  %k = (f32[4,8]{{1,0}}) custom-call(%m), custom_call_target="triton_kernel_call_ffi", '
            f"{meta('transpose(jvp())/triton_kernel_call')}",
            f"  %a = f32[4,8]{{1,0}} fusion(%m, %p0), kind=kLoop, calls=%fused_add, {meta('add')}",
            '  %w = (s32[], f32[4,8]{1,0}) while(%a), body=%body, backend_config={"known_trip_count":{"n":"3"}}',
            "  %b = f32[4,8]{1,0} bitcast(%a)",
            "}",
        ]
    )
    f32_4x8, bf16_8x8 = 4 * 8 * 4, 8 * 8 * 2
    launches = kernel_launches(text)
    assert kernel_traffic(launches) == {
        ("forward", "matmul"): (1, f32_4x8 + bf16_8x8 + f32_4x8),
        ("backward", "Triton kernel"): (1, 2 * f32_4x8),
        ("update", "other"): (1, 3 * f32_4x8),
        ("loss", "matmul"): (3, 3 * (f32_4x8 + 4 * 16 * 2)),  # the loop body, three trips
        ("loss", "other"): (3, 3 * (4 * 16 * 2 + 4 * 16 * 4)),
    }
    assert largest_other_kernels(launches, 1) == [
        ("loss", "jit(step)/chunked_loss/transpose(jvp())/exp", "f32[4,16]", 3, 3 * (4 * 16 * 2 + 4 * 16 * 4))
    ]
    assert [row[:2] for row in largest_other_kernels(launches, 5)][1] == ("update", "jit(step)/add")
