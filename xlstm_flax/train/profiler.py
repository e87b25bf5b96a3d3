"""A ``jax.profiler`` trace of chosen training steps (``train.profile_steps: [first, last]``), written to
``<run_dir>/profile`` (open it with TensorBoard's profile plugin or Perfetto)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

PROFILE_DIR = "profile"  # inside a run directory


class StepProfiler:
    """Starts a trace before step ``first`` runs and stops it once step ``last`` has finished on the device;
    ``steps`` None: does nothing."""

    def __init__(self, steps: tuple[int, ...] | None, directory: Path):
        self._steps, self._directory = steps, directory
        self._active = False

    def before(self, step: int) -> None:
        if self._steps and step == self._steps[0]:
            jax.profiler.start_trace(str(self._directory))
            self._active = True

    def after(self, step: int, outputs: Any) -> None:
        """``outputs``: what step ``step`` returned (waited for before the trace stops)."""
        if self._active and step == self._steps[1]:
            jax.block_until_ready(outputs)
            self.close()

    def close(self) -> None:
        """Stop a trace still running (a run that ended inside the profiled steps)."""
        if self._active:
            self._active = False
            jax.profiler.stop_trace()
