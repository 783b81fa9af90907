"""Digits of `fj.renormalise` at tiny σ² (SPEC §5): the saddle's u* against 80 digits.

    python benchmarks/renormalise_digits.py

The network is a linear FCN (d = 4, C = 4) trained on n = 60 points. The target
x₁ + (x₂² − 1)/2 lies partly outside the kernel's span, so the pull's n − σ² tr R and
yᵀRy − σ²yᵀR²y are each ~1/σ².

For σ² from 10⁻² down to 10⁻¹⁴ the script prints:
- the saddle's u* against 80-digit decimal arithmetic on the exact spectrum (the SVD of X);
- ∂u/∂σ_w² of the saddle and of the mixture (E[u | Y]) against central differences
  (h = 10⁻⁵);
- the mixture's E[u | Y] and both methods' test errors, at σ_w² = 1.3 and 1.3 + 10⁻⁵. Where
  these change by more than ~10⁻⁵ the digits are lost: the predictions carried K_*'s
  rounding along K's null modes, divided by σ², until stop 43;
- the GP mean (C = ∞, both methods) at the test points against decimal arithmetic in the
  d×d dual form c X_*(c XᵀX + σ²)⁻¹Xᵀy, c = σ_w²/d.

Run it on two versions back to back, e.g. with ``PYTHONPATH`` on a git worktree.
"""

import platform
import time
import warnings
from decimal import Decimal as Dec, localcontext

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    warnings.simplefilter("ignore")
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')} {fj.__file__}")
    rng = np.random.default_rng(0)
    n, d, C = 60, 4, 4.0
    X = rng.standard_normal((n, d))
    Y = X[:, 0] + 0.5 * (X[:, 1] ** 2 - 1)
    X_test = rng.standard_normal((5, d))
    Y_test = X_test[:, 0] + 0.5 * (X_test[:, 1] ** 2 - 1)
    Uq, sv, _ = np.linalg.svd(X, full_matrices=True)
    y2 = (Uq.T @ Y) ** 2

    def reference(noise, sigma_w2=1.0):
        with localcontext() as ctx:
            ctx.prec = 80
            lam = [Dec(float(v)) ** 2 / d * Dec(sigma_w2) for v in sv] + [Dec(0)] * (n - d)
            ys, s = [Dec(float(v)) for v in y2], Dec(noise)

            def gap(z):
                u = z.exp()
                g = n - s * sum(1 / (u * l + s) for l in lam)
                g -= sum(
                    y / (u * l + s) - s * y / (u * l + s) ** 2 for y, l in zip(ys, lam, strict=True)
                )
                return Dec(C / 2) * (u - 1) + g / 2

            lo, hi = Dec(-5), Dec(5)
            for _ in range(200):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
            return float(((lo + hi) / 2).exp())

    def run(noise, sigma_w2, method):
        net = fj.FCN(C, sigma_w2, 1.0, noise, fj.Linear())
        return fj.renormalise(net, X, Y, X_test, Y_test, method=method)

    noises = (1e-2, 1e-6, 1e-8, 1e-10, 1e-12, 1e-14)
    for noise in noises:
        r = run(noise, 1.0, "saddle")
        u = reference(noise)
        print(
            f"σ² {noise:.0e}: saddle u* {float(r.scale):.15e}, 80 digits {u:.15e}, "
            f"rel. error {abs(float(r.scale) / u - 1):.1e}, converged {bool(r.converged)}",
            flush=True,
        )
    for method in ("saddle", "mixture"):
        for noise in noises:

            def f(sigma_w2, noise=noise, method=method):
                return run(noise, sigma_w2, method).scale

            g, h = float(jax.grad(f)(1.3)), 1e-5
            fd = float((f(1.3 + h) - f(1.3 - h)) / (2 * h))
            print(
                f"{method} σ² {noise:.0e}: ∂u/∂σ_w² {g: .10e}, central difference {fd: .10e}, "
                f"rel. {abs(g / fd - 1):.1e}",
                flush=True,
            )

    def gp_mean(noise, sigma_w2=1.0):
        with localcontext() as ctx:
            ctx.prec = 60
            c = Dec(sigma_w2) / d
            Xd = [[Dec(float(v)) for v in r] for r in X]
            rows = [  # [c XᵀX + σ² | c Xᵀy], reduced by Gauss–Jordan (SPD)
                [c * sum(r[i] * r[j] for r in Xd) + (Dec(noise) if i == j else 0) for j in range(d)]
                + [c * sum(r[i] * Dec(float(t)) for r, t in zip(Xd, Y, strict=True))]
                for i in range(d)
            ]
            for i in range(d):
                rows[i] = [a / rows[i][i] for a in rows[i]]
                for j in range(d):
                    if j != i:
                        rows[j] = [
                            a - rows[j][i] * p for a, p in zip(rows[j], rows[i], strict=True)
                        ]
            w = [r[d] for r in rows]
            return np.array(
                [float(sum(Dec(float(x)) * v for x, v in zip(r, w, strict=True))) for r in X_test]
            )

    for noise in noises:
        ref = gp_mean(noise)
        errors = []
        for method in ("saddle", "mixture"):
            r = fj.renormalise(
                fj.FCN(np.inf, 1.0, 1.0, noise, fj.Linear()), X, Y, X_test, method=method
            )
            errors.append(np.max(np.abs(np.asarray(r.mean)[:, 0] - ref)) / np.max(np.abs(ref)))
        print(
            f"σ² {noise:.0e}: GP mean, max rel. error against decimal: saddle {errors[0]:.1e}, "
            f"mixture {errors[1]:.1e}",
            flush=True,
        )
    for noise in noises:
        for sigma_w2 in (1.3, 1.3 + 1e-5):
            m, s = run(noise, sigma_w2, "mixture"), run(noise, sigma_w2, "saddle")
            print(
                f"σ² {noise:.0e} σ_w² {sigma_w2}: mixture E[u] {float(m.scale):.12f} "
                f"(converged {bool(m.converged)}), test error {float(m.test_error):.12f}; "
                f"saddle test error {float(s.test_error):.12f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
