"""`fj.Quadrature` against the closed-form kernel of the same φ, in a full solve.

    python benchmarks/quadrature_solve.py --n 128 --d 16 --widths 8 --orders 40

A user with an activation that has no closed form solves with `fj.Quadrature(fn, order)`.
Here the same one-hidden-layer FCN (σ_w² = σ_a² = 1, σ² = 0.01, single-index teacher) is
solved with the closed form (`fj.Erf()` or `fj.ReLU()`) and with Gauss–Hermite quadrature of
the same φ, at each width of `--widths` from the GP limit: converged, iterations, stages, the
smallest eigenvalue of the solution's precision Σ⁻¹ (positive inside the EoS' domain), the
largest difference in Σ and F from the closed form, and the wall time of the first call
(compilation included) and, with `--repeat`, the best of that many further calls.
"""

import argparse
import datetime
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


PHI = {
    "erf": (jax.scipy.special.erf, fj.Erf(), True),
    "relu": (lambda h: jnp.maximum(h, 0.0), fj.ReLU(), False),
}


def run(net, X, Y, repeat: int):
    t0 = time.perf_counter()
    sol = jax.block_until_ready(fj.solve(net, X, Y))
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fj.solve(net, X, Y))
        best = min(best, time.perf_counter() - t0)
    return sol, first, best


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--widths", type=float, nargs="+", default=[8.0])
    p.add_argument("--phi", choices=sorted(PHI), nargs="+", default=["erf"])
    p.add_argument("--orders", type=int, nargs="+", default=[40])
    p.add_argument("--repeat", type=int, default=0)
    a = p.parse_args()
    print(f"# {platform.node()} {platform.processor()} jax {jax.__version__} {jax.devices()[0]}")
    print(f"# {datetime.date.today()} quadrature_solve.py n={a.n} d={a.d} ({fj.__file__})")
    task = fj.datasets.single_index_teacher(n=a.n, n_test=4, d=a.d, seed=0)
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    head = "phi   kernel          C       conv  steps stages  min eig Σ⁻¹   |ΔΣ|max    |ΔF|"
    print(head + "      first s   best s")
    for name in a.phi:
        fn, closed, odd = PHI[name]
        kernels = [("closed", closed)]
        kernels += [(f"quad({o})", fj.Quadrature(fn, order=o, odd=odd)) for o in a.orders]
        for C in a.widths:
            ref = None
            for label, act in kernels:
                net = fj.FCN(width=C, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=act)
                sol, first, best = run(net, X, Y, a.repeat)
                lam_min = float(np.linalg.eigvalsh(np.asarray(sol.precision))[0])
                if ref is None:
                    ref = sol
                dsig = float(jnp.max(jnp.abs(sol.sigma - ref.sigma)))
                dF = abs(float(sol.free_energy - ref.free_energy))
                print(
                    f"{name:5s} {label:10s} {C:7g}  {bool(sol.converged)!s:5s} "
                    f"{int(sol.num_steps):6d} {int(sol.num_stages):6d}  {lam_min:11.4g}  "
                    f"{dsig:9.2e} {dF:9.2e}  {first:8.1f} {best:8.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
