"""Command line: ``xlstm-flax train --config FILE [key=value ...]``,
``xlstm-flax generate (--run-dir DIR | --hf DIR) [--prompt TEXT | --prompt-ids 1,2,3]`` and
``xlstm-flax convert SOURCE DEST`` (HF checkpoint dir -> run dir, or run dir -> HF dir); also
``python -m xlstm_flax ...``.

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
from pathlib import Path

DESCRIPTION = (
    "xLSTM language models in JAX / Flax: train one from a YAML recipe, convert a Hugging Face checkpoint, or "
    "sample text from one or from a trained run."
)
USAGE_ERROR, RUN_ERROR = 2, 1
OUT_OF_MEMORY = "RESOURCE_EXHAUSTED"  # the status of an XLA allocation that failed
DTYPE_CHOICES = ("float32", "bfloat16", "float16")  # model_config.DTYPES (not imported: --help stays fast)


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


def _probability(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0 < value <= 1):
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


_probability.__name__ = "float"


def _token_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated token ids, e.g. 1,2,3, got {text!r}") from None
    if any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError(f"token ids must be >= 0, got {text!r}")
    return ids


_token_ids.__name__ = "token ids"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xlstm-flax", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train a model from a YAML recipe",
        description=(
            "Train from a YAML recipe. A run_dir that holds a run needs resume=true (continue it with the same "
            "config) or overwrite=true (replace it once the new run has a complete checkpoint)."
        ),
    )
    train.add_argument("--config", required=True, help="recipe YAML, e.g. configs/train_tiny.yaml")
    train.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        type=_utf8_text,
        help="dotted overrides parsed as YAML, e.g. optim.lr=1e-3 train.steps=100",
    )

    gen = commands.add_parser(
        "generate",
        help="sample text from a run's checkpoint or an HF checkpoint",
        description=(
            "Sample text from the newest checkpoint of a run that restores (or --step), or from an HF "
            "xLSTMForCausalLM directory (--hf)."
        ),
    )
    source = gen.add_mutually_exclusive_group()  # one of them is required: checked in main (one error line)
    source.add_argument("--run-dir", help="run directory written by `train`")
    source.add_argument("--hf", metavar="DIR", help="HF xLSTMForCausalLM directory (its tokenizer.json if any)")
    gen.add_argument("--prompt", default="def ", type=_utf8_text)
    gen.add_argument(
        "--prompt-ids",
        default=None,
        type=_token_ids,
        help=(
            "comma-separated token ids instead of --prompt; prints token ids (for checkpoints without tokenizer.json)"
        ),
    )
    gen.add_argument(
        "--dtype", default=None, choices=DTYPE_CHOICES, help="parameter and compute dtype (default: the checkpoint's)"
    )
    gen.add_argument("--tokens", type=_int_at_least(0), default=200, help="new tokens to generate")
    gen.add_argument("--temperature", type=_non_negative_float, default=0.8, help="0: greedy")
    gen.add_argument("--top-k", type=_int_at_least(1), default=None, help="sample among the k likeliest tokens")
    gen.add_argument("--top-p", type=_probability, default=None, help="nucleus sampling: keep this probability mass")
    gen.add_argument("--seed", type=_int_at_least(0), default=0)
    gen.add_argument("--step", type=_int_at_least(0), default=None, help="checkpoint step (default: newest)")

    convert = commands.add_parser("convert", help="HF checkpoint dir -> new run dir, or run dir -> new HF dir")
    convert.add_argument("source", help="HF directory (config.json) or run directory (config.yaml)")
    convert.add_argument("dest", help="new directory to write (must not exist)")
    convert.add_argument(
        "--step", type=_int_at_least(0), default=None, help="run -> HF: checkpoint step (default: newest)"
    )
    convert.add_argument(
        "--dtype", default=None, choices=DTYPE_CHOICES, help="stored / loaded parameter dtype (default: unchanged)"
    )
    for command_parser in commands.choices.values():
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command's own parser: "xlstm-flax train: unrecognized arguments"
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "generate":
        _check_generate_source(parser, args)
    import jax

    from .config import ConfigError
    from .convert import CheckpointError, HFConfigError
    from .train.checkpoint import CheckpointRestoreError
    from .train.data import DataError
    from .train.loop import NonFiniteLossError

    commands = {"train": run_train, "generate": run_generate, "convert": run_convert}
    try:
        return commands[args.command](args)
    except (
        ConfigError,
        DataError,
        NonFiniteLossError,
        CheckpointRestoreError,
        CheckpointError,
        HFConfigError,
        OSError,
    ) as err:
        print(f"error: {str(err).replace(chr(10), ' ')}", file=sys.stderr)
        return RUN_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except jax.errors.JaxRuntimeError as err:
        message = str(err).splitlines()[0]
        if not message.startswith(OUT_OF_MEMORY):
            raise
        print(f"error: out of memory: {message}", file=sys.stderr)
        return RUN_ERROR


def run_train(args: argparse.Namespace) -> int:
    from . import distributed
    from .train.loop import train
    from .train.recipe import load_recipe

    # several processes (JAX_COORDINATOR_ADDRESS, ...) meet before the recipe's kernel check touches a device
    distributed.initialize(distributed.DistributedConfig())
    result = train(load_recipe(args.config, args.overrides))
    if result.stopped_by in signal.Signals.__members__:
        return 128 + signal.Signals[result.stopped_by]
    return 0


def _check_generate_source(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """generate's source options: exactly one of --run-dir / --hf, and the options of the other one refused
    (usage errors, exit 2)."""
    gen = _Parser(prog=f"{parser.prog} generate")  # its error(): the subcommand's one-line usage error
    if args.run_dir is None and args.hf is None:
        gen.error("the following arguments are required: --run-dir (or --hf DIR)")
    if args.hf is not None and args.step is not None:
        gen.error("argument --step: only with --run-dir (an HF directory holds one checkpoint)")


def run_generate(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .inference import load_run_config, sample_text
    from .sampling import MAX_NEW_TOKENS

    if args.tokens > MAX_NEW_TOKENS:
        raise ConfigError(f"--tokens {args.tokens} exceeds {MAX_NEW_TOKENS} (positions are counted in int32)")
    run_config = None if args.hf else load_run_config(args.run_dir)  # read once, before the weights load
    vocab_size = _hf_vocab_size(args.hf) if args.hf else run_config.model.vocab_size
    if args.top_k is not None and args.top_k > vocab_size:
        raise ConfigError(f"--top-k {args.top_k} exceeds the model's vocabulary of {vocab_size} tokens")
    if args.prompt_ids is not None and max(args.prompt_ids) >= vocab_size:
        raise ConfigError(
            f"--prompt-ids: token id {max(args.prompt_ids)} is outside the model's vocabulary of {vocab_size} tokens"
        )
    if args.prompt_ids is None and args.hf is not None:
        from .convert.runs import TOKENIZER_FILE

        if not (Path(args.hf) / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(f"{args.hf} has no tokenizer.json: pass the prompt as --prompt-ids")
    model, tokenizer = _generation_model(args, run_config)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if args.prompt_ids is not None:
        import jax
        import jax.numpy as jnp

        from .sampling import generate

        prompt = jnp.asarray([args.prompt_ids], jnp.int32)
        out = generate(model, prompt, args.tokens, key=jax.random.key(args.seed), **sampling)
        print(" ".join(str(int(i)) for i in (*prompt[0], *out.tokens[0])))
    elif tokenizer is None:
        raise FileNotFoundError(f"{args.hf} has no tokenizer.json: pass the prompt as --prompt-ids")
    else:
        print(args.prompt, end="", flush=True)  # then the text as it is generated (stops after an EOS)
        write = lambda piece: print(piece, end="", flush=True)  # noqa: E731
        try:
            sample_text(model, tokenizer, args.prompt, args.tokens, seed=args.seed, on_text=write, **sampling)
        finally:  # the text's line ends, also before an error line
            print(flush=True)
    return 0


def _hf_vocab_size(hf_dir: str) -> int:
    """The vocabulary size of an HF checkpoint directory from its config alone (nothing else is read)."""
    import json

    from .convert.hf_config import HFConfigError
    from .convert.runs import CONFIG_FILE as HF_CONFIG_FILE

    path = Path(hf_dir) / HF_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{hf_dir} is not an HF checkpoint directory: it has no {HF_CONFIG_FILE}")
    try:
        vocab_size = json.loads(path.read_text()).get("vocab_size")
    except (ValueError, AttributeError) as err:
        raise HFConfigError(f"{path}: not a JSON object ({err})") from None
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise HFConfigError(f"{path}: vocab_size must be an int >= 1, got {vocab_size!r}")
    return vocab_size


def _generation_model(args: argparse.Namespace, run_config):
    """(model, tokenizer or None) of ``--hf`` or ``--run-dir`` (whose loaded ``run_config`` it takes); the
    tokenizer first (its errors come before the weights load)."""
    if args.hf:
        from .convert import load_hf
        from .convert.runs import hf_tokenizer

        tokenizer = hf_tokenizer(args.hf)
        model, _ = load_hf(args.hf, dtype=args.dtype)
        print(f"# {args.hf} (HF checkpoint)", file=sys.stderr)
        return model, tokenizer
    from .inference import load_trained_model
    from .train.data import make_tokenizer

    tokenizer = make_tokenizer(run_config.data)
    model, _, step = load_trained_model(args.run_dir, args.step, config=run_config, dtype=args.dtype)
    print(f"# {args.run_dir}, step {step}", file=sys.stderr)
    return model, tokenizer


def run_convert(args: argparse.Namespace) -> int:
    from .convert.runs import hf_to_run, is_hf_dir, run_to_hf

    if is_hf_dir(args.source):
        if args.step is not None:
            _Parser(prog="xlstm-flax convert").error("argument --step: only for a run directory as SOURCE")
        print(f"HF checkpoint {args.source} -> run directory {hf_to_run(args.source, args.dest, dtype=args.dtype)}")
    else:
        dest, step = run_to_hf(args.source, args.dest, step=args.step, dtype=args.dtype)
        print(f"run {args.source} (step {step}) -> HF checkpoint {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
