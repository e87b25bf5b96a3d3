"""The training state of a run: a freshly initialised model and optimiser state in the layout the run's
``distributed`` section asks for (the target that checkpoints are restored into)."""

import jax
from flax import nnx
from jax.sharding import Mesh

from .. import distributed
from ..distributed import DistributedConfig
from ..model import xLSTMLMModel
from .optim import make_optimizer
from .recipe import RunConfig


def init_train_state(config: RunConfig, mesh: Mesh):
    """A freshly initialised model as ``(graphdef, rest, state)``: ``state`` is ``{"params": pure
    dict, "opt_state": ...}`` in the layout ``config.distributed`` asks for; ``rest`` holds the
    non-Param variables, replicated. A sharded state is created sharded, never whole on one device."""
    optimizer = make_optimizer(config.optim, config.train.steps)

    def new_model():
        return xLSTMLMModel(config.model, rngs=nnx.Rngs(config.seed))

    def init():
        _, param_state, rest = nnx.split(new_model(), nnx.Param, ...)
        params = nnx.to_pure_dict(param_state)
        return {"params": params, "opt_state": optimizer.init(params)}, rest

    graphdef = nnx.split(nnx.eval_shape(new_model), nnx.Param, ...)[0]
    abstract_state, abstract_rest = jax.eval_shape(init)
    shardings = (
        distributed.state_shardings(abstract_state, mesh, config.distributed),
        distributed.state_shardings(abstract_rest, mesh, DistributedConfig()),
    )
    if config.distributed.shard_params:
        state, rest = jax.jit(init, out_shardings=shardings)()
    else:  # eager: no compile, which is faster for a replicated (small enough) state
        state, rest = jax.device_put(init(), shardings)
    return graphdef, rest, state
