"""``benchmarks/step_cotangents.py`` runs end to end through Triton's interpreter at a tiny shape: a row per
variant (XLA, the kernel's defaults, each block choice), each with a positive time, and every kernel
variant agreeing with XLA's formulas to 1e-5 (max |difference| / max |value|; fp32 sums of bf16 products
over 32 values, measured about 1e-7). The times are CPU timings, not results.

Run in their own process: ``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/triton_interpret``.
"""

from benchmarks import step_cotangents


def test_every_variant_is_timed_and_agrees_with_xla(tmp_path):
    out = tmp_path / "step1.md"
    assert step_cotangents.main(["--shape", "1x2x32x32", "--reps", "1", "--out", str(out)]) == 0
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 2 + len(step_cotangents.BLOCKS), rows
    assert rows[0][0].strip() == "XLA (jnp formulas)"
    for label, ms, _, _, error in rows:
        assert float(ms) > 0, label
        assert float(error) <= 1e-5, (label, error)
