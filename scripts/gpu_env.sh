# Source this at the start of every command on the GPU machine (it has jax, triton, flax, optax, orbax
# but no jax-triton, no pytest and no package index). Carry `.whl` (git-ignored: jax-triton and pytest
# wheels) with the call.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
# xlstm_flax.kernels maps to kernels/ (setup.cfg package_dir): mirror that with symlinks, no install needed.
rm -rf .gpu_pkg && mkdir -p .gpu_pkg/xlstm_flax
for entry in "$PWD"/xlstm_flax/*; do ln -sfn "$entry" .gpu_pkg/xlstm_flax/; done
ln -sfn "$PWD/kernels" .gpu_pkg/xlstm_flax/kernels
# The repo root goes LAST on the path (its xlstm_flax/ has no kernels/); PYTHONSAFEPATH keeps `python -m`
# from putting it first. Run pytest with --import-mode=append for the same reason.
export PYTHONPATH=/tmp/site:$PWD/.gpu_pkg:$PWD PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1
