"""Which minimum `fj.renormalise`'s scalar saddle takes where u is tiny (SPEC §5).

    python benchmarks/renormalise_minima.py

S(log u) has two minima when the targets lie along both large and tiny eigenvalues of the
kernel: one where u is tiny (the large modes fitted by noise) and one where u is large. The
cases here have a diagonal kernel, n = 300, with n_b eigenvalues `big` carrying targets
N(0, b²) and 300 − n_b eigenvalues `small` carrying targets c, at random (big, small, b, c,
C, σ², depth 1 or 2, equal widths). One shape: one compilation per depth.

Each saddle's log u is compared with the lowest minimum of S on 90 001 points of
[−45, 45] (refined by a bounded scalar minimisation), where
S(z) = L k(e^{z/L} − 1 − z/L) − log N(y; 0, e^z K + σ²I) in NumPy. Printed: the cases with
two minima, how many were flagged, how many were not at the lowest minimum (log u off by
more than 10⁻³ and S higher by more than 10⁻⁶), and the largest relative gap between the
product of the layer scales and u. Run it on two versions back to back, e.g. with
``PYTHONPATH`` on a git worktree. About 2 minutes on 2 cores.
"""

import platform
import time
import warnings

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from scipy.optimize import minimize_scalar  # noqa: E402

import fls_jax as fj  # noqa: E402


N, CASES = 300, 500


def action(z, lam, y, noise, k, depth):
    z = np.atleast_1d(z)
    var = np.exp(z)[:, None] * lam + noise
    prior = depth * k * (np.expm1(z / depth) - z / depth)
    return prior + 0.5 * np.sum(y**2 / var + np.log(var), axis=1)


def lowest(lam, y, noise, k, depth):
    z = np.linspace(-45, 45, 90_001)
    s = np.concatenate([action(c, lam, y, noise, k, depth) for c in np.array_split(z, 30)])
    inner = np.flatnonzero((s[1:-1] < s[:-2]) & (s[1:-1] < s[2:])) + 1
    i = np.argmin(s)
    lo, hi = z[max(i - 1, 0)], z[min(i + 1, len(z) - 1)]
    best = minimize_scalar(
        lambda t: action(t, lam, y, noise, k, depth)[0],
        bounds=(lo, hi),
        method="bounded",
        options=dict(xatol=1e-10),
    )
    return best.x, best.fun, len(inner)


def main():
    warnings.simplefilter("ignore")
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')} {fj.__file__}")
    rng = np.random.default_rng(43)
    start = time.perf_counter()
    rows = []
    for _ in range(CASES):
        depth = int(rng.choice([1, 2]))
        nb = int(rng.integers(150, 260))
        big, small = 10 ** rng.uniform(4, 6), 10 ** rng.uniform(-7, -1)
        lam = np.r_[np.full(nb, big), np.full(N - nb, small)]
        y = np.r_[
            rng.normal(0, rng.choice([0.0, 0.1]), nb), np.full(N - nb, 10 ** rng.uniform(-2.5, 0))
        ]
        C = float(rng.choice([1.0, 2.0, 4.0]))
        noise = 10 ** rng.uniform(-6, -3)
        X = np.diag(np.sqrt(N * lam))  # the linear kernel XXᵀ/d is diag(λ)
        net = fj.FCN(C, 1.0, 1.0, noise, fj.Linear(), depth=depth)
        r = fj.renormalise(net, X, y, X[:2], method="saddle")
        z = float(np.log(r.scale))
        z_min, s_min, minima = lowest(lam, y, noise, C / 2, depth)
        wrong = abs(z - z_min) > 1e-3 and action(z, lam, y, noise, C / 2, depth)[0] > s_min + 1e-6
        product = float(np.prod(r.layer_scales) / r.scale - 1)
        rows.append((minima, bool(r.converged), wrong, abs(product), z_min))
    minima, converged, wrong, product, z_min = (np.array(c) for c in zip(*rows, strict=True))
    two = minima > 1
    print(
        f"{CASES} cases ({time.perf_counter() - start:.0f} s), {two.sum()} with two minima, "
        f"{(z_min < -13.8).sum()} with the lowest at u < 10⁻⁶"
    )
    print("| | flagged | not the lowest minimum | max |Π u_l / u − 1| |")
    print("|---|---|---|---|")
    print(f"| all | {(~converged).sum()} | {wrong.sum()} | {product.max():.1e} |")
    print(
        f"| two minima | {(~converged & two).sum()} | {(wrong & two).sum()} | "
        f"{product[two].max():.1e} |"
    )


if __name__ == "__main__":
    main()
