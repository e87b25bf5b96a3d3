"""Cross-check with real transformers: our HF export loads in ``xLSTMForCausalLM.from_pretrained`` and
gives our logits; our model matches HF's reference logits (every pure-JAX kernel, plus
``chunkwise--triton`` on a CUDA GPU); the 7b preset has exactly the parameter shapes of an
``xLSTMForCausalLM`` built from HF's default config (on torch's meta device: no weights).

Needs jax + this package and torch + transformers in one environment:

    python scripts/check_hf_parity.py [--fixtures tests/fixtures/hf]

Prints one line per check with the max |error| / max |reference| and exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx, traverse_util
from safetensors.numpy import load_file
from transformers import xLSTMConfig, xLSTMForCausalLM

from xlstm_flax.convert import load_hf, save_hf
from xlstm_flax.convert.hf import hf_names
from xlstm_flax.model import xLSTMLMModel
from xlstm_flax.presets import get_preset

TOL = 1e-4  # fp32 everywhere: main() turns off JAX's TF32 default for XLA matmuls on the GPU
HF_RUNTIME = dict(mode="inference", autocast_kernel_dtype="float32", inference_state_dtype="float32")


def rel_err(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


class Report:
    def __init__(self):
        self.failed = 0

    def check(self, what: str, err: float, tol: float) -> None:
        ok = err <= tol
        self.failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}: {err:.2e} (tolerance {tol:.0e})")


def our_logits(model, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(model(jnp.asarray(tokens, jnp.int32)))


def check_fixture(fixture: Path, kernels: list[str], report: Report) -> None:
    reference = load_file(str(fixture.parent / f"{fixture.name}.reference.safetensors"))
    lengths = sorted(int(k.split("_")[1]) for k in reference if k.startswith("logits_"))
    for kernel in kernels:
        try:
            model, _ = load_hf(fixture, kernel=kernel)
            for length in lengths:
                err = rel_err(our_logits(model, reference[f"tokens_{length}"]), reference[f"logits_{length}"])
                report.check(f"{fixture.name} S={length} {kernel} vs HF reference", err, TOL)
        except ValueError as err:  # a kernel that does not take these head widths says so
            print(f"skip {fixture.name} {kernel}: {err}")
        except Exception as err:  # noqa: BLE001 - report and go on with the other checks
            report.check(f"{fixture.name} {kernel} raised {type(err).__name__}: {err}", float("inf"), 0.0)
    model, _ = load_hf(fixture, kernel="chunkwise--jax")
    with tempfile.TemporaryDirectory() as tmp:
        export = save_hf(model, Path(tmp) / "export")
        hf_model = xLSTMForCausalLM.from_pretrained(export, **HF_RUNTIME).float().eval()
        for length in lengths:
            tokens = reference[f"tokens_{length}"]
            with torch.no_grad():
                hf_logits = hf_model(torch.as_tensor(tokens), use_cache=False).logits.numpy()
            report.check(
                f"{fixture.name} S={length} our export in transformers vs our model",
                rel_err(hf_logits, our_logits(model, tokens)),
                TOL,
            )


def check_7b_shapes(report: Report) -> None:
    """Our 7b preset's parameters vs an xLSTMForCausalLM of HF's default config (meta device)."""
    with torch.device("meta"):
        hf_model = xLSTMForCausalLM(xLSTMConfig())
    hf_shapes = {name: tuple(p.shape) for name, p in hf_model.named_parameters()}
    config = get_preset("7b")
    abstract = nnx.eval_shape(lambda: xLSTMLMModel(config, rngs=nnx.Rngs(0)))
    ours = {}
    for path, leaf in traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(abstract, nnx.Param))).items():
        (name,) = hf_names(path, config.num_blocks)
        ours[name] = tuple(leaf.shape)[::-1] if path[-1] == "kernel" else tuple(leaf.shape)
    mismatched = sorted(n for n in set(hf_shapes) | set(ours) if hf_shapes.get(n) != ours.get(n))
    for name in mismatched[:10]:
        print(f"     {name}: HF {hf_shapes.get(name)} vs ours {ours.get(name)}")
    report.check(
        f"7b preset shapes vs HF default xLSTMConfig ({len(hf_shapes)} tensors; count of mismatches)",
        float(len(mismatched)),
        0.0,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/hf")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")  # fp32 parity: JAX's GPU default is TF32
    on_gpu = jax.default_backend() == "gpu"
    kernels = ["chunkwise--jax", "parallel--jax", "recurrent--jax"] + (["chunkwise--triton"] if on_gpu else [])
    print(f"jax {jax.__version__} on {jax.default_backend()}, torch {torch.__version__}, kernels {kernels}")
    report = Report()
    for fixture in sorted(p for p in args.fixtures.iterdir() if p.is_dir()):
        check_fixture(fixture, kernels, report)
    check_7b_shapes(report)
    print("all checks passed" if not report.failed else f"{report.failed} check(s) FAILED")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
