"""Residual xLSTM blocks and the block stack.

Block: x + mixer(norm(x)), then x + ffn(norm(x)) when the block has an FFN; the mixer is an mLSTM
layer (variant from ``config.mlstm.variant``) or an sLSTM layer (positions ``config.slstm_at``).
Stack: the blocks in order, optionally rematerialised (``config.remat``, keeping what ``config.remat_policy``
names) and, when all blocks are identical, stacked and run with ``nnx.scan`` (``config.scan_layers``: one
compiled block body).
Shapes: x (B, S, D) for sequences, (B, D) for single steps. The stack's state is a tuple of block
states, or with ``scan_layers`` one block state whose leaves have a leading num_blocks axis.
"""

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import GatedFFN, make_norm, mLSTMLayer, mLSTMPaperLayer, sLSTMLayer
from .model_config import REMAT_POLICIES, xLSTMLMConfig
from .sharding import LAYERS


def make_mixer(kind: str, config: xLSTMLMConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The sequence-mixing layer of a block of ``kind`` "mlstm" or "slstm"."""
    common = dict(
        num_blocks=config.num_blocks, dtype=config.jnp_compute_dtype, param_dtype=config.jnp_param_dtype, rngs=rngs
    )
    if kind == "slstm":
        return sLSTMLayer(config.embedding_dim, config.slstm, **common)
    layer_cls = mLSTMLayer if config.mlstm.variant == "xlstm7b" else mLSTMPaperLayer
    return layer_cls(config.embedding_dim, config.mlstm, **common)


class xLSTMBlock(nnx.Module):
    """Pre-norm residual block around one mLSTM or sLSTM layer and an optional gated FFN."""

    def __init__(self, config: xLSTMLMConfig, kind: str, *, rngs: nnx.Rngs):
        norm = dict(eps=config.norm_eps, use_bias=config.norm_bias, param_dtype=config.jnp_param_dtype)
        dim = config.embedding_dim
        self.norm_mixer = make_norm(config.norm, dim, **norm)
        self.mixer = make_mixer(kind, config, rngs=rngs)
        has_ffn = config.ffn.in_slstm_blocks if kind == "slstm" else config.ffn.in_mlstm_blocks
        self.norm_ffn = make_norm(config.norm, dim, **norm) if has_ffn else None
        self.ffn = (
            GatedFFN(
                dim,
                config.ffn,
                num_blocks=config.num_blocks,
                dtype=config.jnp_compute_dtype,
                param_dtype=config.jnp_param_dtype,
                rngs=rngs,
            )
            if has_ffn
            else None
        )

    def init_state(self, batch_size: int):
        return self.mixer.init_state(batch_size)

    def __call__(self, x: jax.Array, state=None, *, return_state: bool = False, segment_ids: jax.Array | None = None):
        """x (B, S, D) -> (x (B, S, D), block state or None); the mixer restarts at segment starts."""
        return self._residual(x, lambda h: self.mixer(h, state, return_state=return_state, segment_ids=segment_ids))

    def step(self, x: jax.Array, state):
        """x (B, D) -> (x (B, D), new block state)."""
        return self._residual(x, lambda h: self.mixer.step(h, state))

    def _residual(self, x, mix):
        y, state = mix(self.norm_mixer(x))
        x = x + y.astype(x.dtype)
        if self.ffn is not None:
            x = x + self.ffn(self.norm_ffn(x)).astype(x.dtype)
        return x, state


def _run_block(graphdef: nnx.GraphDef, params, x, state, segment_ids, return_state: bool):
    """A block as a pure function of its parameters (so that plain JAX transforms apply to it)."""
    return nnx.merge(graphdef, params)(x, state, return_state=return_state, segment_ids=segment_ids)


def _with_segments(run, segment_ids, graphdef, params, x, state):
    return run(graphdef, params, x, state, segment_ids)


class xLSTMBlockStack(nnx.Module):
    """The model's blocks: ``config.num_blocks`` residual blocks, sLSTM at ``config.slstm_at``.

    Blocks hold parameters only, so the stack runs them as pure functions (split / merge) under
    ``jax.checkpoint`` and ``jax.lax.scan``; this also works when the model is closed over inside
    another JAX transform (e.g. a ``lax.scan`` of decoding steps or of gradient accumulation).
    """

    def __init__(self, config: xLSTMLMConfig, *, rngs: nnx.Rngs):
        self.scan_layers, self.remat = config.scan_layers, config.remat
        self.remat_policy = config.remat_policy
        self.num_blocks = config.num_blocks
        kinds = config.block_kinds()
        if config.scan_layers:

            @nnx.split_rngs(splits=config.num_blocks)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
            def make_stacked(rngs):
                return xLSTMBlock(config, kinds[0], rngs=rngs)

            self.blocks = make_stacked(rngs)
        else:
            self.blocks = nnx.List([xLSTMBlock(config, kind, rngs=rngs) for kind in kinds])

    def init_state(self, batch_size: int):
        """Zero / initial states of all blocks (O(1) in the sequence length)."""
        if self.scan_layers:  # init_state reads only static sizes, so the stacked module answers it
            one = self.blocks.init_state(batch_size)
            return jax.tree.map(lambda a: jnp.broadcast_to(a, (self.num_blocks, *a.shape)), one)
        return tuple(block.init_state(batch_size) for block in self.blocks)

    def __call__(self, x: jax.Array, state=None, *, return_state: bool = False, segment_ids: jax.Array | None = None):
        """x (B, S, D) -> (x (B, S, D), stack state or None); ``state`` None starts from zeros;
        ``segment_ids`` (B, S) int or None: every block restarts its state at each new segment."""
        run = partial(_run_block, return_state=return_state)
        if self.remat:  # a scan keeps its backward apart from its forward: no barrier (XLA would copy each
            # residual slice out of the scan's stacks to feed it)
            run = jax.checkpoint(
                run, static_argnums=(0,), policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan_layers
            )
        x, new_state = self._run_blocks(partial(_with_segments, run, segment_ids), x, state)
        return x, (new_state if return_state else None)

    def step(self, x: jax.Array, state):
        """One token through all blocks: x (B, D) -> (x (B, D), new stack state)."""

        def run(graphdef, params, x, block_state):
            return nnx.merge(graphdef, params).step(x, block_state)

        return self._run_blocks(run, x, state)

    def _run_blocks(self, run, x, state):
        """Applies ``run(graphdef, block_params, x, block_state) -> (x, block_state)`` block by block."""
        state = tuple(state) if isinstance(state, list) else state
        self._check_state(state, x.shape[0])
        if self.scan_layers:
            graphdef, params = nnx.split(self.blocks)

            def body(x, inputs):
                block_params, block_state = inputs
                return run(graphdef, block_params, x, block_state)

            return jax.lax.scan(body, x, (params, state))  # a None state scans as an empty tree
        states = [None] * self.num_blocks if state is None else state
        new_states = []
        for block, block_state in zip(self.blocks, states):
            graphdef, params = nnx.split(block)
            x, block_state = run(graphdef, params, x, block_state)
            new_states.append(block_state)
        return x, tuple(new_states)

    def _check_state(self, state, batch_size: int) -> None:
        """ValueError unless ``state`` is None or laid out as :meth:`init_state` (``batch_size``) makes it: one
        state per block (a tuple; stacked along a leading block axis with ``scan_layers``), each of its shapes."""
        if state is None:
            return
        if self.scan_layers:
            got = sorted({leaf.shape[0] if leaf.ndim else 0 for leaf in jax.tree.leaves(state)})
            ok = got == [self.num_blocks]
        else:
            got = len(state) if isinstance(state, tuple) else type(state).__name__
            ok = got == self.num_blocks
        want = jax.eval_shape(lambda: self.init_state(batch_size))
        if not ok or jax.tree.structure(state) != jax.tree.structure(want):
            layout = "stacked along a leading axis of that size" if self.scan_layers else "a tuple of that length"
            raise ValueError(
                f"state must hold one state per block ({self.num_blocks} blocks, {layout}; "
                f"model.init_state(batch_size) makes one), got {got}"
            )
        for (path, leaf), expected in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(want)):
            if leaf.shape != expected.shape:
                raise ValueError(
                    f"state{jax.tree_util.keystr(path)} has shape {leaf.shape}, expected {expected.shape} "
                    f"(as model.init_state({batch_size}) makes it)"
                )
