"""F at very large widths against the GP limit's (the KL terms' rounding, multiplied by C).

    python benchmarks/free_energy_wide.py

An erf FCN (n = 32, d = 4, σ² = 0.01) of depth 1, 2 and 3, solved at C = 10⁶ … 10¹⁵ and at
C = ∞. The solution's F minus the GP limit's must be ≤ 0 (the prior is an admissible point)
and shrink like 1/C; the KL terms, each multiplied by C in F, used to carry rounding of
O(eps) that C then multiplied. Also F at Σ = Σ₀ exactly (`fj.free_energy`, depth 1), which
must equal the GP limit's at every width.
"""

import platform

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    print(f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, float64")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(32, 4))
    y = np.tanh(X @ rng.normal(size=4))
    widths = (1e6, 1e9, 1e12, 1e15)
    print(f"{'depth':>5} " + " ".join(f"{f'C = {C:.0e}':>12}" for C in widths) + "   (F - F_GP)")
    for depth in (1, 2, 3):

        def net(C, depth=depth):
            return fj.FCN(C, 1.0, 1.0, 0.01, fj.Erf(), depth=depth)

        gp = float(fj.solve(net(np.inf), X, y).free_energy)
        gaps = []
        for C in widths:
            sol = fj.solve(net(C), X, y)
            assert bool(sol.converged)
            gaps.append(float(sol.free_energy) - gp)
        print(f"{depth:5d} " + " ".join(f"{g:12.3e}" for g in gaps))
    sigma0 = np.eye(4) / 4
    gp = float(fj.free_energy(fj.FCN(np.inf, 1.0, 1.0, 0.01, fj.Erf()), sigma0, X, y[:, None]))
    at_prior = [
        float(fj.free_energy(fj.FCN(C, 1.0, 1.0, 0.01, fj.Erf()), sigma0, X, y[:, None])) - gp
        for C in widths
    ]
    print("F(Σ₀) - F_GP, depth 1: " + " ".join(f"{g:10.3e}" for g in at_prior))


if __name__ == "__main__":
    main()
