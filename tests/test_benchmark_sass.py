"""benchmarks/sass.py: its loop finder and opcode counter on a hand-written SASS listing, and a full run on
tiny sLSTM and mLSTM shapes (CUDA lowering on this CPU machine, ptxas and nvdisasm bundled with Triton)."""

from benchmarks import sass
from tests.kernels.lowering import skip_module_unless_lowerable

skip_module_unless_lowerable()

LISTING = """\
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_2:
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
.L_x_1:
        /*0020*/                   LDG.E.64.STRONG.GPU R2, desc[UR4][R6.64] ;
        /*0030*/               @P0 BRA `(.L_x_1) ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0050*/              @!P1 BRA `(.L_x_2) ;
        /*0060*/                   EXIT ;
.L_x_3:
        /*0070*/                   BRA `(.L_x_3);
"""


def test_largest_loop_is_the_outermost_and_counts_each_opcode_once_per_pass():
    loop = sass.largest_loop(LISTING)
    assert loop[0] == ".L_x_2:" and "BRA `(.L_x_2)" in loop[-1]
    assert sass.opcode_counts(loop) == {"HMMA": 1, "LDG": 1, "BRA": 2, "BAR": 1}
    no_loop = "        /*0000*/  EXIT ;\n.L_x_0:\n        /*0010*/  BRA `(.L_x_0);"
    assert sass.opcode_counts(sass.largest_loop(no_loop)) == {"EXIT": 1, "BRA": 1}


def _rows(report: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in report.splitlines() if line.startswith("| ") and "_kernel" in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_tiny_slstm_and_mlstm_kernels_have_loops_with_tensor_core_instructions(tmp_path):
    options = ["--kernel", "recurrent--triton", "--shape", "16x8x1x32", "--options"]
    slstm = _rows(sass.main([*options, "resident=1"]))
    assert set(slstm) == {"slstm_fw_resident_kernel", "slstm_bw_resident_kernel", "slstm_dr_kernel"}
    followed = _rows(sass.main([*options, "resident=1,follow_dr=1"]))
    # (the forward, compiled by the first run, comes from the process's kernel cache and is not listed again)
    assert "slstm_bw_fused_kernel" in followed and not {"slstm_bw_resident_kernel", "slstm_dr_kernel"} & set(followed)
    assert float(followed["slstm_bw_fused_kernel"][4]) > 0  # tensor-core instructions in its largest loop
    mlstm = _rows(
        sass.main(["--kernel", "chunkwise--triton", "--shape", "1x1x1024x64x64", "--out", str(tmp_path / "m.md")])
    )
    assert "recurrent_fw_kernel" in mlstm and "recurrent_bw_kernel" in mlstm
    for name in ("slstm_fw_resident_kernel", "slstm_bw_resident_kernel"):
        registers, _, shared_kib, instructions, mma = map(float, slstm[name][:5])
        assert registers > 0 and shared_kib > 0 and instructions > 0 and mma > 0, (name, slstm[name])
    assert float(mlstm["recurrent_fw_kernel"][4]) > 0 and (tmp_path / "m.md").exists()


def test_slstm_backward_sums_its_collected_parts_inside_each_warp():
    """The backward's collect reads its (BLOCK_B, parts, COLS) tile of int32 words in vectors of a
    thread's share of a (BLOCK_B, COLS) tile, so Triton keeps the parts axis inside each thread and the
    sum over parts needs no block barrier: 13 per step at the 350m and 1.3b sLSTM shapes (split 16,
    bf16). With 4-word vectors at the 350m shape the parts axis spreads over two warps: 42."""
    for shape in ("16x2048x4x256", "16x2048x4x512"):
        rows = _rows(sass.main(["--kernel", "recurrent--triton", "--shape", shape, "--options", "split=16,resident=1"]))
        barriers = float(rows["slstm_bw_resident_kernel"][6])
        assert barriers <= 16, (shape, rows["slstm_bw_resident_kernel"])
