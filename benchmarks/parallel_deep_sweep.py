"""A three-layer erf FCN swept over widths with the parallel schedule (`jax.vmap`) on CPU.

    python benchmarks/parallel_deep_sweep.py

n = 128, d = 32 (Gaussian inputs, target tanh(x₁ + x₂/2)), σ_w² = 2, σ_a² = 2/256,
σ² = 10⁻³, 8 widths from 3000 down to 90: `fj.sweep(schedule="parallel")`, three calls (the
first compiles). Prints each call's seconds, then the widths' convergence, steps and test
errors, to compare two versions run back to back (e.g. with ``PYTHONPATH`` on a worktree).
"""

import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((128, 32))
    Y = np.tanh(X[:, 0] + 0.5 * X[:, 1])
    widths = jnp.geomspace(3000, 90, 8)
    net = fj.FCN(100.0, 2.0, 2 / 256, 1e-3, fj.Erf(), depth=2)
    for _ in range(3):
        t = time.perf_counter()
        sol, pred = jax.block_until_ready(
            fj.sweep(net, X, Y, widths, X[:20], Y[:20], schedule="parallel")
        )
        print(f"parallel 8 widths: {time.perf_counter() - t:.2f} s", flush=True)
    print(np.asarray(sol.converged), np.asarray(sol.num_steps))
    print(np.asarray(pred.test_error))


if __name__ == "__main__":
    main()
