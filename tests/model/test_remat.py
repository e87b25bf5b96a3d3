"""Rematerialised blocks (``remat``, ``remat_policy``): the same gradients as without remat, in the block
loop and in the scanned stack, and each policy saves what it says (matmul outputs or none)."""

import collections
import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from jax._src.interpreters import partial_eval as pe  # dce_jaxpr and its rules: not in JAX's public API
from jax.ad_checkpoint import print_saved_residuals

from tests.model.helpers import make_model, random_tokens, small_config
from xlstm_flax.kernels.triton import compat, launch
from xlstm_flax.model_config import REMAT_POLICIES

# fp32: the same operations, possibly fused and summed in another order. Relative to the largest entry of the
# whole gradient: some leaves are sums that nearly cancel (the input-gate bias's is 2e-3 of the largest entry),
# where a reordered fp32 sum differs by more than 1e-5 of the leaf itself; an error the size of that smallest
# leaf would still be 200 times the tolerance.
GRAD_REL_TOL = 1e-5


def loss_of_params(model, tokens):
    """(pure loss of the parameters, the parameters) of ``model`` on next-token prediction."""
    graphdef, params = nnx.split(model)

    def loss(params):
        logits = nnx.merge(graphdef, params)(tokens[:, :-1]).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    return loss, params


@pytest.mark.parametrize("scan_layers", [False, True], ids=["block loop", "scanned stack"])
@pytest.mark.parametrize("policy", sorted(REMAT_POLICIES))
def test_remat_gradients_equal_the_plain_ones(policy, scan_layers):
    """Random weights and tokens; the sLSTM block is dropped for the scanned stack (identical blocks)."""
    base = small_config(kernel="chunkwise--jax", **({"slstm_at": ()} if scan_layers else {}), scan_layers=scan_layers)
    tokens = random_tokens(7, 2, 11)
    plain_loss, params = loss_of_params(make_model(base, seed=3), tokens)
    remat_config = dataclasses.replace(base, remat=True, remat_policy=policy)
    remat_loss, remat_params = loss_of_params(make_model(remat_config, seed=3), tokens)
    expected = jax.jit(jax.grad(plain_loss))(params)
    actual = jax.jit(jax.grad(remat_loss))(remat_params)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(expected))
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(actual), strict=True):
        err = float(jnp.abs(got - want).max())
        assert err <= GRAD_REL_TOL * scale, (
            f"{policy} gradient of {jax.tree_util.keystr(path)}: {err:.3g} > {scale:.3g}"
        )


def saved_residuals(config, capsys) -> list[str]:
    """The lines of ``print_saved_residuals`` for the gradient of ``config``'s model's loss."""
    loss, params = loss_of_params(make_model(config), random_tokens(8, 2, 9))
    print_saved_residuals(loss, params)
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("policy, saves_matmuls", [("full", False), ("save_matmuls", True)])
def test_policy_decides_whether_matmul_outputs_are_saved(policy, saves_matmuls, capsys):
    saved = saved_residuals(small_config(kernel="chunkwise--jax", remat=True, remat_policy=policy), capsys)
    matmul_outputs = [line for line in saved if "output of dot_general" in line]
    assert bool(matmul_outputs) == saves_matmuls, f"{policy} saved {len(matmul_outputs)} matmul outputs"


def test_scanned_stack_saves_more_with_save_matmuls(capsys):
    """In the scanned stack the saved values are the scan's stacked outputs: more of them with save_matmuls."""
    config = small_config(kernel="chunkwise--jax", slstm_at=(), scan_layers=True, remat=True)
    counts = {
        policy: len(saved_residuals(dataclasses.replace(config, remat_policy=policy), capsys))
        for policy in REMAT_POLICIES
    }
    assert counts["save_matmuls"] > counts["full"], counts


def live_triton_calls(config) -> collections.Counter:
    """Triton kernel calls, by kernel, in the gradient of ``config``'s model's loss after dead-code elimination
    as XLA does it: jax-triton keeps every call in a jaxpr, XLA drops a custom call without side effects whose
    results nothing reads."""

    def drop_if_unused(used_outputs, eqn):
        return ([False] * len(eqn.invars), None) if not any(used_outputs) else ([True] * len(eqn.invars), eqn)

    try:
        triton_kernel_call_p = compat.import_jax_triton().triton_lib.triton_kernel_call_p
    except ImportError as err:  # pragma: no cover - depends on the environment
        pytest.skip(f"jax_triton not importable: {err}")
    loss, params = loss_of_params(make_model(config), random_tokens(8, 2, 33))
    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(pe.dce_rules, triton_kernel_call_p, drop_if_unused)
        live, _ = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    return collections.Counter(
        eqn.params["fn"].__name__ for eqn in iter_eqns(live) if eqn.primitive is triton_kernel_call_p
    )


def iter_eqns(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in its equations (remat, jit, custom_vjp)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                    yield from iter_eqns(getattr(sub, "jaxpr", sub))


@pytest.mark.parametrize("scan_layers", [False, True], ids=["block loop", "scanned stack"])
def test_only_the_block_loop_keeps_remat_barriers(scan_layers):
    """The block loop's remat keeps its optimisation barriers (``prevent_cse``: without them XLA could merge
    the backward's recompute with the forward and keep its activations); the scanned stack's has none: the
    scan already separates the two loops, and a barrier over the residuals sliced out of the scan's stacks
    makes XLA copy every slice (968 MB per 1.3b block; docs/performance.md, Models)."""
    config = small_config(kernel="chunkwise--jax", slstm_at=(), scan_layers=scan_layers, remat=True)
    loss, params = loss_of_params(make_model(config), random_tokens(8, 2, 17))
    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    remats = [eqn.params["prevent_cse"] for eqn in iter_eqns(jaxpr) if "prevent_cse" in eqn.params]
    assert remats and all(prevent_cse != scan_layers for prevent_cse in remats), remats


@pytest.mark.parametrize("scan_layers", [False, True], ids=["block loop", "scanned stack"])
def test_save_matmuls_runs_the_triton_kernels_forward_once(scan_layers, monkeypatch):
    """With ``save_matmuls`` the Triton mLSTM and sLSTM kernels' residuals are kept: their calls in the jaxpr
    are those of the step without remat (forward once; the mLSTM backward's own chunk-state recompute, which
    XLA merges with the forward's call only without remat); ``full`` runs each forward again. Traced on the
    CPU (the kernels do not run); the scanned stack has no sLSTM block."""
    monkeypatch.setattr(launch, "require_triton_backend", lambda *args: None)
    base = small_config(**({"slstm_at": ()} if scan_layers else {}), scan_layers=scan_layers)
    config = dataclasses.replace(
        base,
        mlstm=dataclasses.replace(base.mlstm, kernel="chunkwise--triton", chunk_size=16),
        slstm=dataclasses.replace(base.slstm, kernel="recurrent--triton"),
    )
    plain = live_triton_calls(config)
    forwards = {name for name in plain if "_fw_" in name}
    assert {"parallel_fw_kernel", "recurrent_fw_kernel"} <= forwards, plain
    assert scan_layers or any("slstm" in name for name in forwards), plain
    for policy, runs_again in (("save_matmuls", 0), ("full", 1)):
        remat = live_triton_calls(dataclasses.replace(config, remat=True, remat_policy=policy))
        assert remat == plain + collections.Counter(dict.fromkeys(forwards, runs_again)), (policy, remat, plain)
