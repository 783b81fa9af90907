"""Past a fold: the whole curve of EoS solutions in width, with `fj.trace` (stop 65).

    python benchmarks/deep_fold_branches.py [--seed 0] [--noise 1e-3] [--start 8] [--to 2]

A depth-3 erf FCN in the authors' style (σ_w² = 2, σ_a² = 0.25) on the inputs and sine
targets of `deep_narrow_scan.py` (n = 20, d = 5; 815 unknowns). `fj.solve` follows the branch
of solutions that starts at the GP limit and stops where it folds back (`width_reached`,
stop 64). `fj.trace` follows the curve of solutions through its folds by pseudo-arclength
continuation with dense Jacobians, from `fj.solve`'s solution at `--start` to `--to`.

It prints the folds, each branch (its widths, F, and how many negative eigenvalues F's
Hessian has: 0 at a minimum of F, 1 at a saddle), F of every branch on a grid of widths where
three coexist (`fj.solve` started from each branch's point there), and the width where the
two outer branches' F cross. Then at each `--check` width
each branch's point is handed to `fj.solve` as `precision0` (with the default chain, and with
its Newton–GMRES alone), next to `fj.solve`'s own continuation from the GP limit.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from deep_narrow_scan import inputs, targets


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402
from fls_jax._solve import _newton  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=1e-3)
    p.add_argument("--start", type=float, default=8.0)
    p.add_argument("--to", type=float, default=2.0)
    p.add_argument("--check", type=float, nargs="*", default=[3.65, 3.0, 2.0])
    a = p.parse_args()
    print(
        f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')}, "
        f"seed {a.seed}, σ² = {a.noise:g}, C from {a.start:g} to {a.to:g}"
    )
    X = jnp.asarray(inputs())
    Y = jnp.asarray(targets(np.asarray(X), a.seed))

    def net_at(C):
        return fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=a.noise)

    t0 = time.perf_counter()
    tr = fj.trace(net_at(a.start), X, Y, a.to)
    C, F = np.asarray(tr.widths), np.asarray(tr.free_energy)
    index, branch = np.asarray(tr.index), np.asarray(tr.branch)
    print(
        f"{len(C)} points in {time.perf_counter() - t0:.0f} s ({tr.message}); largest "
        f"relative residual {float(tr.residual.max()):.1e}"
    )

    print(
        "\n| fold | C* (last point before) | negative eigenvalues of F's Hessian: before → after |"
    )
    print("| --- | --- | --- |")
    for i, k in enumerate(np.asarray(tr.folds)):
        print(f"| {i + 1} | {C[k - 1]:.5f} | {index[k - 1]} → {index[k]} |")

    sv = np.asarray(tr.smallest_singular_value)
    print(
        "\n| branch | points | C from | to | negative eigenvalues of F's Hessian | F from | to "
        "| Jacobian's smallest singular value: first, least (at C), last |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for b in range(branch.max() + 1):
        k = np.flatnonzero(branch == b)
        m = k[np.argmin(sv[k])]
        print(
            f"| {b} | {len(k)} | {C[k[0]]:.5f} | {C[k[-1]]:.5f} | "
            f"{sorted(set(index[k].tolist()))} | {F[k[0]]:.6f} | {F[k[-1]]:.6f} | "
            f"{sv[k[0]]:.2g}, {sv[m]:.2g} ({C[m]:.4f}), {sv[k[-1]]:.2g} |"
        )

    def solved(c, b):
        """F of branch b at width c: `fj.solve` from the trace's point there (None if b does
        not pass c)."""
        for bb, p0 in tr.at(c):
            if bb == b:
                sol = fj.solve(net_at(c), X, Y, precision0=p0)
                return sol if bool(sol.converged) else None
        return None

    if branch.max() >= 2:
        lo = max(C[branch == 0].min(), C[branch == 2].min())
        hi = min(C[branch == 0].max(), C[branch == 2].max(), C[branch == 1].max())
        print("\n| C | F, branch 0 | F, branch 1 | F, branch 2 | F₂ − F₀ |")
        print("| --- | --- | --- | --- | --- |")
        for c in np.linspace(lo, hi, 9)[1:-1]:
            fs = [solved(c, b) for b in range(3)]
            cells = " | ".join("" if s is None else f"{float(s.free_energy):.6f}" for s in fs)
            diff = (
                ""
                if fs[0] is None or fs[2] is None
                else f"{float(fs[2].free_energy - fs[0].free_energy):+.2e}"
            )
            print(f"| {c:.5f} | {cells} | {diff} |")

        def gap(c):
            return float(solved(c, 2).free_energy - solved(c, 0).free_energy)

        cross = scipy.optimize.brentq(gap, lo + 1e-3, hi - 1e-3, xtol=1e-6)
        print(f"F of branches 0 and 2 cross at C = {cross:.5f}")

    print(
        "\n| C | branch | F | from `precision0` (default chain): converged, residual, iterations |"
    )
    print("| --- | --- | --- | --- |")
    newton = _newton(X.dtype, 3, X.shape[1])  # the default chain's second solver, alone
    for c in a.check:
        default = fj.solve(net_at(c), X, Y)
        for b, p0 in tr.at(c):
            sol = fj.solve(net_at(c), X, Y, precision0=p0)
            alone = fj.solve(net_at(c), X, Y, precision0=p0, solver=newton)
            diff = float(
                jnp.max(jnp.abs(sol.sigma - default.sigma)) / jnp.max(jnp.abs(default.sigma))
            )
            print(
                f"| {c:g} | {b} | {float(sol.free_energy):.6f} | {bool(sol.converged)}, "
                f"{float(sol.residual):.1e}, {int(sol.num_steps)}; max |ΔΣ| against "
                f"`fj.solve`'s: {diff:.1e}; Newton–GMRES alone: {bool(alone.converged)}, "
                f"{int(alone.num_steps)} steps |"
            )
        print(
            f"| {c:g} | `fj.solve` from the GP limit | {float(default.free_energy):.6f} | "
            f"converged {bool(default.converged)}, width reached "
            f"{float(default.width_reached):.5f} |"
        )


if __name__ == "__main__":
    main()
