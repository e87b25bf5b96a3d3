"""benchmarks/gpu_hlo.py's reading of an HLO text dump: Triton kernels by computation, from the escaped
jax-triton payloads, and asynchronous slice copies by computation (the compile itself needs the CUDA PJRT
plugin, which the CI set lacks; the CUDA lowering tests decode real payloads with the same function)."""

import zlib

from benchmarks.gpu_hlo import array_bytes, stack_copies_by_computation, triton_kernels_by_computation, triton_payload


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
