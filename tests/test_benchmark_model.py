"""benchmarks/model.py runs on CPU at a tiny size (train, prefill both ways, decode) and writes a markdown
table with one row per measurement and positive numbers; its kernel count reads an HLO while body; its
``--remat [POLICY]`` sets the model's remat policy."""

import pytest

from benchmarks import model as bench

HLO = """HloModule m

%fused_computation (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %e = f32[4]{0} exponential(%p)
}

%greedy (a: f32[4]) -> s32[] {
  %a = f32[4]{0} parameter(0)
  ROOT %r = s32[] custom-call(%a), custom_call_target="argmax"
}

%draw (a: f32[4]) -> s32[] {
  %a = f32[4]{0} parameter(0)
  %f = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_computation
  ROOT %r = s32[] custom-call(%f), custom_call_target="sample"
}

%body (t: (s32[], f32[4])) -> (s32[], f32[4]) {
  %t = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[4]{0} get-tuple-element(%t), index=1
  %f = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_computation
  %d = f32[4]{0} custom-call(%f), custom_call_target="__cublas$gemm"
  %c = s32[] conditional(%i, %d, %d), branch_computations={%greedy, %draw}
  ROOT %o = (s32[], f32[4]{0}) tuple(%c, %d)
}

%cond (t: (s32[], f32[4])) -> pred[] {
  %t = (s32[], f32[4]{0}) parameter(0)
  ROOT %p = pred[] constant(true)
}

ENTRY %main (x: f32[4]) -> (s32[], f32[4]) {
  %x = f32[4]{0} parameter(0)
  %z = s32[] constant(0)
  %t = (s32[], f32[4]{0}) tuple(%z, %x)
  ROOT %w = (s32[], f32[4]{0}) while(%t), condition=%cond, body=%body
}
"""


def test_kernels_per_step_counts_the_loop_body():
    # fusion + gemm + (conditional + its larger branch: fusion + custom-call) = 5
    assert bench.kernels_per_step(HLO) == 5


def test_tiny_run_writes_the_table(tmp_path, monkeypatch):
    out = tmp_path / "results" / "tiny.md"
    args = "--preset tiny --num-blocks 1 --train --prefill --full-logits --decode --shapes 2x16"
    args += f" --decode-batches 2 --new-tokens 256 --prompt-len 4 --steps 3 --warmup 1 --loss-chunks 0,8 --out {out}"
    args += f" --profile {tmp_path / 'profile'}"
    monkeypatch.setattr("sys.argv", ["benchmarks/model.py", *args.split()])  # the command the report names
    bench.main()
    text = out.read_text()
    assert "- card: cpu" in text and "jax " in text and "flax " in text and "--preset tiny" in text
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "mode":
            rows[cells[0]] = dict(zip(bench.COLUMNS, cells))
    train_modes = {"train, whole-sequence loss", "train, loss chunk 8"}
    assert set(rows) == {*train_modes, "prefill (last logit)", "prefill (full logits)", "decode"}
    for mode, row in rows.items():
        for column in ("trace s", "lower s", "compile s", "ms", "tokens/s", "peak GiB"):
            assert float(row[column]) > 0, (mode, column, row[column])
    assert all(rows[mode]["S"] == "16" for mode in train_modes) and rows["decode"]["S"] == "4+256"
    assert float(rows["decode"]["weight GB/s"]) > 0 and int(rows["decode"]["kernels/step"]) > 0
    # --profile traced every training row and the decode (a CPU trace has no device kernels to break down)
    assert text.count("no device kernels in the trace") == 3
    traces = {p.relative_to(tmp_path / "profile").parts[0] for p in (tmp_path / "profile").glob("*/plugins/profile/*/")}
    assert traces == {"train_2x16_loss_chunk_0", "train_2x16_loss_chunk_8", "decode_2"}


@pytest.mark.parametrize(
    "flags, policy", [([], None), (["--remat"], "full"), (["--remat", "save_matmuls"], "save_matmuls")]
)
def test_remat_flag_sets_the_model_policy(flags, policy):
    config = bench.model_config(bench.parse_args(["--preset", "tiny", "--train", *flags]), "float32")
    assert (config.remat, config.remat_policy) == ((True, policy) if policy else (False, "full"))
