"""``xlstm-flax convert`` (HF -> run -> HF, bit for bit) and ``xlstm-flax generate --hf`` (token ids, or
text through the checkpoint's tokenizer.json)."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from xlstm_flax.cli import main

from ..train.test_data import _word_level_tokenizer
from .conftest import FIXTURE_DIR, copy_fixture, reference


def test_convert_hf_to_run_and_back_is_bit_identical(tmp_path, capsys):
    source = FIXTURE_DIR / "bias_w20_v60"
    assert main(["convert", str(source), str(tmp_path / "run")]) == 0
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert "(step 0) -> HF checkpoint" in capsys.readouterr().out
    before, after = load_file(str(source / "model.safetensors")), load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert main(["convert", str(source), str(tmp_path / "run")]) == 1  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_generate_hf_greedy_token_ids(capsys):
    ref = reference("h96_qk48_sharded")
    prompt = ",".join(str(int(i)) for i in ref["prompt"][0])
    new = ref["greedy"].shape[1] - ref["prompt"].shape[1]
    argv = [
        "generate",
        "--hf",
        str(FIXTURE_DIR / "h96_qk48_sharded"),
        "--prompt-ids",
        prompt,
        "--tokens",
        str(new),
        "--temperature",
        "0",
    ]
    assert main(argv) == 0
    printed = [int(t) for t in capsys.readouterr().out.split()]
    assert printed == [int(t) for t in ref["greedy"][0]]


def test_generate_hf_uses_its_tokenizer_json(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    directory = copy_fixture("tied_h64", tmp_path)
    assert main(["generate", "--hf", str(directory), "--prompt", "w1 w2", "--tokens", "4"]) == 1
    assert "has no tokenizer.json: pass the prompt as --prompt-ids" in capsys.readouterr().err
    words = [f"w{i}" for i in range(48)]  # 2 + 48 ids = the fixture's vocabulary of 50
    _word_level_tokenizer(directory / "tokenizer.json", words)
    assert main(["generate", "--hf", str(directory), "--prompt", "w1 w2", "--tokens", "4", "--temperature", "0"]) == 0
    text = capsys.readouterr().out.split()
    assert text[:2] == ["w1", "w2"] and len(text) >= 4 and set(text) <= set(words) | {"<unk>", "<|endoftext|>"}
