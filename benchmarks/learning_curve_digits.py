"""Digits of the finite-width learning curve at tiny σ² (SPEC §5).

    python benchmarks/learning_curve_digits.py

The network is a linear FCN (d = 4, C = 4) on M = 120 inputs. The target x₁ + (x₂² − 1)/2 lies
partly outside the kernel's span, with n = 2 and 60 training points. At n = 60 > d the two terms
yᵀ(K + λ)⁻¹y/n and (training error)/λ are each ~1/σ², and their difference is O(1).

For each σ² from 10⁻² down to 10⁻¹⁶ the script prints u's relative error against 80-digit
decimal arithmetic on the curve's own spectrum (`tests/test_learning_curve.py`'s reference),
and `converged`. It then prints the relative error of ∂u/∂σ_w² and ∂χ_proxy/∂σ_w² at
σ_w² = 1.3 against central differences (h = 10⁻⁵), which limit the comparison to about
10⁻¹⁰. Run it on two versions back to back, e.g. with ``PYTHONPATH`` on a git worktree.
About a minute.
"""

import platform
import sys
import time
from decimal import Decimal as Dec
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_learning_curve import _decimal_curve  # noqa: E402


def main():
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')} {fj.__file__}")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4))
    Y = X[:, 0] + 0.5 * (X[:, 1] ** 2 - 1)
    ns = (2.0, 60.0)
    noises = (1e-2, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-14, 1e-16)
    for noise in noises:
        curve = fj.learning_curve(fj.FCN(4.0, 1.0, 1.0, noise, fj.Linear()), X, Y, ns)
        eta = [Dec(float(e)) for e in np.asarray(curve.eigenvalues)]
        power = np.asarray(curve.target_power)
        for i, n in enumerate(ns):
            u = float(_decimal_curve(eta, power, n, Dec(noise), 2.0)[0])
            print(
                f"σ² {noise:.0e} n {n:4.0f}: u {float(curve.scale[i]):.15e}, 80 digits {u:.15e}, "
                f"rel. error {abs(float(curve.scale[i]) / u - 1):.1e}, "
                f"converged {bool(curve.converged[i])}",
                flush=True,
            )
    for noise in noises:
        for field in ("scale", "chi_proxy"):

            def f(sigma_w2, noise=noise, field=field):
                net = fj.FCN(4.0, sigma_w2, 1.0, noise, fj.Linear())
                return getattr(fj.learning_curve(net, X, Y, [60.0]), field)[0]

            g, h = float(jax.grad(f)(1.3)), 1e-5
            fd = float((f(1.3 + h) - f(1.3 - h)) / (2 * h))
            print(
                f"σ² {noise:.0e} n 60: ∂{field}/∂σ_w² {g: .10e}, central difference {fd: .10e}, "
                f"rel. {abs(g / fd - 1):.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
