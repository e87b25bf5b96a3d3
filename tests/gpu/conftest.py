"""GPU tests under pytest-xdist (``-n N``): JAX preallocates 75 % of the GPU's memory in every process by
default, so a second worker cannot allocate at all; the workers share 90 % of it instead."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "4"))
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / workers:.3f}")
