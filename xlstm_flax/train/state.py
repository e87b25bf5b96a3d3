"""The training state of a run: a freshly initialised model and optimiser state laid out on the mesh
(:mod:`xlstm_flax.sharding`; the target that checkpoints are restored into), or for inference the
parameters alone as a restore target that allocates nothing before the checkpoint is read."""

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import sharding
from ..memory import half_precision_hint, refuse_on_every_process, sharded_bytes, shortage
from ..model import xLSTMLMModel
from .optim import make_optimizer
from .recipe import RunConfig


def init_train_state(config: RunConfig, mesh: Mesh):
    """A freshly initialised model as ``(graphdef, rest, state)``: ``state`` is ``{"params": pure
    dict, "opt_state": ...}`` laid out on ``mesh`` by the parameters' logical axes; ``rest`` holds the
    non-Param variables, replicated. On several devices the state is created sharded, never whole on one."""
    graphdef, init, abstract, shardings = _layout(config, mesh)
    what = "the parameters and optimiser state"
    options = "choose a smaller model, or shard the state over more devices (distributed.fsdp)"
    refuse_on_every_process(shortage(*sharded_bytes(abstract, shardings), f"{what} need"), what, options)
    if mesh.size > 1:
        state, rest = jax.jit(init, out_shardings=shardings)()
    else:  # eager: no compile, which is faster on one device
        state, rest = jax.device_put(init(), shardings)
    return graphdef, rest, state


def params_target(config: RunConfig, mesh: Mesh):
    """``(graphdef, rest, target)`` for restoring only the parameters of a checkpointed training state:
    ``target["params"]`` holds ``jax.ShapeDtypeStruct`` leaves with their shardings on ``mesh``, and every
    leaf of ``target["opt_state"]`` is orbax's placeholder, so the optimiser moments (twice the parameters'
    bytes under AdamW) are neither allocated nor read. Refuses parameters larger than free memory."""
    graphdef, init, (abstract_state, abstract_rest), (state_shardings, rest_shardings) = _layout(config, mesh)
    what = "the parameters"
    abstract = (abstract_state["params"], abstract_rest)
    needed = sharded_bytes(abstract, (state_shardings["params"], rest_shardings))
    options = "load them on a device with more free memory"
    hint = half_precision_hint(config.model.param_dtype)
    options += f", or {hint}" if hint else ""
    refuse_on_every_process(shortage(*needed, f"{what} in {config.model.param_dtype} need"), what, options)
    params = _placed(abstract_state["params"], state_shardings["params"])
    target = {"params": params, "opt_state": jax.tree.map(lambda _: ocp.PLACEHOLDER, abstract_state["opt_state"])}
    rest = jax.jit(lambda: init()[1], out_shardings=rest_shardings)()  # XLA drops the unused initialisation
    return graphdef, rest, target


def abstract_train_state(config: RunConfig, mesh: Mesh):
    """``(graphdef, rest, state)`` as :func:`init_train_state` returns them, with ``jax.ShapeDtypeStruct``
    leaves carrying their shardings on ``mesh`` in ``rest`` and ``state``: for compiling a training step
    ahead of time (``mesh`` may hold compile-only devices); nothing is allocated."""
    graphdef, _, (abstract_state, abstract_rest), (state_shardings, rest_shardings) = _layout(config, mesh)
    return graphdef, _placed(abstract_rest, rest_shardings), _placed(abstract_state, state_shardings)


def _placed(abstract, shardings):
    return jax.tree.map(lambda x, where: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), abstract, shardings)


def _layout(config: RunConfig, mesh: Mesh):
    """``(graphdef, init, abstract, shardings)``: ``init()`` builds ``(state, rest)`` as
    :func:`init_train_state` returns them, ``abstract`` is its ``jax.eval_shape`` and ``shardings`` the
    matching tree of ``NamedSharding`` on ``mesh``."""
    optimizer = make_optimizer(config.optim, config.train.steps)

    def new_model():
        return xLSTMLMModel(config.model, rngs=nnx.Rngs(config.seed))

    def init():
        _, param_state, rest = nnx.split(new_model(), nnx.Param, ...)
        params = nnx.to_pure_dict(param_state)
        return {"params": params, "opt_state": optimizer.init(params)}, rest

    graphdef = nnx.split(nnx.eval_shape(new_model), nnx.Param, ...)[0]
    abstract_state, abstract_rest = jax.eval_shape(init)
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = (
        sharding.state_shardings(graphdef, abstract_state, abstract_rest, mesh),
        jax.tree.map(lambda _: replicated, abstract_rest),
    )
    return graphdef, init, (abstract_state, abstract_rest), shardings
