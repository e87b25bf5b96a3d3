"""Load and export Hugging Face ``xLSTMForCausalLM`` checkpoints, streaming tensor by tensor.

    model, config = load_hf("path/to/xLSTM-7b", dtype="bfloat16")   # HF dir -> xLSTMLMModel
    save_hf(model, "out/hf")                                          # xLSTMLMModel -> HF dir

Names: our parameter paths map one to one onto HF's (``blocks.blocks.3.mixer.q.kernel`` <->
``backbone.blocks.3.mlstm_layer.q.weight``); Linear kernels are stored transposed (HF: (out, in)),
norm scales are HF's ``weight``. With ``scan_layers`` one stacked array holds a tensor of every block.
Every HF tensor is used exactly once and every parameter filled exactly once, else ``CheckpointError``
names the tensors. Embedding tying follows the tensors: HF keeps its own ``lm_head.weight`` even with
``tie_word_embeddings``; our model is tied only when that tensor is absent or equal to the embedding.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh

from .. import sharding
from ..config import is_int
from ..memory import OutOfMemoryError, half_precision_hint, sharded_bytes, shortage
from ..model import xLSTMLMModel
from ..model_config import DTYPES, xLSTMLMConfig
from .hf_config import from_hf_config, to_hf_config
from .safetensors_dir import CONFIG_FILE, CheckpointError, SafetensorsDir, write_sharded

EMBEDDING, LM_HEAD = "backbone.embeddings.weight", "lm_head.weight"
NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_MODULES = {
    "embedding": "backbone.embeddings",
    "out_norm": "backbone.out_norm",
    "lm_head": "lm_head",
    "mixer": "mlstm_layer",
    "norm_mixer": "norm_mlstm",
    "norm_ffn": "norm_ffn",
    "ffn": "ffn",
}
_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}

ParamPath = tuple  # a flat parameter path, e.g. ("blocks", "blocks", 0, "mixer", "q", "kernel")


def _is_stacked(path: ParamPath) -> bool:
    """A ``scan_layers`` parameter: no block index in the path, a leading block axis instead."""
    return path[:2] == ("blocks", "blocks") and not isinstance(path[2], int)


def hf_names(path: ParamPath, num_blocks: int) -> list[str]:
    """The HF tensor name(s) of one of our parameters: one name, or one per block for a stacked
    (``scan_layers``) parameter, whose leading axis is the block index. Parameters HF's network lacks
    (sLSTM, the paper's mLSTM; used between our own runs only) keep their module and leaf names."""
    *modules, leaf = path
    if modules[:2] == ["blocks", "blocks"]:
        blocks, rest = (list(range(num_blocks)), modules[2:]) if _is_stacked(path) else ([modules[2]], modules[3:])
        inner = ".".join([_MODULES.get(rest[0], rest[0]), *map(str, rest[1:]), _LEAVES.get(leaf, leaf)])
        return [f"backbone.blocks.{i}.{inner}" for i in blocks]
    return [".".join([_MODULES[modules[0]], *map(str, modules[1:]), _LEAVES.get(leaf, leaf)])]


def stored_transposed(path: ParamPath) -> bool:
    return path[-1] == "kernel"


def _hf_shape(path: ParamPath, shape: tuple[int, ...], stacked: bool) -> tuple[int, ...]:
    """The shape of one HF tensor for our parameter of ``shape``."""
    shape = shape[1:] if stacked else shape
    return shape[::-1] if stored_transposed(path) else shape


def load_hf(
    path: str | Path, *, dtype: str | None = None, kernel: str | None = None, mesh: Mesh | None = None
) -> tuple[xLSTMLMModel, xLSTMLMConfig]:
    """An HF ``xLSTMForCausalLM`` directory as ``(model, config)``. ``dtype``: parameter and compute
    dtype ("float32" default, "bfloat16", "float16"); ``kernel``: our mLSTM sequence kernel (default:
    auto); ``mesh``: lay the parameters out on a (data, fsdp, tensor) mesh by :mod:`xlstm_flax.sharding`'s rules
    (default: the default device)."""
    dtype = dtype or "float32"
    _check_dtype(dtype)
    with SafetensorsDir(path) as ckpt:
        tied = tied_in_checkpoint(ckpt)
        config = from_hf_config(
            ckpt.config, source=str(ckpt.path / CONFIG_FILE), tie_embeddings=tied, kernel=kernel, dtype=dtype
        )
        abstract = nnx.eval_shape(lambda: xLSTMLMModel(config, rngs=nnx.Rngs(0)))
        graphdef, abstract_params = nnx.split(abstract, nnx.Param)
        pure = nnx.to_pure_dict(abstract_params)
        shardings = _shardings(abstract_params, pure, mesh)
        _check_fits(ckpt.path, pure, shardings, dtype)
        params = read_params(ckpt, pure, shardings, config.num_blocks, skip={LM_HEAD} if tied else set())
    nnx.replace_by_pure_dict(abstract_params, params)
    return nnx.merge(graphdef, abstract_params), config


def _check_fits(path: Path, abstract: dict, shardings: Any, dtype: str) -> None:
    """Refuses (:class:`OutOfMemoryError`), before any tensor is read, parameters whose shards need more than
    a device has free; ``abstract``: the pure parameter dict of ``ShapeDtypeStruct`` leaves."""
    problem = shortage(*sharded_bytes(abstract, shardings), f"{path}: the parameters in {dtype} need")
    if problem:
        hint = half_precision_hint(dtype)
        raise OutOfMemoryError(problem + (f"; load them {hint}" if hint else ""))


def _shardings(abstract_params: nnx.State, pure: dict, mesh: Mesh | None) -> Any:
    """The default device, or the layout of :mod:`xlstm_flax.sharding`'s rules on ``mesh``."""
    if mesh is None:
        return jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), pure)
    return sharding.param_shardings(nnx.to_pure_dict(nnx.get_partition_spec(abstract_params)), pure, mesh)


def tied_in_checkpoint(ckpt: SafetensorsDir) -> bool:
    """Tied embeddings: ``tie_word_embeddings`` and no ``lm_head.weight``, or one equal to the embedding."""
    if not ckpt.config.get("tie_word_embeddings", False):
        return False
    if LM_HEAD not in ckpt.names:
        return True
    return EMBEDDING in ckpt.names and np.array_equal(ckpt.read(LM_HEAD), ckpt.read(EMBEDDING))


def read_params(
    ckpt: SafetensorsDir, abstract: dict, shardings: Any, num_blocks: int, skip: set[str] = frozenset()
) -> dict:
    """Fill the pure parameter dict ``abstract`` (arrays or ``ShapeDtypeStruct`` give shape and dtype)
    from ``ckpt``, placing each with the matching leaf of ``shardings``. ``skip``: HF tensors present
    but deliberately unused (a tied model's copy of the embedding). Checks names before reading."""
    flat = traverse_util.flatten_dict(abstract)
    flat_shardings = traverse_util.flatten_dict(shardings)
    wanted = {p: hf_names(p, num_blocks) for p in flat}
    needed = [n for names in wanted.values() for n in names]
    missing = sorted(set(needed) - set(ckpt.names))
    if missing:
        raise CheckpointError(f"{ckpt.path}: missing tensor(s) {', '.join(missing)}")
    extra = sorted(set(ckpt.names) - set(needed) - set(skip))
    if extra:
        raise CheckpointError(
            f"{ckpt.path}: unused tensor(s) {', '.join(extra)} (not part of the model its {CONFIG_FILE} describes)"
        )
    out = {}
    for p, leaf in flat.items():
        stacked = _is_stacked(p)
        expected = _hf_shape(p, tuple(leaf.shape), stacked)
        for name in wanted[p]:
            if ckpt.shape(name) != expected:
                raise CheckpointError(
                    f"{ckpt.where(name)} has shape {ckpt.shape(name)}, expected {expected} "
                    f"(for parameter {'.'.join(map(str, p))})"
                )
        out[p] = jax.device_put(_host_value(ckpt, wanted[p], p, stacked, leaf.dtype), flat_shardings[p])
    return traverse_util.unflatten_dict(out)


def _host_value(ckpt: SafetensorsDir, names: list[str], path: ParamPath, stacked: bool, dtype) -> np.ndarray:
    """One parameter on the host in our layout and ``dtype`` (stacked: one buffer, filled per block)."""

    def one(name):
        x = ckpt.read(name)
        return (x.T if stored_transposed(path) else x).astype(dtype, copy=False)

    if not stacked:
        return one(names[0])
    first = one(names[0])
    buffer = np.empty((len(names), *first.shape), dtype=first.dtype)
    buffer[0] = first
    for i, name in enumerate(names[1:], start=1):
        buffer[i] = one(name)
    return buffer


class ModelTensors:
    """A model's parameters seen under HF tensor names, with :class:`SafetensorsDir`'s interface
    (``names``, ``shape``, ``read``, ``where``): the source of an export and of ``train.init_from``
    from a run. Each ``read`` copies one tensor (one block of a stacked parameter) to the host."""

    def __init__(self, model: xLSTMLMModel, label: str | Path = "model"):
        self.path = label
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        self.names: dict[str, tuple] = {}  # HF name -> (array, our path, block index or None)
        for p, leaf in flat.items():
            for i, name in enumerate(hf_names(p, model.config.num_blocks)):
                self.names[name] = (leaf, p, i if _is_stacked(p) else None)

    def shape(self, name: str) -> tuple[int, ...]:
        leaf, p, block = self.names[name]
        return _hf_shape(p, tuple(leaf.shape), block is not None)

    def read(self, name: str) -> np.ndarray:
        leaf, p, block = self.names[name]
        x = np.asarray(jax.device_get(leaf if block is None else leaf[block]))
        return x.T if stored_transposed(p) else x

    def where(self, name: str) -> str:
        return f"{self.path}: parameter {name!r}"


def _check_dtype(dtype) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")


def save_hf(model: xLSTMLMModel, path: str | Path, *, dtype: str | None = None, max_shard_bytes: int = 2 << 30) -> Path:
    """Write ``model`` as an HF ``xLSTMForCausalLM`` directory (config.json + safetensors) that
    ``transformers`` loads. ``path`` must not exist yet (nothing is overwritten); the directory appears
    complete or not at all. ``dtype``: stored dtype (default: the parameters' own). A tied model gets
    its own ``lm_head.weight`` (a copy of the embedding), as HF's network always reads one."""
    if not isinstance(model, xLSTMLMModel):
        raise TypeError(f"model must be an xLSTMLMModel, got {type(model).__name__}")
    if dtype is not None:
        _check_dtype(dtype)
    if not is_int(max_shard_bytes) or max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be an int >= 1, got {max_shard_bytes!r}")
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new directory for the export")
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(f"{path.parent} is a file, not a directory: cannot export to {path}")
    config = model.config
    hf_config = to_hf_config(config)
    store = np.dtype(NUMPY_DTYPES[dtype or config.param_dtype])
    if dtype:
        hf_config["dtype"] = dtype
    tensors = ModelTensors(model)
    if config.tie_embeddings:
        tensors.names[LM_HEAD] = tensors.names[EMBEDDING]  # both (vocab, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        entries = [(name, tensors.shape(name), store.itemsize) for name in sorted(tensors.names)]
        write_sharded(staging, entries, lambda name: tensors.read(name).astype(store), max_shard_bytes)
        (staging / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path
