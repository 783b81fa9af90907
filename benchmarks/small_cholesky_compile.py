"""Compile time of `renormalise` with `small_cholesky`'s loops unrolled or not (`_linalg._UNROLL`).

For each threshold (0: `fori_loop`s everywhere; 2: the default, m = 2 unrolled; 4), in its own
process with a cold cache and the tests' `--xla_backend_optimization_level=0`, lowers and
compiles `jax.jit` of `renormalise` (saddle; log evidence plus the mean predictor) and of its
gradient in the width, for a linear FCN with two outputs (n = 16, d = 8: 2×2 blocks) and an
erf PatchCNN with 4 patches and one output (n = 48: a 4×4 scale), and prints the seconds.

    python benchmarks/small_cholesky_compile.py [--repeat 2]
"""

import argparse
import os
import subprocess
import sys
import time


def _one(unroll: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import fls_jax as fj
    from fls_jax import _linalg

    _linalg._UNROLL = unroll
    rng = np.random.default_rng(11)
    X, X_test = rng.standard_normal((16, 8)), rng.standard_normal((20, 8))
    beta = rng.standard_normal(8) / np.sqrt(8)
    Y = np.stack([X @ beta, 0.6 * X @ beta + 0.4 * rng.standard_normal(16)], axis=1)
    Y_test = np.stack([X_test @ beta, 0.6 * X_test @ beta], axis=1)
    t = fj.datasets.linear_patch_teacher(48, 20, patch_size=4, patches=4, seed=0)

    def outputs(C):
        net = fj.FCN(C, 1.0, 1.0, 0.05, fj.Linear())
        r = fj.renormalise(net, X, Y, X_test, Y_test, method="saddle")
        return r.log_evidence + jnp.sum(r.mean)

    def patches(C):
        net = fj.PatchCNN(C, 1.0, 1.0, 0.05, fj.Erf(), patch_size=4)
        r = fj.renormalise(net, t.X, t.Y[:, :1], t.X_test, t.Y_test[:, :1], method="saddle")
        return r.log_evidence + jnp.sum(r.mean)

    for name, f in (("two outputs", outputs), ("4 patches", patches)):
        for kind, fn in (("value", jax.jit(f)), ("gradient", jax.jit(jax.grad(f)))):
            start = time.perf_counter()
            compiled = fn.lower(6.0).compile()
            seconds = time.perf_counter() - start
            value = float(compiled(6.0))
            print(f"{unroll:6d}  {name:12s} {kind:9s} {seconds:6.1f} s   {value:.15e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--one", type=int, default=None)
    a = parser.parse_args()
    if a.one is not None:
        _one(a.one)
        return
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    print("unroll  program      of        lower+compile   value")
    for _ in range(a.repeat):
        for unroll in (0, 2, 4):
            run = [sys.executable, __file__, "--one", str(unroll)]
            subprocess.run(run, env=env, check=True)


if __name__ == "__main__":
    main()
