"""The authors' three-layer erf FCN sweep (issue 4): fls_jax vs a SciPy Newton–Krylov baseline.

    python benchmarks/deep_sweep.py --n 512 --widths 49 --baseline 3
    python benchmarks/deep_sweep.py --data reference            # the n = 128 reference data

Network (SPEC §3, ../shared/reference/fcn3_erf_n128): two erf hidden layers of width C, d = 32,
σ_w² = 2, σ_a² = 2/256, σ² = 1e-3, standard scaling. Widths: `--widths` values from 30000
down to 90, geometrically spaced (the authors' 49-step annealing covered the same range).

fls_jax solves the whole sweep in one call (`sweep`, path schedule: each width warm-starts
from the previous one, with its own adaptive continuation where a step is too long).

The baseline is what a user would otherwise write: `scipy.optimize.newton_krylov` on the upper
triangles of (Σ, K²), the EoS of SPEC §3 in the covariance domain written in NumPy with the
arcsin kernel's derivative by hand, warm-started from the previous width (and from the GP
limit at the first). It runs on the first `--baseline` widths only; its total for the whole
sweep is extrapolated from their mean and labelled so.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402

import fls_jax as fj  # noqa: E402


SW2, SA2, NOISE = 2.0, 2 / 256, 1e-3
REF = "tests/data/fcn3_erf_n128/"  # a copy of ../shared/reference/fcn3_erf_n128


def observables(Q, Y, noise):
    """alpha and rmse of the reference README (train set, L = 2)."""
    n = len(Y)
    Kf = Q + noise * np.eye(n)
    t = np.linalg.solve(Kf, Y)[:, 0]
    y = Y[:, 0]
    fluct = np.trace(Q - Q @ np.linalg.solve(Kf, Q)) / n
    return t @ y / (y @ y), np.sqrt((noise**2 * np.mean(t**2) + fluct) / np.var(y))


# ---- the baseline: NumPy EoS, SciPy Newton–Krylov --------------------------------------------


def _erf_kernel(K):
    a = 1 + 2 * np.diag(K)
    D = np.sqrt(np.outer(a, a))
    s = 2 * K / D
    return 2 / np.pi * np.arcsin(s), s, D, a


def _erf_pullback(G, s, D, a):
    """∂ tr[G Φ(K)]/∂K for the arcsin kernel, with the diagonal's dependence included."""
    dphi = 2 / np.pi / np.sqrt(1 - s**2)
    H = G * dphi
    return 2 * H / D - np.diag(2 * (H * s).sum(1) / a)


def numpy_residual(Sigma, K, X, Y, C):
    """(R_Σ, R_K) of SPEC §3 for L = 2 (covariance unknowns; r_1 = r_2 = 1)."""
    n, d = X.shape
    phi1, s1, D1, a1 = _erf_kernel(X @ Sigma @ X.T)
    Q = SW2 * phi1
    Qi = np.linalg.inv(Q)
    B = Qi @ K @ Qi - Qi
    R_sigma = d / SW2 * np.eye(d) - np.linalg.inv(Sigma)
    R_sigma -= X.T @ _erf_pullback(SW2 * 0.5 * (B + B.T), s1, D1, a1) @ X
    phi2, s2, D2, a2 = _erf_kernel(K)
    Kfi = np.linalg.inv(SA2 * phi2 + NOISE * np.eye(n))
    T = Kfi @ Y
    A = T @ T.T - Y.shape[1] * Kfi
    R_K = Qi - np.linalg.inv(K) - _erf_pullback(SA2 * A, s2, D2, a2) / C
    return R_sigma, R_K


def scipy_solve(X, Y, C, Sigma0, K0, f_tol=1e-9):
    d, n = X.shape[1], X.shape[0]
    iu_d, iu_n = np.triu_indices(d), np.triu_indices(n)

    def unpack(v):
        S = np.zeros((d, d))
        S[iu_d] = v[: len(iu_d[0])]
        K = np.zeros((n, n))
        K[iu_n] = v[len(iu_d[0]) :]
        return S + np.triu(S, 1).T, K + np.triu(K, 1).T

    def F(v):
        rs, rk = numpy_residual(*unpack(v), X, Y, C)
        return np.concatenate([rs[iu_d], rk[iu_n]])

    v0 = np.concatenate([Sigma0[iu_d], K0[iu_n]])
    v = scipy.optimize.newton_krylov(F, v0, f_tol=f_tol, maxiter=200)
    return unpack(v)


def baseline(X, Y, widths, count, rows, sols, t_fj):
    """The SciPy baseline on the first `count` widths, warm-started along them from the GP
    limit; compared with fls_jax's `rows` / `sols` where given."""
    Sigma = SW2 / X.shape[1] * np.eye(X.shape[1])
    K = SW2 * _erf_kernel(X @ Sigma @ X.T)[0]
    times = []
    for i, C in enumerate(widths[:count]):
        t0 = time.perf_counter()
        Sigma, K = scipy_solve(X, Y, C, Sigma, K)
        times.append(time.perf_counter() - t0)
        al, rm = observables(SA2 * _erf_kernel(K)[0], Y, NOISE)
        line = f"scipy newton_krylov C = {C:.0f}: {times[-1]:.1f} s; alpha {al:.8f}, rmse {rm:.8f}"
        if rows is not None:
            line += (
                f" (fls_jax {rows[i][1]:.8f}, {rows[i][2]:.8f}), |Σ − Σ_fj|/|Σ| = "
                f"{np.linalg.norm(Sigma - sols.sigma[i]) / np.linalg.norm(Sigma):.1e}"
            )
        print(line, flush=True)
    est = np.mean(times) * len(widths)
    line = (
        f"scipy baseline: {np.mean(times):.1f} s per width on the first {len(times)} "
        f"(widest, easiest) widths; extrapolated ≥ {est:.0f} s for the sweep"
    )
    if t_fj is not None:
        line += f" (vs fls_jax {t_fj:.1f} s: ≥ {est / t_fj:.1f}×)"
    print(line)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=["teacher", "reference"], default="teacher")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--widths", type=int, default=49)
    p.add_argument("--baseline", type=int, default=3, help="widths run by the SciPy baseline")
    p.add_argument("--plot", default="docs/deep_sweep.png")
    p.add_argument(
        "--newton", action="store_true", help="also run the sweep with damped Newton alone"
    )
    p.add_argument(
        "--schedule",
        choices=["path", "parallel"],
        default="path",
        help="path: a scan from wide to narrow; parallel: one vmapped call over all widths",
    )
    p.add_argument(
        "--baseline-only",
        action="store_true",
        help="run only the SciPy baseline (compare with a full run's table)",
    )
    a = p.parse_args()

    if a.data == "reference":
        X = np.load(REF + "X_train.npy").astype(float)
        Y = np.load(REF + "Y_train.npy").astype(float)
        X_test, Y_test = X[:64], Y[:64]
    else:
        task = fj.datasets.deep_erf_teacher(n=a.n, n_test=1000, d=32, depth=2, seed=0)
        X, Y, X_test, Y_test = task.X, task.Y, task.X_test, task.Y_test
    n = len(X)
    widths = np.geomspace(30000, 90, a.widths)
    net = fj.FCN(width=1.0, sigma_w2=SW2, sigma_a2=SA2, noise=NOISE, activation=fj.Erf(), depth=2)
    print(
        f"machine: {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"devices {jax.devices()}"
    )
    print(
        f"data: {a.data}, n = {n}, d = {X.shape[1]}; {len(widths)} widths {widths[0]:.0f} … "
        f"{widths[-1]:.0f}"
    )

    if a.baseline_only:
        baseline(X, Y, widths, a.baseline, None, None, None)
        return
    t0 = time.perf_counter()
    sols, preds = fj.sweep(net, X, Y, widths, X_test, Y_test, schedule=a.schedule)
    jax.block_until_ready(preds.mean)
    t_fj = time.perf_counter() - t0
    t0 = time.perf_counter()
    fj.sweep(net, X, Y, widths[:2], X_test, Y_test, schedule=a.schedule)
    t_small = time.perf_counter() - t0
    print(
        f"fls_jax sweep: {t_fj:.1f} s for {len(widths)} widths in one call (compilation "
        f"included; a 2-width call of the same shapes took {t_small:.1f} s)"
    )

    if a.newton:
        from fls_jax._solve import _newton

        t0 = time.perf_counter()
        s_nt, p_nt = fj.sweep(
            net, X, Y, widths, X_test, Y_test, schedule="path", solver=_newton(np.float64, 2)
        )
        jax.block_until_ready(p_nt.mean)
        t_nt = time.perf_counter() - t0
        rel = max(
            float(np.linalg.norm(u - v) / np.linalg.norm(v))
            for u, v in zip(sols.kernels[-1], s_nt.kernels[-1], strict=True)
        )
        print(
            f"same sweep, damped Newton alone (the previous default): {t_nt:.1f} s incl. "
            f"compilation; converged {int(np.sum(s_nt.converged))}/{len(widths)}, Newton "
            f"steps median {np.median(s_nt.num_steps):.0f}; max |K² − K²_Newton|/|K²_Newton| "
            f"= {rel:.1e}"
        )

    rows = []
    for i, C in enumerate(widths):
        Q = np.asarray(net.post_kernel(2, sols.kernels[-1][i]))  # no width dependence
        al, rm = observables(Q, Y, NOISE)
        rows.append((C, al, rm))
    print(
        f"\n{'C':>8} {'conv':>5} {'residual':>9} {'steps':>5} {'stages':>6} {'alpha':>10} "
        f"{'rmse':>9} {'chi':>7} {'test_err':>9}"
    )
    for i, (C, al, rm) in enumerate(rows):
        print(
            f"{C:8.0f} {bool(sols.converged[i])!s:>5} {float(sols.residual[i]):9.1e} "
            f"{int(sols.num_steps[i]):5d} {int(sols.num_stages[i]):6d} {al:10.5f} {rm:9.6f} "
            f"{float(preds.chi[i]):7.3f} {float(preds.test_error[i]):9.2e}"
        )
    print(
        f"converged {int(np.sum(sols.converged))}/{len(widths)}; max residual "
        f"{float(np.max(sols.residual)):.1e}; iterations median "
        f"{np.median(sols.num_steps):.0f}, max {int(np.max(sols.num_steps))}"
    )

    if a.baseline:
        baseline(X, Y, widths, a.baseline, rows, sols, t_fj)

    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        C, al, rm = np.array(rows).T
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        ax[0].semilogx(C, rm, "o-", ms=3)
        ax[0].set(xlabel="width C", ylabel="rmse (train)", title=f"3-layer erf FCN, n = {n}")
        ax[1].semilogx(C, al, "o-", ms=3)
        ax[1].set(xlabel="width C", ylabel="alpha")
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        print(f"plot: {a.plot}")


if __name__ == "__main__":
    main()
