"""benchmarks/slstm.py runs on CPU at its tiny size: the scan's kernel and layer rows, both training steps
and both decoding rows hold positive times; rows that need a GPU (the Triton kernel, each kernel alone)
hold their error."""

from benchmarks import slstm as bench


def _rows(report: str, first_cell: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in report.splitlines()
        if line.startswith(f"| {first_cell}")
    ]


def test_tiny_benchmark_writes_every_section(tmp_path):
    out = tmp_path / "slstm.md"
    report = bench.main(["--tiny", "--skip", "decode", "--out", str(out)])
    assert out.read_text() == report
    for what in ("kernel", "layer"):
        scan = [row for row in _rows(report, what) if row[1] == "recurrent--jax"]
        assert [row[2] for row in scan] == ["fw", "fwbw"]
        assert all(float(row[3]) > 0 for row in scan), scan
    steps = _rows(report, "tiny")
    assert [row[0] for row in steps] == ["tiny-mlstm", "tiny"]
    assert all(float(row[2]) > 0 and not row[5] for row in steps), steps
    for row in steps:  # tokens/s (in thousands, one decimal) is B x S tokens per step time
        tokens_per_s = bench.TINY["B"] * bench.TINY["S"] / (float(row[2]) / 1e3)
        assert abs(float(row[3].removesuffix("k")) * 1e3 - tokens_per_s) <= 0.05e3 + 1e-3 * tokens_per_s, row
    (parts,) = [line for line in report.splitlines() if "| all |" in line]
    assert "failed" in parts


def test_training_steps_take_the_loss_chunk():
    report = bench.main(["--tiny", "--skip", "kernel,layer,parts,decode", "--loss-chunk", "8"])
    assert "AdamW, loss chunk 8)" in report
    steps = _rows(report, "tiny")
    assert [row[0] for row in steps] == ["tiny-mlstm", "tiny"]
    assert all(float(row[2]) > 0 and not row[5] for row in steps), steps


def test_decode_rows_time_a_call_and_a_scanned_step():
    report = bench.main(["--tiny", "--skip", "kernel,layer,parts,train"])
    rows = _rows(report, "sLSTM") + _rows(report, "mLSTM")
    assert [row[0] for row in rows] == ["sLSTM", "mLSTM"]
    for row in rows:
        assert not row[6], row
        assert float(row[3]) > 0 and float(row[4]) > 0, row
        assert int(row[5]) >= 1, row  # the scan's loop body launches at least the step's own work
