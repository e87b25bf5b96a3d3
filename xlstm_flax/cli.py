"""Command line: ``xlstm-flax train --config FILE [key=value ...]``,
``xlstm-flax generate (--run-dir DIR | --hf DIR) [--prompt TEXT | --prompt-ids 1,2,3]`` and
``xlstm-flax convert SOURCE DEST`` (HF checkpoint dir -> run dir, or run dir -> HF dir); also
``python -m xlstm_flax ...``.

The top of the package: the library never imports this module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlstm-flax", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a YAML recipe")
    train.add_argument("--config", required=True, help="recipe YAML, e.g. configs/train_tiny.yaml")
    train.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides parsed as YAML, e.g. optim.lr=1e-3 train.steps=100",
    )

    gen = commands.add_parser("generate", help="sample text from a run's checkpoint or an HF checkpoint")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", help="run directory written by `train`")
    source.add_argument("--hf", metavar="DIR", help="HF xLSTMForCausalLM directory (its tokenizer.json if any)")
    gen.add_argument("--prompt", default="def ")
    gen.add_argument(
        "--prompt-ids",
        default=None,
        help="comma-separated token ids instead of --prompt; prints token ids (for checkpoints without tokenizer.json)",
    )
    gen.add_argument("--dtype", default=None, help="--hf: parameter dtype (float32, bfloat16)")
    gen.add_argument("--tokens", type=int, default=200, help="new tokens to generate")
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep this probability mass")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")

    convert = commands.add_parser("convert", help="HF checkpoint dir -> new run dir, or run dir -> new HF dir")
    convert.add_argument("source", help="HF directory (config.json) or run directory (config.yaml)")
    convert.add_argument("dest", help="new directory to write (must not exist)")
    convert.add_argument("--step", type=int, default=None, help="run -> HF: checkpoint step (default: latest)")
    convert.add_argument("--dtype", default=None, help="stored / loaded parameter dtype (default: unchanged)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError
    from .convert import CheckpointError, HFConfigError
    from .train.data import DataError
    from .train.loop import NonFiniteLossError

    commands = {"train": run_train, "generate": run_generate, "convert": run_convert}
    try:
        return commands[args.command](args)
    except (
        ConfigError,
        DataError,
        NonFiniteLossError,
        CheckpointError,
        HFConfigError,
        FileNotFoundError,
        FileExistsError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def run_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .train.loop import train
    from .train.recipe import load_recipe
    # several processes (JAX_COORDINATOR_ADDRESS, ...) meet before the recipe's kernel check touches a device
    distributed.initialize(distributed.DistributedConfig())
    result = train(load_recipe(args.config, args.overrides))
    return 130 if result.interrupted else 0


def run_generate(args: argparse.Namespace) -> int:
    from .inference import sample_text

    model, tokenizer = _generation_model(args)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if args.prompt_ids is not None:
        import jax
        import jax.numpy as jnp

        from .sampling import generate

        prompt = jnp.asarray([[int(i) for i in args.prompt_ids.split(",")]], jnp.int32)
        out = generate(model, prompt, args.tokens, key=jax.random.key(args.seed), **sampling)
        print(" ".join(str(int(i)) for i in (*prompt[0], *out.tokens[0])))
    elif tokenizer is None:
        raise FileNotFoundError(f"{args.hf} has no tokenizer.json: pass the prompt as --prompt-ids")
    else:
        print(args.prompt, end="", flush=True)  # then the text as it is generated (stops after an EOS)
        write = lambda piece: print(piece, end="", flush=True)  # noqa: E731
        sample_text(model, tokenizer, args.prompt, args.tokens, seed=args.seed, on_text=write, **sampling)
        print()
    return 0


def _generation_model(args: argparse.Namespace):
    """(model, tokenizer or None) of ``--hf`` or ``--run-dir``."""
    if args.hf:
        from .convert import load_hf
        from .convert.runs import hf_tokenizer

        model, _ = load_hf(args.hf, dtype=args.dtype)
        print(f"# {args.hf} (HF checkpoint)", file=sys.stderr)
        return model, hf_tokenizer(args.hf)
    from .inference import load_trained_model
    from .train.data import make_tokenizer

    model, config, step = load_trained_model(args.run_dir, args.step)
    print(f"# {args.run_dir}, step {step}", file=sys.stderr)
    return model, make_tokenizer(config.data)


def run_convert(args: argparse.Namespace) -> int:
    from .convert.runs import hf_to_run, is_hf_dir, run_to_hf

    if is_hf_dir(args.source):
        print(f"HF checkpoint {args.source} -> run directory {hf_to_run(args.source, args.dest, dtype=args.dtype)}")
    else:
        dest, step = run_to_hf(args.source, args.dest, step=args.step, dtype=args.dtype)
        print(f"run {args.source} (step {step}) -> HF checkpoint {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
