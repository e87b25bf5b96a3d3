"""benchmarks/states_tma.py (the TMA chunk-state walk experiment) still lowers for CUDA on this CPU machine:
all ten variants, at its tiny shape, in a process of its own (the script patches jax-triton at import)."""

import os
import pathlib
import subprocess
import sys

from tests.kernels.lowering import skip_module_unless_lowerable

skip_module_unless_lowerable()

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_variant_lowers_for_cuda():
    env = dict(os.environ, TINY="1", LOWER="1", JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "states_tma.py")], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lowered = [line for line in run.stdout.splitlines() if " lowered: " in line]
    assert len(lowered) == 10, run.stdout
