"""Start-up cost of the Triton kernels: time to lower ``jax.grad`` through ``chunkwise--triton`` for CUDA
in a new process, with an empty and then with a filled kernel disk cache (kernels/triton/disk_cache.py).
Runs on any machine with jax-triton (without a GPU it lowers for sm_90).

    python benchmarks/lowering_time.py [--shape 1x8x2048x256x512] [--dtype bfloat16] [--runs 3] [--out FILE.md]

Each run is a fresh Python process that imports JAX, traces and lowers (JAX's own persistent cache plays
no part: nothing is compiled by XLA). "cold": the cache directory is new; "warm": the runs after, on the
cache the cold run filled; "off": ``XLSTM_FLAX_TRITON_CACHE=off``. Reported: median wall seconds of the
lowering (import excluded) and the kernels that reached Triton's compiler.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for benchmarks.timing

from benchmarks.timing import markdown_table, write_report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = textwrap.dedent(
    """
    import hashlib, json, sys, time
    import jax, jax.numpy as jnp
    from xlstm_flax.kernels.triton import autograd, compat
    compat.import_jax_triton()
    from jax_triton import triton_lib
    compiled = []
    uncached = triton_lib.compile_ttir_inplace
    triton_lib.compile_ttir_inplace = lambda *args: compiled.append(1) or uncached(*args)
    autograd._require_triton_backend = lambda: None  # lowering needs no GPU
    from xlstm_flax.kernels import get_kernel
    (B, NH, S, K, V), dtype, mode, tuning = json.loads(sys.argv[1])
    sds = jax.ShapeDtypeStruct
    qk, v = sds((B, NH, S, K), jnp.dtype(dtype)), sds((B, NH, S, V), jnp.dtype(dtype))
    gates = sds((B, NH, S), jnp.float32)
    kernel = get_kernel("chunkwise--triton")
    loss = lambda *a: jnp.sum(kernel(*a, **tuning).astype(jnp.float32))
    fn = jax.grad(loss, argnums=(0, 1, 2, 3, 4)) if mode == "fwbw" else lambda *a: kernel(*a, **tuning)
    start = time.perf_counter()
    text = jax.jit(fn).trace(qk, qk, v, gates, gates).lower(lowering_platforms=("cuda",)).as_text()
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(text.encode()).hexdigest()
    print(json.dumps({"seconds": seconds, "compiled": len(compiled), "digest": digest}))
    """
)


def lower_once(shape, dtype: str, cache: str, mode: str = "fwbw", **tuning) -> dict:
    """Lowers in a new process with kernel cache ``cache`` (a directory or "off"): {"seconds" of the
    lowering, kernels "compiled" by Triton, "digest" of the lowered module text (PTX included)}."""
    env = dict(os.environ, XLSTM_FLAX_TRITON_CACHE=str(cache), PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    job = json.dumps([list(shape), dtype, mode, tuning])
    done = subprocess.run([sys.executable, "-c", RUN, job], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1x8x2048x256x512", help="BxNHxSxDHQKxDHV")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--runs", type=int, default=3, help="processes per row")
    parser.add_argument("--out", help="markdown file to write")
    args = parser.parse_args(argv)
    shape = [int(x) for x in args.shape.split("x")]
    with tempfile.TemporaryDirectory() as cache:
        cold = lower_once(shape, args.dtype, cache)
        rows = {
            "off": [lower_once(shape, args.dtype, "off") for _ in range(args.runs)],
            "cold (empty cache)": [cold],
            "warm": [lower_once(shape, args.dtype, cache) for _ in range(args.runs)],
        }
    table = [
        [name, len(runs), statistics.median(r["seconds"] for r in runs), runs[0]["compiled"]]
        for name, runs in rows.items()
    ]
    title = f"Lowering chunkwise--triton fw+bw for CUDA, {args.shape} {args.dtype}, new process per run"
    columns = ["cache", "runs", "lowering s (median)", "kernels compiled"]
    return write_report(title, [[markdown_table(columns, table)]], args.out)


if __name__ == "__main__":
    main()
