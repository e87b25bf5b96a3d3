"""Command line: ``xlstm-flax train --config FILE [key=value ...]`` and
``xlstm-flax generate --run-dir DIR [--prompt TEXT]`` (also ``python -m xlstm_flax ...``).

Every argument is checked before anything is loaded: a bad one gives one ``error:`` line and exit code 2
(1 for a problem found in the config, data or run directory) and writes nothing. An interrupted
training run exits with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM).

The top of the package: the library never imports this module."""
from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Callable, Sequence

DESCRIPTION = ("xLSTM language models in JAX / Flax: train one from a YAML recipe, or sample text from a "
               "trained run.")
USAGE_ERROR, RUN_ERROR = 2, 1


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one ``error:`` line (exit code 2)."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)  # argparse turns a ValueError into "invalid int value"
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


_non_negative_float.__name__ = "float"


def _utf8_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as lone surrogates
        raise argparse.ArgumentTypeError(f"is not valid UTF-8 text: {text!r}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xlstm-flax", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a YAML recipe", description=(
        "Train from a YAML recipe. A run_dir that holds a run needs resume=true (continue it with the same "
        "config) or overwrite=true (replace it once the new run has started)."))
    train.add_argument("--config", required=True, help="recipe YAML, e.g. configs/train_tiny.yaml")
    train.add_argument("overrides", nargs="*", metavar="key=value", type=_utf8_text,
                       help="dotted overrides parsed as YAML, e.g. optim.lr=1e-3 train.steps=100")

    gen = commands.add_parser("generate", help="sample text from a run's checkpoint", description=(
        "Sample text from the newest checkpoint of a run that restores (or --step)."))
    gen.add_argument("--run-dir", required=True, help="run directory written by `train`")
    gen.add_argument("--prompt", default="def ", type=_utf8_text)
    gen.add_argument("--tokens", type=_int_at_least(0), default=200, help="new tokens to generate")
    gen.add_argument("--temperature", type=_non_negative_float, default=0.8, help="0: greedy")
    gen.add_argument("--top-k", type=_int_at_least(1), default=None, help="sample among the k likeliest tokens")
    gen.add_argument("--seed", type=_int_at_least(0), default=0)
    gen.add_argument("--step", type=_int_at_least(0), default=None, help="checkpoint step (default: newest)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError
    from .train.checkpoint import CheckpointRestoreError
    from .train.data import DataError
    from .train.loop import NonFiniteLossError
    try:
        if args.command == "train":
            return run_train(args)
        return run_generate(args)
    except (ConfigError, DataError, NonFiniteLossError, CheckpointRestoreError, OSError) as err:
        print(f"error: {str(err).replace(chr(10), ' ')}", file=sys.stderr)
        return RUN_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def run_train(args: argparse.Namespace) -> int:
    from .train.loop import train
    from .train.recipe import load_recipe
    result = train(load_recipe(args.config, args.overrides))
    if result.stopped_by in signal.Signals.__members__:
        return 128 + signal.Signals[result.stopped_by]
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .inference import load_run_config, load_trained_model, sample_text
    from .train.data import make_tokenizer
    config = load_run_config(args.run_dir)
    if args.top_k is not None and args.top_k > config.model.vocab_size:
        raise ConfigError(f"--top-k {args.top_k} exceeds the model's vocabulary of {config.model.vocab_size} tokens")
    tokenizer = make_tokenizer(config.data)
    model, _, step = load_trained_model(args.run_dir, args.step)
    print(f"# {args.run_dir}, step {step}", file=sys.stderr)
    print(sample_text(model, tokenizer, args.prompt, args.tokens, seed=args.seed, temperature=args.temperature,
                      top_k=args.top_k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
