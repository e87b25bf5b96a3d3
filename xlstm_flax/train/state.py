"""The training state of a run: a freshly initialised model and optimiser state laid out on the mesh
(:mod:`xlstm_flax.sharding`; the target that checkpoints are restored into)."""

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import sharding
from ..memory import refuse_on_every_process, sharded_bytes, shortage
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
    what = "the parameters and optimiser state"
    refuse_on_every_process(
        shortage(*sharded_bytes((abstract_state, abstract_rest), shardings), f"{what} need"),
        what,
        "choose a smaller model, or shard the state over more devices (distributed.fsdp)",
    )
    if mesh.size > 1:
        state, rest = jax.jit(init, out_shardings=shardings)()
    else:  # eager: no compile, which is faster on one device
        state, rest = jax.device_put(init(), shardings)
    return graphdef, rest, state
