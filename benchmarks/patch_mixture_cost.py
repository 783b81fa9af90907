"""Cost of a linear PatchCNN's P×P importance sampler (`renormalise`, method="mixture",
20000 draws; P = 4, n = 48) at C = 4, 16, 256: the first call and the best of two more.
Run it against two checkouts to compare them:

    python benchmarks/patch_mixture_cost.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/patch_mixture_cost.py
"""

import time

import jax
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


def timed(net, X, Y, X_test):
    t0 = time.perf_counter()
    value = jax.block_until_ready(fj.renormalise(net, X, Y, X_test, draws=20000).log_evidence)
    return time.perf_counter() - t0, float(value)


def main():
    print("fls_jax from", fj.__file__)
    rng = np.random.default_rng(0)
    n, d = 48, 32
    X, X_test = rng.standard_normal((n, d)), rng.standard_normal((64, d))
    Y = X[:, :8].sum(1) / np.sqrt(8)
    for C in (4.0, 16.0, 256.0):
        net = fj.PatchCNN(C, 1.0, 1.0, 0.01, fj.Linear(), patch_size=8)
        first, value = timed(net, X, Y, X_test)
        again = min(timed(net, X, Y, X_test)[0] for _ in range(2))
        print(f"C={C:6.0f} first {first:6.2f} s, again {again:6.2f} s, log Z {value:.10f}")


if __name__ == "__main__":
    main()
