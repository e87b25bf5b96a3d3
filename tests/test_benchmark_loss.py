"""benchmarks/loss.py runs on CPU at a tiny size: both forms of the chunked loss hold positive times and
the same loss (fp32 sums in another order: 1e-5 relative)."""

from benchmarks import loss as bench


def test_tiny_benchmark_times_both_forms(tmp_path):
    out = tmp_path / "loss.md"
    report = bench.main(["--preset", "tiny", "--shape", "2x40", "--chunk", "16", "--steps", "2", "--out", str(out)])
    assert out.read_text() == report
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in report.splitlines() if line.startswith("| cap")]
    assert [row[0] for row in rows] == list(bench.FORMS)
    assert all(float(row[4]) > 0 for row in rows), rows
    capped_head, cap_in_loss = (float(row[5]) for row in rows)
    assert abs(capped_head - cap_in_loss) <= 1e-5 * abs(capped_head), rows
