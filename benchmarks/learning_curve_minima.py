"""Which minimum the finite-width learning curve's averaged action takes (SPEC §5).

    python benchmarks/learning_curve_minima.py

The action in z = log u can have several minima, when targets lie along both large and tiny
eigenvalues of the kernel. The pools here have a diagonal kernel operator
diag(40 × big, 40 × small) and targets b on the big modes and c on the small ones. That is 320
configurations (big, small, b, c, C, σ²), each with n = 10, 40, 80, 160.

Each u(n) from `fj.learning_curve` is compared with the lowest minimum of an independent NumPy
action, S(z) = k(e^z − 1 − z) + ∫ g. Here g is the pull from the module docstring's averages.
Its roots are found on 2001 points and refined by brentq; S is compared by adaptive
quadrature. The script prints how many sizes were flagged and how many disagree. Run it on two
versions back to back, e.g. with ``PYTHONPATH`` on a git worktree. About 6 minutes on 2 cores.
"""

import itertools
import platform
import sys
import time
import warnings
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_learning_curve import _averaged_minima  # noqa: E402


def main():
    warnings.simplefilter("ignore")  # n = 160 exceeds the pool's M = 80: asked for here
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')} {fj.__file__}")
    M, ns, z = 80, [10.0, 40.0, 80.0, 160.0], np.linspace(-50, 50, 2001)
    flagged = several = wrong = 0
    grid = itertools.product(
        [1e4, 1e2],
        [1e-3, 1e-5],
        [0.0, 0.3, 1.0, 3.0, 10.0],
        [1.0, 3.0, 10.0, 30.0],
        [2.0, 6.0],
        [0.1, 0.01],
    )
    for big, small, b, c, C, noise in grid:
        eta = np.r_[np.full(40, big), np.full(40, small)]
        X = np.diag(np.sqrt(M * M * eta))  # a linear FCN with d = M: the operator K/M is diag(η)
        Y = np.r_[np.full(40, b), np.full(40, c)]
        curve = fj.learning_curve(fj.FCN(C, 1.0, 1.0, noise, fj.Linear()), X, Y, ns)
        for n, u, ok in zip(ns, np.asarray(curve.scale), np.asarray(curve.converged), strict=True):
            roots, actions = _averaged_minima(eta, Y**2 / M, n, noise, C / 2, z)
            several += len(roots) > 1
            flagged += not ok
            if abs(np.log(u) - roots[np.argmin(actions)]) > 2e-3:
                wrong += 1
                print(
                    f"big {big} small {small} b {b} c {c} C {C} σ² {noise} n {n}: "
                    f"log u {np.log(u):.3f}, NumPy's minima {np.round(roots, 3)}, "
                    f"S {np.round(actions, 3)}"
                )
    print(f"sizes 1280, with several minima {several}, flagged {flagged}, not the lowest {wrong}")


if __name__ == "__main__":
    main()
