"""The P×P saddle point's cost as n grows: an erf PatchCNN (P = 8 patches of 4), one output.

    python benchmarks/patch_saddle_cost.py 256 512 1024
    PYTHONPATH=/path/to/an/older/checkout python benchmarks/patch_saddle_cost.py 256 512 1024

Per n: `fj.renormalise(..., method="saddle")` at C = 64 (first call, with compilation) and at
C = 65 (no recompilation), and the reverse-mode gradient of test error + log evidence in
(σ_w², σ²) (first call, then again); the converged flag, test error, log evidence and
gradient, to compare two checkouts digit by digit. The first line names the package's path.
Run one checkout after the other, not side by side, on an otherwise idle machine.
"""

import sys
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import fls_jax as fj  # noqa: E402


def main(sizes):
    print("#", fj.__file__)
    for n in sizes:
        t = fj.datasets.linear_patch_teacher(n, 200, patch_size=4, patches=8, seed=1)
        X, Y, X_test, Y_test = t.X, t.Y[:, :1], t.X_test, t.Y_test[:, :1]
        seconds = []
        for C in (64.0, 65.0):
            net = fj.PatchCNN(C, 1.0, 1.0, 0.01, fj.Erf(), patch_size=4)
            t0 = time.perf_counter()
            r = jax.block_until_ready(fj.renormalise(net, X, Y, X_test, Y_test, method="saddle"))
            seconds.append(time.perf_counter() - t0)

        def loss(s, X=X, Y=Y, X_test=X_test, Y_test=Y_test):
            net = fj.PatchCNN(64.0, s[0], 1.0, s[1], fj.Erf(), patch_size=4)
            r = fj.renormalise(net, X, Y, X_test, Y_test, method="saddle")
            return r.test_error + r.log_evidence

        grad = jax.jit(jax.grad(loss))
        s0 = jnp.array([1.0, 0.01])
        for _ in range(2):
            t0 = time.perf_counter()
            g = jax.block_until_ready(grad(s0))
            seconds.append(time.perf_counter() - t0)
        print(
            f"n={n:5d} solve first {seconds[0]:7.2f} s again {seconds[1]:7.2f} s | gradient "
            f"first {seconds[2]:7.2f} s again {seconds[3]:7.2f} s | conv {bool(r.converged)} "
            f"test {float(r.test_error):.12e} logZ {float(r.log_evidence):.12e} grad {g}",
            flush=True,
        )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [256, 512, 1024])
