"""Width sweep: fls_jax (vmapped; Python loop of jitted solves) vs a plain NumPy fixed point.

    python benchmarks/width_sweep.py --arch cnn --n 128 --widths 50 --baseline 3

The baseline is what a user would otherwise write: the damped fixed-point iteration of the
EoS in the precision domain, Λ ← ½Λ + ½[Σ₀⁻¹ − (1/C) ∂_Σ tr(A Q_f)], in NumPy, with the
kernel derivative written by hand (linear PatchCNN: closed form; erf FCN: arcsin kernel).
It runs on a few widths; its per-width time is reported as measured, not extrapolated.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


def _rhs_linear_cnn(Sigma, X, Y, S, C, sw2, sa2, noise):
    n, d = X.shape
    Xp = np.transpose(X.reshape(n, d // S, S), (1, 0, 2))
    P = len(Xp)
    Qf = sa2 / P * sum(Xi @ Sigma @ Xi.T for Xi in Xp)
    Kinv = np.linalg.inv(Qf + noise * np.eye(n))
    T = Kinv @ Y
    A = T @ T.T - Y.shape[1] * Kinv
    return S / sw2 * np.eye(S) - sa2 / (C * P) * sum(Xi.T @ A @ Xi for Xi in Xp)


def _rhs_erf_fcn(Sigma, X, Y, S, C, sw2, sa2, noise):
    n, d = X.shape
    K = X @ Sigma @ X.T
    a = np.diag(K)
    D = np.sqrt(np.outer(1 + 2 * a, 1 + 2 * a))
    u = 2 * K / D
    Kinv = np.linalg.inv(sa2 * 2 / np.pi * np.arcsin(u) + noise * np.eye(n))
    T = Kinv @ Y
    A = T @ T.T - Y.shape[1] * Kinv
    dphi = sa2 * 2 / np.pi / np.sqrt(1 - u**2)
    phi_a = dphi * (-u / (1 + 2 * a)[:, None])
    M = A * dphi * 2 / D + np.diag((A * phi_a).sum(1) + (A * phi_a.T).sum(0))
    return d / sw2 * np.eye(d) - X.T @ M @ X / C


def numpy_fixed_point(rhs, X, Y, S, C, sw2, sa2, noise, tol=1e-10, max_iter=20000):
    lam = S / sw2 * np.eye(S)
    for it in range(1, max_iter + 1):
        new = rhs(np.linalg.inv(lam), X, Y, S, C, sw2, sa2, noise)
        if np.linalg.norm(new - lam) <= tol * np.linalg.norm(lam):
            return new, it, True
        if not np.all(np.isfinite(new)) or np.linalg.eigvalsh(0.5 * (new + new.T))[0] <= 0:
            return lam, it, False
        lam = 0.5 * lam + 0.5 * new
    return lam, max_iter, False


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", choices=["cnn", "fcn"], default="cnn")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--widths", type=int, default=50, help="number of widths, 4 … 4096")
    p.add_argument("--baseline", type=int, default=3, help="widths for the NumPy baseline")
    p.add_argument("--loop", type=int, default=50, help="widths for the fls_jax Python loop")
    p.add_argument(
        "--schedule", choices=["auto", "parallel", "path"], default="auto", help="fj.sweep schedule"
    )
    p.add_argument("--repeat", type=int, default=1, help="timed sweeps after the first call")
    a = p.parse_args()
    sw2, sa2, noise = 1.0, 1.0, 0.01
    if a.arch == "cnn":
        S, P = 16, 8
        task = fj.datasets.linear_patch_teacher(a.n, 200, S, P, seed=0)
        net = fj.PatchCNN(
            patch_size=S, width=1.0, sigma_w2=sw2, sigma_a2=sa2, noise=noise, activation=fj.Linear()
        )
        rhs, what = _rhs_linear_cnn, f"linear PatchCNN n={a.n} S={S} P={P}"
    else:
        S = 32
        task = fj.datasets.single_index_teacher(a.n, 200, S, seed=0)
        net = fj.FCN(width=1.0, sigma_w2=sw2, sigma_a2=sa2, noise=noise, activation=fj.Erf())
        rhs, what = _rhs_erf_fcn, f"erf FCN n={a.n} d={S}"
    widths = np.geomspace(4, 4096, a.widths)
    print(
        f"# {what}, σ²={noise}, {a.widths} widths 4…4096, {platform.node()} "
        f"{jax.default_backend()} {time.strftime('%Y-%m-%d')}"
    )

    # 1. fls_jax: one jit-compiled sweep. First call = compile + run.
    def run_sweep():
        out = fj.sweep(net, task.X, task.Y, widths, task.X_test, task.Y_test, schedule=a.schedule)
        return jax.block_until_ready(out)

    t0 = time.perf_counter()
    sol, pred = run_sweep()
    first = time.perf_counter() - t0
    vmapped = first
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        sol, pred = run_sweep()
        vmapped = time.perf_counter() - t0

    # 2. fls_jax: a Python loop of jitted solves (compiled once, reused for every width).
    solve = eqx.filter_jit(fj.solve)
    loop_w = widths[np.linspace(0, len(widths) - 1, min(a.loop, len(widths))).astype(int)]
    if a.loop:
        one = eqx.tree_at(lambda m: m.width, net, jnp.asarray(float(loop_w[0])))
        jax.block_until_ready(solve(one, task.X, task.Y))  # compile
    t0 = time.perf_counter()
    loop_steps = [0]
    for C in loop_w:
        s = solve(eqx.tree_at(lambda m: m.width, net, jnp.asarray(float(C))), task.X, task.Y)
        loop_steps.append(int(s.num_steps))
        jax.block_until_ready(s)
    loop = time.perf_counter() - t0

    print(
        f"{'C':>8} {'steps':>5} {'stages':>6} {'residual':>9} {'conv':>4} {'chi':>7} "
        f"{'test err':>9}"
    )
    for k, C in enumerate(widths):
        print(
            f"{C:8.1f} {int(sol.num_steps[k]):5d} {int(sol.num_stages[k]):6d} "
            f"{float(sol.residual[k]):9.1e} {'yes' if sol.converged[k] else 'NO':>4} "
            f"{float(pred.chi[k]):7.3f} {float(pred.test_error[k]):9.3e}"
        )

    # 3. The NumPy baseline on a few widths, compared with fls_jax's Σ.
    base_rows = []
    for C in widths[np.linspace(0, len(widths) - 1, a.baseline).astype(int)]:
        t0 = time.perf_counter()
        lam, its, ok = numpy_fixed_point(rhs, task.X, task.Y, S, C, sw2, sa2, noise)
        dt = time.perf_counter() - t0
        k = int(np.argmin(np.abs(widths - C)))
        diff = np.linalg.norm(np.linalg.inv(lam) - sol.sigma[k]) / np.linalg.norm(sol.sigma[k])
        base_rows.append((C, its, ok, dt, diff))

    steps = np.asarray(sol.num_steps)
    print(
        f"\nfls_jax sweep ({a.schedule}): {vmapped:8.2f} s for {len(widths)} widths "
        f"(first call {first:.2f} s → compile ≈ {first - vmapped:.2f} s); "
        f"converged {int(np.sum(sol.converged))}/{len(widths)}; Newton steps/width "
        f"median {np.median(steps):.0f}, max {steps.max()}; max residual "
        f"{float(np.max(sol.residual)):.1e}"
    )
    if a.loop:
        print(
            f"fls_jax Python loop   : {loop:8.2f} s for {len(loop_w)} widths "
            f"({loop / len(loop_w):.3f} s/width, "
            f"steps/width median {np.median(loop_steps[1:]):.0f})"
        )
    for C, its, ok, dt, diff in base_rows:
        print(
            f"NumPy fixed point C={C:7.1f}: {dt:8.2f} s, {its} iterations, converged={ok}, "
            f"‖ΔΣ‖/‖Σ‖ vs fls_jax {diff:.1e}"
        )
    mean_base = np.mean([r[3] for r in base_rows])
    print(
        f"NumPy baseline mean   : {mean_base:.3f} s/width → ≈ {mean_base * len(widths):.1f} s "
        f"for {len(widths)} widths (extrapolated from {len(base_rows)} widths)"
    )


if __name__ == "__main__":
    main()
