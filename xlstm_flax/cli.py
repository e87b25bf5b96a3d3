"""Command line: ``xlstm-flax train --config FILE [key=value ...]`` and
``xlstm-flax generate --run-dir DIR [--prompt TEXT]`` (also ``python -m xlstm_flax ...``).

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

    gen = commands.add_parser("generate", help="sample text from a run's checkpoint")
    gen.add_argument("--run-dir", required=True, help="run directory written by `train`")
    gen.add_argument("--prompt", default="def ")
    gen.add_argument("--tokens", type=int, default=200, help="new tokens to generate")
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep this probability mass")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError
    from .train.data import DataError
    from .train.loop import NonFiniteLossError

    try:
        if args.command == "train":
            return run_train(args)
        return run_generate(args)
    except (ConfigError, DataError, NonFiniteLossError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def run_train(args: argparse.Namespace) -> int:
    from .train.loop import train
    from .train.recipe import load_recipe

    result = train(load_recipe(args.config, args.overrides))
    return 130 if result.interrupted else 0


def run_generate(args: argparse.Namespace) -> int:
    from .inference import load_trained_model, sample_text
    from .train.data import make_tokenizer

    model, config, step = load_trained_model(args.run_dir, args.step)
    print(f"# {args.run_dir}, step {step}", file=sys.stderr)
    print(args.prompt, end="", flush=True)  # then the text as it is generated (stops after an EOS)
    sample_text(
        model,
        make_tokenizer(config.data),
        args.prompt,
        args.tokens,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        on_text=lambda piece: print(piece, end="", flush=True),
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
