"""The small training recipe of tests/train/test_train.py, for the other training test modules."""

import pytest

from tests.train.test_train import RECIPE


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "small.yaml"
    path.write_text(RECIPE)
    return path
