"""`fj.solve` where the targets are large against the noise (a hand run, stop 61).

A user who does not standardise the targets: an erf FCN (d = 8, n = 24 Gaussian inputs,
σ_w² = σ_a² = 1, σ² = 0.1) on y = s·sin(x₁) for s = 300, 1000 and 3000, at C = 8 and 2,
with each of the three named solvers, at the default `max_stages` (64) and at 400. Prints
whether the solve converged, its relative residual, the iterations and continuation stages,
and the wall time of the call (compiling included: the first row of each solver carries it).

    python benchmarks/solve_large_targets.py
"""

import time

import jax
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((24, 8))
    y = np.sin(X[:, 0])
    print("| solver | max_stages | targets | C | converged | residual | iterations | stages | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for solver in ("descent", "whitened-descent", "anderson-newton"):
        for max_stages in (64, 400):
            for s, C in ((300.0, 8.0), (1000.0, 8.0), (1000.0, 2.0), (3000.0, 8.0)):
                net = fj.FCN(C, 1.0, 1.0, 0.1, fj.Erf())
                start = time.perf_counter()
                sol = fj.solve(net, X, s * y, solver=solver, max_stages=max_stages)
                jax.block_until_ready(sol.residual)
                print(
                    f"| {solver} | {max_stages} | ×{s:.0f} | {C:.0f} | {bool(sol.converged)} | "
                    f"{float(sol.residual):.1e} | {int(sol.num_steps)} | {int(sol.num_stages)} | "
                    f"{time.perf_counter() - start:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
