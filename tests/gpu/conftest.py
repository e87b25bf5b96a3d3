"""GPU tests under pytest-xdist (``-n 4``): JAX preallocates 75 % of the GPU's memory in every process by
default, so a second worker cannot allocate at all; each worker gets a fifth of the memory instead."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.2")
