"""Real data is a hard case for the one-hidden-layer solver: an erf FCN on the digits.

    python benchmarks/digits_fcn.py

An erf FCN (d = 64 pixels, σ_w² = σ_a² = 1, σ² = 0.01) on the parity of scikit-learn's digits,
n = 256: each width solved on its own from the GP limit (`fj.solve`, the default chain and
continuation). Printed per width: iterations, continuation stages, wall time (the first
includes compilation), relative residual, test error and χ. The same network on the Gaussian
single-index teacher (d = 64) for comparison.
"""

import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


def main() -> None:
    print(f"# {platform.processor() or platform.machine()}, jax {jax.__version__}")
    tasks = {
        "digits": fj.datasets.digits(256, 512, labels="parity"),
        "teacher": fj.datasets.single_index_teacher(256, 512, d=64, scale=1.5),
    }
    print(
        f"{'task':>8} {'C':>4} {'iters':>6} {'stages':>6} {'s':>7} {'resid':>8} "
        f"{'test':>8} {'chi':>6} conv"
    )
    for name, t in tasks.items():
        for C in (64.0, 16.0, 4.0, 2.0):
            net = fj.FCN(C, 1.0, 1.0, 0.01, fj.Erf())
            t0 = time.perf_counter()
            sol = jax.block_until_ready(fj.solve(net, t.X, t.Y))
            sec = time.perf_counter() - t0
            p = fj.predict(sol, t.X_test, t.Y_test)
            print(
                f"{name:>8} {C:4g} {int(sol.num_steps):6d} {int(sol.num_stages):6d} {sec:7.1f} "
                f"{float(sol.residual):8.1e} {float(p.test_error):8.4f} {float(p.chi):6.3g} "
                f"{'yes' if bool(sol.converged) else 'NO'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
