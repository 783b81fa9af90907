"""Cost of the m-output importance sampler (`renormalise`, method="mixture", 16384 draws; a
linear FCN, C = 16, n = 128, d = 16) for m = 2, 5, 10 outputs: the first call and the best
of two more, and with ``--reverse`` the same for the gradient of log Z in (σ², C) under a
vmap over three widths. Run it against two checkouts to compare them:

    python benchmarks/output_mixture_cost.py [--reverse]
    PYTHONPATH=/path/to/other/checkout python benchmarks/output_mixture_cost.py
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reverse", action="store_true", help="time vmap(grad) over widths")
    args = parser.parse_args()
    print("fls_jax from", fj.__file__)
    rng = np.random.default_rng(0)
    n, d = 128, 16
    X, X_test = rng.standard_normal((n, d)), rng.standard_normal((64, d))
    for m in (2, 5, 10):
        Y = X @ rng.standard_normal((d, m)) / np.sqrt(d) + 0.1 * rng.standard_normal((n, m))

        def evidence(noise, width, Y=Y):
            net = fj.FCN(width, 1.0, 1.0, noise, fj.Linear())
            r = fj.renormalise(net, X, Y, X_test, draws=16384)
            return r.log_evidence

        if args.reverse:
            f = jax.jit(jax.vmap(jax.grad(evidence, argnums=(0, 1)), in_axes=(None, 0)))
            inputs = (0.01, jnp.array([16.0, 32.0, 64.0]))
        else:
            f = jax.jit(evidence)
            inputs = (0.01, 16.0)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            value = jax.block_until_ready(f(*inputs))
            times.append(time.perf_counter() - t0)
        shown = np.concatenate([np.ravel(v) for v in jax.tree.leaves(value)])
        print(f"m={m:3d} first {times[0]:6.2f} s, again {min(times[1:]):6.2f} s, value {shown}")


if __name__ == "__main__":
    main()
