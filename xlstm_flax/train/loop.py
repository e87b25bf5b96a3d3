"""The training loop: one jitted update step (gradient accumulation inside), periodic evaluation,
checkpoints, metrics, a NaN guard, SIGINT/SIGTERM handling and an end-of-run sample.

The host never waits for the device after each step: batches are sampled ahead in a background thread
(:mod:`.prefetch`), the step's loss and gradient norm stay on the device until the log window closes (read
one step later, when the next step is queued), before an evaluation and before a checkpoint, which is then
written in the background (:mod:`.checkpoint`). Only the first step of a session is waited for: the run
directory commits once a step has a finite loss."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .. import distributed, sharding
from ..convert.init_from import check_init_source, init_params_from
from ..flops import peak_flops_per_second, train_flops_per_token
from ..inference import sample_text
from ..memory import refuse_on_every_process, sharded_bytes, shortage
from .checkpoint import Checkpointer
from .compile_cache import RUN, cache_directory, compilation_cache, create_cache_directory
from .data import (
    Corpus,
    Packing,
    check_window_length,
    document_packing,
    document_segment_ids,
    load_corpus,
    sample_windows,
)
from .loss import chunked_cross_entropy
from .memory import advice, step_bytes
from .metrics import LOSS_CURVE_FILE, METRICS_FILE, MetricsWriter, plot_loss_curve
from .optim import OptimConfig, make_optimizer, make_schedule
from .prefetch import Prefetcher
from .profiler import PROFILE_DIR, StepProfiler
from .recipe import RunConfig, TrainConfig
from .run_dir import RESUME, UNRESTORABLE_DIR, RunDirectory, open_run_dir
from .state import init_train_state

TRAIN_SPLIT, VAL_SPLIT = 0, 1  # data keys: (seed, split, index)
LOG_WINDOW = "log_window"  # checkpoint metadata: train losses since the last train record


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stopped without saving the bad state."""


@dataclasses.dataclass
class TrainResult:
    """What a run did: per-step train losses, validation records and the end-of-run outputs."""

    run_dir: Path
    start_step: int
    step: int
    train_losses: dict[int, float]
    val_history: list[dict]
    unigram_entropy: float
    interrupted: bool = False
    stopped_by: str | None = None  # "SIGINT", "SIGTERM" or "stop_at" when interrupted
    seconds: float = 0.0
    loss_curve: Path | None = None
    sample: str | None = None

    @property
    def final_val_loss(self) -> float | None:
        return self.val_history[-1]["loss"] if self.val_history else None


@functools.lru_cache(maxsize=4)
def make_steps(
    graphdef,
    optim: OptimConfig,
    total_steps: int,
    mesh: Mesh,
    packing: Packing | None = None,
    loss_chunk: int | None = None,
):
    """The jitted ``train_step(state, rest, batches)`` and ``eval_step(params, rest, tokens)``; call them
    inside ``jax.set_mesh(mesh)`` so that the recurrence kernels run per device (:mod:`xlstm_flax.sharding`).

    ``batches``: int32 (grad_accum, B, S + 1); each micro-batch's gradient is computed in a
    ``lax.scan`` and their mean drives one optimiser update. ``state`` is donated and comes back
    laid out as :func:`sharding.state_shardings` says. With ``packing`` the model restarts its
    state after every EOS (segment ids from :func:`document_segment_ids`). ``loss_chunk``: positions per
    chunk of the cross-entropy (:func:`chunked_cross_entropy`; None: the whole sequence). Cached, so runs of the
    same model and optimiser in one process (a resumed session, tests) compile once.
    """
    optimizer = make_optimizer(optim, total_steps)

    def loss_fn(params, rest, tokens):
        model = nnx.merge(graphdef, params, rest)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        head, cap = model.uncapped_logits, model.config.logit_soft_cap  # the loss applies the cap itself
        if packing is None:
            return chunked_cross_entropy(head, model.features(inputs), targets, chunk=loss_chunk, soft_cap=cap)
        features = model.features(inputs, segment_ids=document_segment_ids(inputs, packing.eos_id))
        weights = (inputs != packing.eos_id).astype(jnp.float32) if packing.mask_first_target else None
        return chunked_cross_entropy(head, features, targets, weights, loss_chunk, cap)

    def train_step(state, rest, batches):
        params = state["params"]

        def accumulate(grad_sum, tokens):
            loss, grads = jax.value_and_grad(loss_fn)(params, rest, tokens)
            return jax.tree.map(jnp.add, grad_sum, grads), loss

        zeros = jax.tree.map(jnp.zeros_like, params)
        grad_sum, losses = jax.lax.scan(accumulate, zeros, batches)
        grads = jax.tree.map(lambda g: g / batches.shape[0], grad_sum)
        loss = losses.mean()
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state}
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        layout = sharding.state_shardings(graphdef, new_state, rest, mesh)
        return distributed.constrain_state(new_state, layout), metrics

    def eval_step(params, rest, tokens):
        return loss_fn(params, rest, tokens)

    return jax.jit(train_step, donate_argnums=0), jax.jit(eval_step)


def train(config: RunConfig, *, stop_at: int | None = None, log: Callable[[str], None] = tqdm.write) -> TrainResult:
    """Run (or resume) training as ``config`` says; ``stop_at`` ends the session after that step
    with a checkpoint, as SIGINT/SIGTERM do. Raises ``NonFiniteLossError`` on a NaN/inf loss.

    Everything (config, run directory, data, model, checkpoint) is checked before the run directory
    changes, and a start that fails before its first step leaves it as it was (``run_dir`` module)."""
    started = time.perf_counter()
    distributed.initialize(config.distributed)
    main_process = distributed.is_main_process()
    log = log if main_process else _silent
    tc = config.train
    init_kind = check_init_source(tc.init_from, config.model) if tc.init_from else None
    mesh = distributed.make_mesh(config.distributed)
    distributed.check_layout(mesh, tc.batch_size, _head_counts(config))
    rows = distributed.process_rows(mesh, tc.batch_size)
    run = _open_run_dir(config, log, main_process)
    cache_dir = cache_directory(tc.compile_cache, Path(config.run_dir))
    if tc.compile_cache != RUN:  # the user's directory: created, or refused in one line, before any work
        create_cache_directory(cache_dir)

    corpus = load_corpus(config.data, config.model.vocab_size)
    check_window_length(corpus, tc.seq_len + 1, config.data)
    log(_corpus_summary(corpus))
    graphdef, rest, state = init_train_state(config, mesh)
    kernel = _kernel_summary(config)
    log(
        f"model: {_count(state['params']):,} parameters on {mesh.devices.size} {jax.default_backend()} "
        f"device(s) in {jax.process_count()} process(es), mesh {dict(mesh.shape)}; "
        f"{tc.tokens_per_step:,} tokens per step; {_layout(state)}; {kernel}"
    )
    state, start, window, skipped = _resume_point(run, state, log)
    result = TrainResult(run.path, start, start, {}, [], corpus.unigram_entropy())
    if start >= tc.steps:
        log(f"nothing to do: the run in {run.path} has finished step {start} (train.steps={tc.steps})")
        return result
    if start == 0 and tc.init_from:  # a fresh start (nothing resumed) takes its weights from init_from
        params = init_params_from(tc.init_from, init_kind, config.model.num_blocks, state["params"])
        state = {**state, "params": params}
        log(f"parameters from {tc.init_from}; fresh optimiser state, step 0")

    packing = document_packing(config.data, corpus.tokenizer)
    steps = make_steps(graphdef, config.optim, tc.steps, mesh, packing, tc.loss_chunk or None)
    _check_step_memory(steps[0], state, rest, config, mesh, cache_dir)
    train_step, eval_step = (_under_mesh(step, mesh) for step in steps)
    val_batches = [
        distributed.global_batch(
            sample_windows(corpus.val, tc.seq_len + 1, tc.batch_size, (config.seed, VAL_SPLIT, i), rows),
            mesh,
            tc.batch_size,
        )
        for i in range(tc.eval_batches)
    ]
    schedule = make_schedule(config.optim, tc.steps)
    flops = _flops_per_token_and_peak(config, mesh)
    session = run.session(start, skipped, comment=kernel) if main_process else contextlib.nullcontext(run)
    cache = compilation_cache(cache_dir)
    with session, logging_redirect_tqdm(tqdm_class=tqdm), cache:
        distributed.sync("run directory prepared")  # process 0 has laid out the directory
        progress = _Progress(run.path, tc, start, window, *flops) if main_process else None
        checkpointer = Checkpointer(run.checkpoint_dir, config.checkpoint.keep)
        stop_signal = _StopSignal()
        profiler = StepProfiler(tc.profile_steps, run.path / PROFILE_DIR)
        batches = Prefetcher(_train_batches(corpus, tc, config.seed, rows, start))
        pending: list[tuple[int, dict]] = []  # (step, device metrics) not read yet

        def checked(step: int, values: dict) -> tuple[float, float]:
            """``(loss, grad_norm)`` of a step's metrics; a non-finite one stops the run."""
            loss, grad_norm = float(values["loss"]), float(values["grad_norm"])
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise NonFiniteLossError(_non_finite_message(loss, grad_norm, step, checkpointer, run))
            return loss, grad_norm

        def read_pending() -> None:
            """Check and record the queued steps' metrics (one host sync)."""
            for (step, _), values in zip(pending, jax.device_get([out for _, out in pending])):
                loss, grad_norm = checked(step, values)
                result.step, result.train_losses[step] = step, loss
                if progress:
                    progress.train(step, loss, grad_norm, float(schedule(step - 1)))
            pending.clear()

        try:
            for step, micro_batches in batches:
                profiler.before(step)
                state, out = train_step(state, rest, distributed.global_batch(micro_batches, mesh, tc.batch_size, 1))
                profiler.after(step, out)
                if pending and pending[-1][0] % tc.log_every == 0:  # read a log window once the next step is queued
                    read_pending()
                pending.append((step, out))
                if step == start + 1:  # the run commits once its first step has a finite loss
                    checked(step, jax.device_get(out))
                if stop_signal.received and step == start + 1:  # stopped during start-up: undo the start
                    result.interrupted, result.stopped_by = True, stop_signal.received
                    log(f"stopped before the first step finished ({stop_signal.received}); {run.path} is as it was")
                    break
                if main_process:
                    run.commit()
                    run.drop_replaced()  # once the new run has a complete checkpoint
                if step % tc.eval_every == 0 or step == tc.steps:
                    read_pending()
                    values = _evaluate(eval_step, state["params"], rest, val_batches, corpus.byte_level)
                    if progress:
                        progress.metrics.write(step, "val", values)
                    result.val_history.append({"step": step, **values})
                    log(f"step {step}: val " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
                stopping = stop_signal.received or step == stop_at
                if step % config.checkpoint.every == 0 or step == tc.steps or stopping:
                    read_pending()  # a checkpoint holds a state whose every loss was finite
                    meta = {"step": step, "loss": result.train_losses[step]}
                    checkpointer.save(step, state, {**meta, LOG_WINDOW: progress.window if progress else []})
                if stopping:
                    result.interrupted, result.stopped_by = True, stop_signal.received or "stop_at"
                    log(
                        f"stopped after step {step} ({result.stopped_by}); checkpoint saved "
                        f"in {run.checkpoint_dir}; continue with resume=true"
                    )
                    break
        except NonFiniteLossError:
            raise
        except Exception:
            read_pending()  # a failure between steps (data, a save): the steps that finished are still logged
            raise
        finally:
            batches.close()
            profiler.close()
            stop_signal.restore()
            if progress:
                progress.close()
            checkpointer.close()

    result.seconds = time.perf_counter() - started
    if not result.interrupted and main_process:
        result.loss_curve = plot_loss_curve(run.path / METRICS_FILE, run.path / LOSS_CURVE_FILE, result.unigram_entropy)
        log(_final_summary(result))
        if tc.sample_tokens and jax.process_count() > 1:
            log("no end-of-run sample in a multi-process run; use `xlstm-flax generate` on the run directory")
        elif tc.sample_tokens:
            result.sample = sample_text(
                nnx.merge(graphdef, state["params"], rest),
                corpus.tokenizer,
                tc.sample_prompt,
                tc.sample_tokens,
                seed=config.seed,
                temperature=tc.sample_temperature,
                top_k=tc.sample_top_k,
            )
            log(f"sample (prompt {tc.sample_prompt!r}, {tc.sample_tokens} tokens):\n{result.sample}")
    return result


def _check_step_memory(jitted_step, state, rest, config: RunConfig, mesh: Mesh, cache_dir: Path | None) -> None:
    """Raises :class:`~xlstm_flax.memory.OutOfMemoryError` on every process, before the run directory
    changes, if a device lacks the memory the train step needs: first its hidden states alone (before
    compiling: XLA's CPU compiler crashes, SIGFPE, on steps of tens of TB), then XLA's count of the
    compiled step (whose executable the first call reuses)."""
    tc = config.train
    options = advice(tc.batch_size, tc.seq_len, tc.grad_accum_steps, config.model.remat, tc.loss_chunk)
    hidden = jax.ShapeDtypeStruct(
        (tc.batch_size, tc.seq_len, config.model.embedding_dim), config.model.jnp_compute_dtype
    )
    floor = shortage(
        *sharded_bytes(hidden, distributed.batch_sharding(mesh)),
        "the train step needs at least (its hidden states alone)",
    )
    refuse_on_every_process(floor, "the train step", options)
    batches = jax.ShapeDtypeStruct(
        (tc.grad_accum_steps, tc.batch_size, tc.seq_len + 1), jnp.int32, sharding=distributed.batch_sharding(mesh, 1)
    )
    with compilation_cache(cache_dir), jax.set_mesh(mesh):
        compiled = jitted_step.lower(state, rest, batches).compile()
    refuse_on_every_process(
        shortage(step_bytes(compiled), mesh.local_devices, "the train step needs"), "the train step", options
    )


def _open_run_dir(config: RunConfig, log: Callable[[str], None], main_process: bool) -> RunDirectory:
    """:func:`open_run_dir` on every process: process 0 first (it may move back an interrupted overwrite's
    run), the others once it has; none goes on before all have looked (process 0 alone changes it). If
    one process fails, it raises its error and the others stop with a one-line error, none waits."""
    first = _agreed(lambda: open_run_dir(config, log), main_process, config.run_dir)
    then = _agreed(lambda: open_run_dir(config, log), not main_process, config.run_dir)
    return first if main_process else then


def _agreed(open_here: Callable[[], RunDirectory], here: bool, run_dir: str) -> RunDirectory | None:
    """``open_here()`` where ``here`` is true, then a check that it succeeded on every process."""
    run, failure = None, None
    if here:
        try:
            run = open_here()
        except Exception as err:  # re-raised below, once every process knows
            failure = err
    if not distributed.all_succeeded(failure is None):
        if failure is not None:
            raise failure
        raise RuntimeError(f"another process failed to open run directory {run_dir}; its error says why")
    return run


def _resume_point(run: RunDirectory, state, log: Callable[[str], None]):
    """``(state, step, log window, skipped checkpoints)`` to continue from: the newest checkpoint of a
    resumed run that restores (a fresh ``state`` and step 0 otherwise). Reads only."""
    if run.mode != RESUME:
        return state, 0, [], []
    reader = Checkpointer(run.checkpoint_dir, run.config.checkpoint.keep, read_only=True)
    try:
        if not reader.all_steps():
            log(f"resume=true, but {run.checkpoint_dir} holds no checkpoint: starting at step 0")
            return state, 0, [], []
        state, meta, start, skipped = reader.restore_newest(state)
    finally:
        reader.close()
    for checkpoint in skipped:
        log(f"skipped {checkpoint}; it will be kept in {run.path / UNRESTORABLE_DIR}")
    log(f"resumed from step {start} (loss {meta['loss']:.4f}) in {run.checkpoint_dir}")
    return state, start, meta.get(LOG_WINDOW, []), skipped


def _non_finite_message(loss: float, grad_norm: float, step: int, checkpointer: Checkpointer, run: RunDirectory) -> str:
    checkpointer.wait()  # a save in flight holds a good state (saves follow a check of every loss before them)
    last = checkpointer.latest_step()
    if last is not None:
        kept = f"nothing was saved after step {last} (the last good checkpoint, in {run.checkpoint_dir})"
    elif run.restores_on_failure:
        kept = f"{run.path} was left as it was before this start"
    else:
        kept = f"no checkpoint was saved yet in {run.checkpoint_dir}"
    return (
        f"loss is {loss} (gradient norm {grad_norm}) at step {step}: training stopped; {kept}. "
        "Try a lower optim.lr, a smaller optim.grad_clip or a longer optim.warmup_steps."
    )


def _train_batches(corpus: Corpus, tc: TrainConfig, seed: int, rows, start: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(step, int32 (grad_accum, B_local, S + 1))`` for the steps after ``start``: this process's rows
    of each micro-batch, a function of (seed, step) only."""
    for step in range(start + 1, tc.steps + 1):
        micro = [
            sample_windows(corpus.train, tc.seq_len + 1, tc.batch_size, (seed, TRAIN_SPLIT, step, m), rows)
            for m in range(tc.grad_accum_steps)
        ]
        yield step, np.stack(micro)


def _flops_per_token_and_peak(config: RunConfig, mesh: Mesh) -> tuple[float, float | None]:
    """Model FLOPs per trained token (:func:`flops.train_flops_per_token`) and the peak FLOP/s of all the
    mesh's devices together: ``train.peak_tflops`` per device, else the card's table value (None: unknown)."""
    per_device = config.train.peak_tflops * 1e12 if config.train.peak_tflops else peak_flops_per_second()
    peak = per_device * mesh.devices.size if per_device else None
    return train_flops_per_token(config.model, config.train.seq_len), peak


def _evaluate(eval_step, params, rest, val_batches, byte_level: bool) -> dict[str, float]:
    """Mean loss over the fixed validation batches, its perplexity and (byte-level) bits per byte."""
    loss = float(np.mean([eval_step(params, rest, tokens) for tokens in val_batches]))
    values = {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
    if byte_level:
        values["bits_per_byte"] = loss / math.log(2)
    return values


class _Progress:
    """Progress bar (step, loss, lr, tokens/s, ETA) and train records: every ``log_every`` steps the
    mean loss of those steps, the lr, the gradient norm, the throughput and (when the peak is known) the
    model FLOPs utilisation ``mfu`` = tokens/s x FLOPs per token / peak FLOP/s."""

    def __init__(
        self,
        run_dir: Path,
        tc: TrainConfig,
        start: int,
        window: list[float],
        flops_per_token: float,
        peak_flops: float | None,
    ):
        """``window``: the losses of the steps since the last record before ``start`` (a resumed run's
        checkpoint keeps them), so that its first record averages the same steps as an uninterrupted run."""
        self.metrics = MetricsWriter(run_dir, tensorboard=tc.tensorboard, purge_step=start + 1 if start else None)
        self._bar = tqdm(total=tc.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
        self._tc = tc
        self._flops_per_token, self._peak_flops = flops_per_token, peak_flops
        self.window: list[float] = list(window)
        self._timed_steps = 0
        self._since = time.perf_counter()

    def train(self, step: int, loss: float, grad_norm: float, lr: float) -> None:
        self.window.append(loss)
        self._timed_steps += 1
        if step % self._tc.log_every == 0 or step == self._tc.steps:
            now = time.perf_counter()
            tokens_per_s = self._timed_steps * self._tc.tokens_per_step / max(now - self._since, 1e-9)
            mean_loss = float(np.mean(self.window))
            record = {"loss": mean_loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s}
            shown = {"loss": f"{mean_loss:.4f}", "lr": f"{lr:.2e}", "tok_s": f"{tokens_per_s:,.0f}"}
            if self._peak_flops:
                record["mfu"] = tokens_per_s * self._flops_per_token / self._peak_flops
                shown["mfu"] = f"{record['mfu']:.1%}"
            self.metrics.write(step, "train", record)
            self._bar.set_postfix(shown)
            self.window, self._timed_steps, self._since = [], 0, now
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
        self.metrics.close()


class _StopSignal:
    """Turns the first SIGINT/SIGTERM into a flag checked after each step (a second one acts as usual).
    Only the main thread can handle signals: elsewhere nothing is installed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None
        in_main_thread = threading.current_thread() is threading.main_thread()
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS} if in_main_thread else {}

    def _handle(self, signum, _frame):
        self.received = signal.Signals(signum).name
        self.restore()

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _under_mesh(jitted: Callable, mesh: Mesh) -> Callable:
    """``jitted`` called (and traced) with ``mesh`` as the context mesh (``jax.set_mesh``)."""

    def call(*args):
        with jax.set_mesh(mesh):
            return jitted(*args)

    return call


def _silent(_: str) -> None:
    """The log of processes other than process 0."""


def _head_counts(config: RunConfig) -> list[int]:
    """The head counts of the model's mLSTM / sLSTM layers (tensor parallelism splits them)."""
    kinds = set(config.model.block_kinds())
    return [getattr(config.model, kind).num_heads for kind in sorted(kinds)]


def _count(params: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _layout(state: Any) -> str:
    arrays = jax.tree.leaves(state)
    sharded = sum(not x.sharding.is_fully_replicated for x in arrays)
    return f"{sharded} of {len(arrays)} state arrays sharded" if sharded else "state replicated"


def _kernel_summary(config: RunConfig) -> str:
    """The sequence kernels the run uses here, as asked for and as resolved: the mLSTM one, and the sLSTM
    one where the model has sLSTM blocks."""
    model = config.model
    mlstm, slstm = model.resolved_kernel(), model.resolved_slstm_kernel()
    parts = [
        f"mLSTM kernel: {mlstm} (model.mlstm.kernel: {model.mlstm.kernel})"
        if mlstm
        else "mLSTM kernel: none (no mLSTM blocks)"
    ]
    if slstm:
        parts.append(f"sLSTM kernel: {slstm} (model.slstm.kernel: {model.slstm.kernel})")
    return "; ".join(parts)


def _corpus_summary(corpus: Corpus) -> str:
    def size(streams):
        return sum(len(s) for s in streams)

    unigram = corpus.unigram_entropy()
    text = (
        f"data: {size(corpus.train):,} train / {size(corpus.val):,} validation tokens; "
        f"unigram entropy of the train split {unigram:.4f} nats/token"
    )
    if corpus.byte_level:
        text += f" = {unigram / math.log(2):.4f} bits/byte"
    return text


def _final_summary(result: TrainResult) -> str:
    val = result.final_val_loss
    lines = [
        f"finished step {result.step} in {result.seconds:.1f} s; "
        f"last train loss {result.train_losses.get(result.step, math.nan):.4f}"
    ]
    if val is not None:
        lines.append(
            f"validation loss {val:.4f} nats/token vs unigram baseline "
            f"{result.unigram_entropy:.4f} ({val / result.unigram_entropy:.1%} of it)"
        )
    lines.append(f"loss curve: {result.loss_curve}")
    return "\n".join(lines)
