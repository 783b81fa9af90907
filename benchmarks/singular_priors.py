"""Deep networks on singular and ill-conditioned GP-limit priors Q^(l) (issue 4, SPEC §3).

    python benchmarks/singular_priors.py --part all

The deeper layers' EoS are solved for their precision shifts Δ_l = K^(l)⁻¹ − Q^(l−1)⁻¹, and
K^(l) = Q(I + ΔQ)⁻¹ is formed without Q⁻¹ (`fls_jax._linalg.shifted_covariance`), so a
singular Q (duplicate inputs, a deep linear FCN with n > d) is solved as any other. Each part
sets the solve beside a reference that never forms Q⁻¹ either, in the same run:

- `linear`: depth-2 linear FCNs with n > d (Q^(1) = σ_w² XΣXᵀ has rank d). Reference: the same
  variational problem in weight space, d×d only, written here in NumPy and root-found by
  MINPACK (the second layer's pre-activation is vᵀx with v ~ N(0, σ_w² Σ) a priori and
  N(0, S) in the posterior, so K^(2) = XSXᵀ; `tests/test_deep.py` derives it). Printed: the
  largest relative differences in Σ, K^(2) and the test mean, F's difference, and seconds.
- `duplicates`: an erf FCN of depth 3 with every training point twice and noise σ², against
  each point once with noise σ²/2: the same posterior over functions, so Σ, K^(l) (tiled),
  the test predictions must agree and F must differ by (nm/2) log(4πσ²).
- `conditioning`: depth-2 linear FCNs with n = d = 32 whose inputs' singular values fall from 1 to
  10⁻ᵏ, so κ(Q^(1)) ≈ 10²ᵏ: the same table as `linear`. Run it also with the code before
  this change (`PYTHONPATH=<checkout of 47aa21a> python benchmarks/singular_priors.py --part
  conditioning`), which formed Q⁻¹, to see what that cost in accuracy.
- `jitter`: the diagonal a singular Q's Cholesky needs, as a multiple c of eps · tr(Q), for
  rank-deficient kernels (n = 64–2048, 3 seeds): the worst case sets `_PRIOR_JITTER`.
"""

import argparse
import itertools
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._linalg import _PRIOR_JITTER  # noqa: E402


SW2, SA2 = 1.2, 0.9


def weight_space_eos(X, Y, C, noise):
    """Σ and S of a depth-2 linear FCN (width ratio 1) from its d×d weight-space EoS:
    S⁻¹ = (σ_w²Σ)⁻¹ − (σ_a²/C) XᵀAX, Σ₀⁻¹ = Σ⁻¹SΣ⁻¹/σ_w² (`tests/test_deep.py`), and F."""
    n, d = X.shape
    iu = np.triu_indices(d)
    k = len(iu[0])

    def sym(v):
        M = np.zeros((d, d))
        M[iu] = v
        return M + np.triu(M, 1).T

    def parts(v):
        S_inv, V_inv = sym(v[:k]), sym(v[k:])
        Sig, Sv = np.linalg.inv(S_inv), np.linalg.inv(V_inv)
        Kf = SA2 * X @ Sv @ X.T + noise * np.eye(n)
        Kfi = np.linalg.inv(Kf)
        T = Kfi @ Y
        r2 = np.linalg.inv(SW2 * Sig) - SA2 / C * X.T @ (T @ T.T - Kfi) @ X - V_inv
        r1 = d / SW2 * np.eye(d) - S_inv @ Sv @ S_inv / SW2
        return np.concatenate([r1[iu], r2[iu]]), Sig, Sv, Kf

    v0 = np.concatenate([(d / SW2 * np.eye(d))[iu], (d / SW2**2 * np.eye(d))[iu]])
    root = scipy.optimize.root(lambda v: parts(v)[0], v0, method="hybr", tol=1e-14)
    r, Sig, Sv, Kf = parts(root.x)

    def kl(S, P):
        return 0.5 * (
            np.trace(np.linalg.solve(P, S)) - np.linalg.slogdet(S)[1] + np.linalg.slogdet(P)[1] - d
        )

    D = 0.5 * np.sum(Y * np.linalg.solve(Kf, Y)) + 0.5 * np.linalg.slogdet(Kf)[1]
    D += 0.5 * n * Y.shape[1] * np.log(2 * np.pi)
    F = D + C * kl(Sig, SW2 / d * np.eye(d)) + C * kl(Sv, SW2 * Sig)
    return Sig, Sv, Kf, F, float(np.abs(r).max())


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


def compare(label, X, Y, X_test, C, noise):
    """One row: fls_jax's depth-2 linear solve against the weight-space reference."""
    net = fj.FCN(C, SW2, SA2, noise, fj.Linear(), depth=2)
    t0 = time.perf_counter()
    try:
        sol = fj.solve(net, X, Y)
        pred = jax.block_until_ready(fj.predict(sol, X_test))
    except ValueError as e:  # the code before this change refused singular priors
        print(f"{label} {C:5g} | refused: {str(e)[:60]}…", flush=True)
        return
    s_fj = time.perf_counter() - t0
    t0 = time.perf_counter()
    Sig, Sv, Kf, F, res = weight_space_eos(X, Y, C, noise)
    s_ref = time.perf_counter() - t0
    mean = SA2 * X_test @ Sv @ X.T @ np.linalg.solve(Kf, Y)
    print(
        f"{label} {C:5g} | {bool(sol.converged)!s:>5} {float(sol.residual):8.1e} "
        f"{int(sol.num_steps):5d} | {_rel(sol.sigma, Sig):8.1e} "
        f"{_rel(sol.kernels[0], X @ Sv @ X.T):8.1e} "
        f"{_rel(pred.mean, mean):8.1e} {float(sol.free_energy) - F:9.1e} | {res:7.0e} | "
        f"{s_fj:6.2f} {s_ref:6.2f}",
        flush=True,
    )


HEADER = (
    f"{'task':24} {'C':>5} | {'conv':>5} {'residual':>8} {'iters':>5} | {'Σ':>8} {'K^(2)':>8} "
    f"{'mean':>8} {'ΔF':>9} | {'ref res':>7} | {'s fj':>6} {'s ref':>6}"
)


def linear_part(widths, noise):
    print("\n## depth-2 linear FCN, n > d: fls_jax against the weight-space EoS (max rel. diff)")
    print(HEADER)
    for n, d in ((128, 32), (512, 32)):
        t = fj.datasets.linear_patch_teacher(n, 200, patch_size=8, patches=d // 8, seed=0)
        for C in widths:
            compare(f"n={n} d={d} (rank {d})", t.X, t.Y, t.X_test, C, noise)


def conditioning_part(widths, noise):
    print("\n## depth-2 linear FCN, n = d = 32, inputs' singular values 1 … 10⁻ᵏ: κ(Q^(1)) ≈ 10²ᵏ")
    print(HEADER)
    rng = np.random.default_rng(0)
    n = d = 32
    U = np.linalg.qr(rng.standard_normal((n, n)))[0]
    V = np.linalg.qr(rng.standard_normal((d, d)))[0]
    w = rng.standard_normal(d) / np.sqrt(d)
    X_test = rng.standard_normal((200, d))
    for k in (2, 4, 6, 7):
        X = np.sqrt(d) * U @ np.diag(np.logspace(0, -k, n)) @ V.T
        Y = (X @ w)[:, None] + 0.1 * np.tanh(X[:, :1])
        for C in widths:
            compare(f"k={k} (κ(Q) ≈ 1e{2 * k})", X, Y, X_test, C, noise)


def duplicates_part(widths, n):
    print(
        f"\n## erf FCN, depth 3, deep-erf teacher d = 32, n = {n}: every point twice (σ² = 2e-3) "
        f"against once (σ² = 1e-3)"
    )
    print(
        f"{'C':>6} | {'conv':>9} {'iters 2×/1×':>11} | {'Σ':>8} {'K^(2)':>8} {'K^(3)':>8} "
        f"{'mean':>8} {'variance':>8} {'ΔF − (n/2)log(4πσ²)':>20} | {'s 2×':>6} {'s 1×':>6}"
    )
    t = fj.datasets.deep_erf_teacher(n=n, n_test=200, d=32, depth=3, seed=0)
    X2, Y2 = np.concatenate([t.X, t.X]), np.concatenate([t.Y, t.Y])
    for C in widths:
        kw = dict(width=C, sigma_w2=2.0, sigma_a2=2.0 / 256, activation=fj.Erf(), depth=3)
        t0 = time.perf_counter()
        twice = fj.solve(fj.FCN(noise=2e-3, **kw), X2, Y2)
        p2 = jax.block_until_ready(fj.predict(twice, t.X_test))
        s2 = time.perf_counter() - t0
        t0 = time.perf_counter()
        once = fj.solve(fj.FCN(noise=1e-3, **kw), t.X, t.Y)
        p1 = jax.block_until_ready(fj.predict(once, t.X_test))
        s1 = time.perf_counter() - t0
        dK = [_rel(a, np.tile(b, (2, 2))) for a, b in zip(twice.kernels, once.kernels, strict=True)]
        dF = float(twice.free_energy - once.free_energy) - 0.5 * n * np.log(4 * np.pi * 2e-3)
        print(
            f"{C:6g} | {bool(twice.converged)!s:>4}/{bool(once.converged)!s:>4} "
            f"{int(twice.num_steps):5d}/{int(once.num_steps):<5d} | "
            f"{_rel(twice.sigma, once.sigma):8.1e} "
            f"{dK[0]:8.1e} {dK[1]:8.1e} {_rel(p2.mean, p1.mean):8.1e} "
            f"{_rel(p2.variance, p1.variance):8.1e} {dF:20.1e} | {s2:6.2f} {s1:6.2f}",
            flush=True,
        )


def jitter_part():
    """The least c (quarter-decades) with chol(Q + c eps tr(Q) I) finite, per kernel."""
    print("\n## jitter a singular Q's Cholesky needs, as c · eps · tr(Q)")
    eps, worst = np.finfo(float).eps, {}
    for seed, n, d in itertools.product(range(3), (64, 256, 1024, 2048), (2, 8, 32)):
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((n, d))
        Xd = np.concatenate([X[: n // 2], X[: n // 2]])
        q = 1 + 2 * np.sum(Xd**2, 1) / d
        kernels = {
            "linear, rank d": X @ X.T / d,
            "linear + 5": X @ X.T / d + 5.0,
            "linear + 50": X @ X.T / d + 50.0,
            "erf, duplicates": 2 / np.pi * np.arcsin(2 * (Xd @ Xd.T / d) / np.sqrt(np.outer(q, q))),
            "rank 1 + 1": np.outer(X[:, 0], X[:, 0]) + 1.0,
        }
        for name, Q in kernels.items():
            for c in 10.0 ** np.arange(-4, 3.01, 0.25):
                chol = np.asarray(
                    jnp.linalg.cholesky(jnp.asarray(Q + c * eps * np.trace(Q) * np.eye(n)))
                )
                if np.all(np.isfinite(chol)):
                    break
            key = (name, n)
            worst[key] = max(worst.get(key, 0.0), c)
    print(f"{'kernel':16} " + " ".join(f"{'n = ' + str(n):>9}" for n in (64, 256, 1024, 2048)))
    for name in dict.fromkeys(k for k, _ in worst):
        print(f"{name:16} " + " ".join(f"{worst[(name, n)]:9.2g}" for n in (64, 256, 1024, 2048)))
    print(f"worst: c = {max(worst.values()):.2g}; fls_jax uses {_PRIOR_JITTER:g}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--part", choices=["linear", "duplicates", "conditioning", "jitter", "all"], default="all"
    )
    p.add_argument("--widths", type=float, nargs="+", default=[4.0, 16.0, 64.0, 256.0])
    p.add_argument("--noise", type=float, default=0.05, help="σ² of the linear parts")
    p.add_argument("--n", type=int, default=128, help="distinct training points (duplicates)")
    a = p.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}, fls_jax from {fj.__file__}"
    )
    print("# (seconds include compilation at each new shape)")
    if a.part in ("linear", "all"):
        linear_part(a.widths, a.noise)
    if a.part in ("conditioning", "all"):
        conditioning_part(a.widths, a.noise)
    if a.part in ("duplicates", "all"):
        duplicates_part([3e4, 1e3, 90.0], a.n)
    if a.part in ("jitter", "all"):
        jitter_part()


if __name__ == "__main__":
    main()
