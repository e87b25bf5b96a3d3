"""The training state of a run: a freshly initialised model and optimiser state laid out on the mesh
(:mod:`xlstm_flax.sharding`; the target that checkpoints are restored into)."""

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import distributed, sharding
from ..memory import OutOfMemoryError, sharded_bytes, shortage
from ..model import xLSTMLMModel
from .optim import make_optimizer
from .recipe import RunConfig


def init_train_state(config: RunConfig, mesh: Mesh):
    """A freshly initialised model as ``(graphdef, rest, state)``: ``state`` is ``{"params": pure
    dict, "opt_state": ...}`` laid out on ``mesh`` by the parameters' logical axes; ``rest`` holds the
    non-Param variables, replicated. On several devices the state is created sharded, never whole on one."""
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
    _check_fits((abstract_state, abstract_rest), shardings)
    if mesh.size > 1:
        state, rest = jax.jit(init, out_shardings=shardings)()
    else:  # eager: no compile, which is faster on one device
        state, rest = jax.device_put(init(), shardings)
    return graphdef, rest, state


def _check_fits(abstract, shardings) -> None:
    """Raises :class:`OutOfMemoryError` on every process, before anything is allocated, if a device lacks the
    memory for its shards of the state."""
    problem = shortage(*sharded_bytes(abstract, shardings), "the parameters and optimiser state need")
    if not distributed.all_succeeded(problem is None):
        problem = problem or "a device of another process lacks the memory for the parameters and optimiser state"
        raise OutOfMemoryError(
            f"{problem}: choose a smaller model, or shard the state over more devices (distributed.fsdp)"
        )
