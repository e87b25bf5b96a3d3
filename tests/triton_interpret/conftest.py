"""Triton-interpreter tests: numerics of the Triton kernels on the CPU.

They need ``TRITON_INTERPRET=1`` before any kernel is defined, hence their own pytest process:
``TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/triton_interpret``.
"""

import os

import pytest

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

if INTERPRETING:
    from tests.triton_interpret import harness

    harness.install()


def pytest_collection_modifyitems(config, items):
    if INTERPRETING:
        return
    skip = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 in its own pytest process")
    for item in items:
        if "triton_interpret" in str(item.fspath):
            item.add_marker(skip)


def pytest_configure(config):
    # The interpreter itself converts 1-element arrays to ints (numpy deprecation), not our code.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:triton.runtime.interpreter")
