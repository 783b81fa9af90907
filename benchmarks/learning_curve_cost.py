"""The cost of `fj.learning_curve` (SPEC §5) at width inf and at finite width.

    python benchmarks/learning_curve_cost.py

A linear FCN (σ² = 0.01) on pools of M = 500 and 2000 points (d = 16, target tanh(x₁)), 20
training-set sizes from 2 to M/4: seconds for the first call (compilation included) and after
it (best of 3), with the last size's test error to compare versions (run it on two versions
back to back, e.g. with ``PYTHONPATH`` on a git worktree). Then the same for the jitted
gradient of Σ E_g in σ_w², with its value.
"""

import platform
import time
import warnings

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from learning_curve import first_and_best  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    warnings.simplefilter("ignore")  # sizes beyond M/4 are not asked for; nothing to say
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')}")
    rng = np.random.default_rng(0)
    for M in (500, 2000):
        X = rng.standard_normal((M, 16))
        Y = np.tanh(X[:, 0])
        ns = np.geomspace(2, M / 4, 20)
        for C in (np.inf, 8.0):
            net = fj.FCN(C, 1.0, 1.0, 0.01, fj.Linear())
            r, first, again = first_and_best(fj.learning_curve, net, X, Y, ns)
            print(
                f"M={M} C={C}: first {first:.2f} s, again {again:.3f} s, "
                f"E_g[-1]={float(r.test_error[-1]):.10g}",
                flush=True,
            )

            def total(sigma_w2, C=C, X=X, Y=Y, ns=ns):
                net = fj.FCN(C, sigma_w2, 1.0, 0.01, fj.Linear())
                return jnp.sum(fj.learning_curve(net, X, Y, ns).test_error)

            grad = jax.jit(jax.grad(total))
            g, first, again = first_and_best(grad, 1.0)
            print(
                f"  gradient: first {first:.2f} s, again {again:.3f} s, "
                f"dΣE_g/dσ_w²={float(g):.10g}",
                flush=True,
            )


if __name__ == "__main__":
    main()
