"""Write the Hugging Face xLSTM test fixtures: tiny random ``xLSTMForCausalLM`` checkpoints made by
transformers itself, with reference logits and greedy continuations computed by HF in float32.

Needs torch + transformers (5.x, with ``xLSTMForCausalLM``); the test suite only reads the output.

    python scripts/make_hf_fixtures.py [--out tests/fixtures/hf]

Per fixture NAME: ``NAME/`` (``save_pretrained``: config.json + safetensors, one fixture sharded) and
``NAME.reference.safetensors`` with ``tokens_S`` int64 (2, S) and ``logits_S`` float32 (2, S, V) for
S = 32 and 37 (no multiple of 16), and ``prompt`` (2, 5) / ``greedy`` (2, 5 + 8) int64.

HF runs in its pure-torch kernels in "inference" mode (any S: chunks of 64/32/16, then the
recurrent kernel), without its cache (its cache is sized from widths rounded to 64, which fails for
the narrow widths here), so the greedy continuation recomputes the whole sequence for each token.
Every parameter is perturbed so that no init symmetry (zero gate weights, unit norms) hides a wrong
mapping. ``weight_mode="fused"`` is not made: transformers cannot initialise such a model (its init
slices the fused gate bias with mismatched shapes); the script checks that this is still so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import xLSTMConfig, xLSTMForCausalLM

LENGTHS = (32, 37)
PROMPT_LEN, NEW_TOKENS = 5, 8
RUNTIME = dict(
    mode="inference",
    chunk_size=16,
    autocast_kernel_dtype="float32",
    inference_state_dtype="float32",
    chunkwise_kernel="chunkwise--native_autograd",
    sequence_kernel="native_sequence__native",
    step_kernel="native",
    return_last_states=True,
)

# name -> (HF config fields, save_pretrained max_shard_size or None)
FIXTURES = {
    # tied flag, 2 heads, 2 blocks, qk width 32 (not a multiple of 64)
    "tied_h64": (dict(vocab_size=50, hidden_size=64, num_blocks=2, num_heads=2, tie_word_embeddings=True), None),
    # hidden 96, qk factor 0.5 -> 48-wide q/k; FFN 96 * 0.667 -> 64 under HF's rounding; sharded files
    "h96_qk48_sharded": (
        dict(
            vocab_size=64, hidden_size=96, num_blocks=3, num_heads=4, ffn_proj_factor=0.667, tie_word_embeddings=False
        ),
        "100KB",
    ),
    # widths 20 and 60, biases everywhere (incl. norms), other caps and eps, 4 blocks
    "bias_w20_v60": (
        dict(
            vocab_size=48,
            hidden_size=40,
            num_blocks=4,
            num_heads=4,
            qk_dim_factor=0.5,
            v_dim_factor=1.5,
            use_bias=True,
            ffn_proj_factor=2.0,
            ffn_round_up_to_multiple_of=16,
            gate_soft_cap=5.0,
            output_logit_soft_cap=12.0,
            norm_eps=1e-5,
            eps=1e-4,
            tie_word_embeddings=False,
        ),
        None,
    ),
    # byte-level vocabulary (258): the README's fine-tuning example trains it on text
    "bytes_h64": (dict(vocab_size=258, hidden_size=64, num_blocks=2, num_heads=2, tie_word_embeddings=False), None),
}


def perturb(model: xLSTMForCausalLM, generator: torch.Generator) -> None:
    """Adds N(0, 0.1^2) to every parameter; input-gate biases move from -10 to around 0 so the gates
    matter, norm weights and biases get visible spread."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "igate_preact.bias" in name:
                param.add_(10.0 + noise)
            else:
                param.add_(0.1 * noise)


def greedy(model: xLSTMForCausalLM, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation by full recomputation (no cache): int64 (B, S0 + new_tokens)."""
    tokens = prompt
    for _ in range(new_tokens):
        logits = model(tokens, use_cache=False).logits
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


def check_fused_still_unsupported() -> str:
    try:
        xLSTMForCausalLM(xLSTMConfig(vocab_size=16, hidden_size=64, num_blocks=1, num_heads=2, weight_mode="fused"))
    except Exception as err:  # noqa: BLE001 - any failure means HF cannot build it
        return f"weight_mode='fused' cannot be initialised by transformers: {type(err).__name__}: {err}"
    return "weight_mode='fused' initialises now: consider adding a fused fixture"


def make_fixture(out: Path, name: str, fields: dict, shard_size: str | None, seed: int) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = xLSTMForCausalLM(xLSTMConfig(**fields, **RUNTIME)).float().eval()
    perturb(model, generator)
    directory = out / name
    kwargs = {} if shard_size is None else {"max_shard_size": shard_size}
    model.save_pretrained(directory, **kwargs)
    vocab = fields["vocab_size"]
    reference = {}
    with torch.no_grad():
        for length in LENGTHS:
            tokens = torch.randint(0, vocab, (2, length), generator=generator)
            reference[f"tokens_{length}"] = tokens
            reference[f"logits_{length}"] = model(tokens, use_cache=False).logits.float()
        prompt = torch.randint(0, vocab, (2, PROMPT_LEN), generator=generator)
        reference["prompt"] = prompt
        reference["greedy"] = greedy(model, prompt, NEW_TOKENS)
    save_file({k: v.contiguous() for k, v in reference.items()}, out / f"{name}.reference.safetensors")
    size = sum(f.stat().st_size for f in directory.iterdir())
    print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, {size / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/hf")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for seed, (name, (fields, shard_size)) in enumerate(FIXTURES.items()):
        make_fixture(args.out, name, fields, shard_size, seed)
    print(check_fused_still_unsupported())


if __name__ == "__main__":
    main()
