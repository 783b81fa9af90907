"""The first call (compilation included) of the matrix saddle and of its gradient.

    python benchmarks/matrix_saddle_compile.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/matrix_saddle_compile.py

An erf PatchCNN (P = 8 patches of 4, n = 64, one output) and a linear FCN with m = 2 outputs
(n = 16, d = 8), both at C = 8, σ² = 0.01: the wall time of the first `fj.renormalise(...,
method="saddle")`, then of the first jit-compiled reverse-mode gradient of log Z in C. On 2
cores most of it is XLA compiling; run each checkout in a fresh process, one after the other.
"""

import time

import jax
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


def main() -> None:
    print("#", fj.__file__)
    t = fj.datasets.linear_patch_teacher(64, 20, patch_size=4, patches=8, seed=1)
    rng = np.random.default_rng(11)
    X, X_test, Y = (
        rng.standard_normal((16, 8)),
        rng.standard_normal((20, 8)),
        rng.standard_normal((16, 2)),
    )
    cases = [
        (
            "erf PatchCNN P=8",
            lambda c: fj.PatchCNN(c, 1.0, 1.0, 0.01, fj.Erf(), patch_size=4),
            t.X,
            t.Y[:, :1],
            t.X_test,
        ),
        ("linear FCN m=2", lambda c: fj.FCN(c, 1.0, 1.0, 0.01, fj.Linear()), X, Y, X_test),
    ]
    for name, make, X, Y, X_test in cases:
        t0 = time.perf_counter()
        r = fj.renormalise(make(8.0), X, Y, X_test, method="saddle")
        jax.block_until_ready(r.mean)
        t1 = time.perf_counter()

        def log_z(c, make=make, X=X, Y=Y, X_test=X_test):
            return fj.renormalise(make(c), X, Y, X_test, method="saddle").log_evidence

        jax.block_until_ready(jax.jit(jax.grad(log_z))(8.0))
        t2 = time.perf_counter()
        print(f"{name}: solve first call {t1 - t0:.2f} s, gradient first call {t2 - t1:.2f} s")


if __name__ == "__main__":
    main()
