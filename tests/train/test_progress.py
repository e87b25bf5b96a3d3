"""Log records emitted while the progress bar is shown (the kernel fallback warning, say) are printed
above the bar through ``tqdm.write``, not into the bar's line."""

import logging

from tests.train.test_train import CHEAP
from xlstm_flax.train import load_recipe, loop, train


def test_warnings_during_training_go_through_tqdm_write(recipe, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(loop.tqdm, "write", lambda message, file=None, **kwargs: written.append(message))
    sample = loop.sample_windows

    def warn_at_step_1(streams, length, num, key, rows=slice(None)):
        if key[1] == loop.TRAIN_SPLIT and key[2] == 1:
            logging.getLogger("xlstm_flax.kernels.registry").warning("kernel 'auto': falling back")
        return sample(streams, length, num, key, rows)

    monkeypatch.setattr(loop, "sample_windows", warn_at_step_1)
    train(load_recipe(recipe, [f"run_dir={tmp_path}", *CHEAP]), stop_at=1, log=lambda message: None)
    assert any("kernel 'auto': falling back" in message for message in written), written
