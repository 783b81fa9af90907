"""Can the one-hidden-layer EoS of a non-linear network be evaluated without n×n matrices? (issue 6)

    python benchmarks/matrix_free_trace.py --arch fcn --n 512 --ranks 0 64 256 --probes 32 128
    python benchmarks/matrix_free_trace.py --arch fcn --n 2048 --ranks 256 1024 --probes 32 128

The EoS need ∇_Σ D = −½ ∂_Σ tr[T Tᵀ Q_f(Σ)] + (m/2) ∂_Σ tr[K_f⁻¹ Q_f(Σ)] with T and K_f⁻¹
held fixed (SPEC §3). The first part needs only T = K_f⁻¹Y: m CG solves on the kernel
operator v ↦ Q_f v + σ²v, applied in row blocks of the kernel (O(n·block) memory). The
second meets every entry of K_f⁻¹. A matrix-free code would estimate it with Hutchinson
probes z (Rademacher): tr[K_f⁻¹ Q_f] ≈ (1/p) Σ_k (K_f⁻¹ z_k)ᵀ Q_f z_k, with K_f⁻¹z_k from
CG, which is unbiased with an error ∝ 1/√p. With a rank-r Nyström approximation
P = F Fᵀ + σ²I of K_f (landmarks from `fj.inducing_points`, a pivoted Cholesky of the GP
kernel; F = Q_f(X, X_r) L⁻ᵀ, L Lᵀ = Q_f(X_r, X_r), fls_jax's Nyström features), P⁻¹
preconditions CG and serves as a control variate: the exact trace of P⁻¹ (Woodbury) plus
probes of K_f⁻¹ − P⁻¹ only. This script measures, at the
solution of the dense solver (`--at solution`) or at the GP limit (`--at gp`):

- the spectrum of Q_f against σ² (what a rank-r P can capture),
- lineax CG's iterations and time for the p probes (relative tolerance 1e-10) with and without
  the Nyström preconditioner, next to one dense Cholesky of K_f,
- the error of the estimated ∇_Σ D against the dense one, ‖ĝ − g‖_F / ‖g‖_F, averaged over
  `--seeds` probe draws, for each rank (0: plain Hutchinson) and probe count. At the solution
  the learned precision shift is Λ − Σ₀⁻¹ = (2/C) g, so this is also the error the estimate
  puts on the shift.
"""

import argparse
import dataclasses
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
from scaling_n import problem  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._free_energy import _nystrom, data_term  # noqa: E402


def row_blocks(X, block):
    """X's rows in blocks of `block` (the last one padded with row 0), and the mask of
    real rows."""
    n = X.shape[0]
    nb = -(-n // block)
    idx = jnp.minimum(jnp.arange(nb * block), n - 1).reshape(nb, block)
    real = (jnp.arange(nb * block) < n).reshape(nb, block)
    return X[idx], real


def kernel_matvec(net, sigma, X, V, block):
    """Q_f(Σ) V, one b×n block of Q_f at a time."""
    Xb, real = row_blocks(X, block)

    def one(args):
        xb, keep = args
        return jnp.where(keep[:, None], net.output_kernel(sigma, xb, X) @ V, 0.0)

    return jax.lax.map(one, (Xb, real)).reshape(-1, V.shape[1])[: X.shape[0]]


def bilinear(net, sigma, X, U, V, block):
    """tr[Vᵀ Q_f(Σ) U], one block at a time, rematerialised in the backward pass."""
    Xb, real = row_blocks(X, block)
    Vb, _ = row_blocks(V, block)

    @jax.checkpoint
    def one(acc, args):
        xb, vb, keep = args
        vb = jnp.where(keep[:, None], vb, 0.0)
        return acc + jnp.sum(vb * (net.output_kernel(sigma, xb, X) @ U)), None

    total, _ = jax.lax.scan(one, jnp.zeros((), sigma.dtype), (Xb, Vb, real))
    return total


def nystrom(net, sigma, X, landmarks):
    """F with P = F Fᵀ + σ²I (fls_jax's Nyström features on the landmarks), M = (σ²I + FᵀF)⁻¹
    and P⁻¹ as a function (Woodbury)."""
    F, _ = _nystrom(dataclasses.replace(net, inducing=landmarks), sigma, X)
    s2 = net.noise
    M = jnp.linalg.inv(s2 * jnp.eye(F.shape[1]) + F.T @ F)
    M = 0.5 * (M + M.T)

    def p_inv(v):
        return (v - F @ (M @ (F.T @ v))) / s2

    return F, M, p_inv


def cg_solve(net, sigma, X, B, block, p_inv, rtol):
    """K_f⁻¹ B by lineax CG, one column at a time (vmapped: one kernel pass per iteration for
    all columns), optionally preconditioned by P⁻¹. Returns the solution and the iterations."""
    n = X.shape[0]
    struct = jax.ShapeDtypeStruct((n,), X.dtype)

    def matvec(v):
        return kernel_matvec(net, sigma, X, v[:, None], block)[:, 0] + net.noise * v

    op = lx.FunctionLinearOperator(matvec, struct, tags=lx.positive_semidefinite_tag)
    options = {}
    if p_inv is not None:
        options["preconditioner"] = lx.FunctionLinearOperator(
            p_inv, struct, tags=lx.positive_semidefinite_tag
        )
    solver = lx.CG(rtol=rtol, atol=0.0, max_steps=20 * n)

    def one(b):
        sol = lx.linear_solve(op, b, solver, options=options, throw=False)
        return sol.value, sol.stats["num_steps"], sol.result == lx.RESULTS.successful

    W, steps, ok = jax.vmap(one, in_axes=1, out_axes=(1, 0, 0))(B)
    return W, jnp.max(steps), jnp.all(ok)


def timed(f, *args):
    jax.block_until_ready(f(*args))
    t0 = time.perf_counter()
    out = jax.block_until_ready(f(*args))
    return out, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=("fcn", "cnn"), default="fcn")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--width", type=float, default=64.0)
    parser.add_argument("--at", choices=("solution", "gp"), default="solution")
    parser.add_argument("--ranks", type=int, nargs="+", default=[0, 64, 256])
    parser.add_argument("--probes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--block", type=int, default=256)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"# {platform.node()} {machine}, jax {jax.__version__}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  args: {vars(args)}")
    task, net, label = problem(args.arch, args.n, args.width)
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    n, m, s2 = X.shape[0], Y.shape[1], float(net.noise)
    sigma0 = net.prior_covariance(X.shape[1])
    if args.at == "solution":
        t0 = time.perf_counter()
        sol = fj.solve(net, X, Y)
        print(
            f"{label}, n = {n}, C = {args.width:g}: dense solve {time.perf_counter() - t0:.1f} s,"
            f" converged {bool(sol.converged)}, residual {float(sol.residual):.1e}"
        )
        sigma = sol.sigma
    else:
        print(f"{label}, n = {n}: at the GP limit Σ = Σ₀")
        sigma = sigma0

    Q = net.output_kernel(sigma, X)
    ev = np.linalg.eigvalsh(np.asarray(Q))
    print(
        f"spectrum of Q_f: λ_max = {ev[-1]:.3g}; eigenvalues above σ² = {s2:g}: "
        f"{int(np.sum(ev > s2))}, above 0.1σ²: {int(np.sum(ev > 0.1 * s2))} (of {n})"
    )
    g = jax.grad(data_term, argnums=1)(net, sigma, X, Y)
    dense_cholesky = jax.jit(lambda K: jnp.linalg.cholesky(K))
    K = Q + s2 * jnp.eye(n)
    _, t_chol = timed(dense_cholesky, K)
    T = jnp.linalg.solve(K, Y)
    grad_bilinear = jax.jit(jax.grad(lambda s, U, V: bilinear(net, s, X, U, V, args.block)))
    g_tt = grad_bilinear(sigma, T, -0.5 * T)
    g_trace = g - g_tt
    print(
        f"‖∇D‖ = {float(jnp.linalg.norm(g)):.4g}: its TTᵀ part {float(jnp.linalg.norm(g_tt)):.4g}"
        f" (exact with m CG solves), its K_f⁻¹ part {float(jnp.linalg.norm(g_trace)):.4g}"
    )
    grad_diag = jax.grad(lambda s: jnp.sum(net.output_kernel_diag(s, X)))(sigma)
    print(f"one dense Cholesky of K_f: {t_chol * 1e3:.1f} ms")
    print()
    print(
        f"{'rank':>5} {'probes':>6} {'CG its':>7} {'CG time':>9} {'‖ĝ−g‖/‖g‖':>11} "
        f"{'±':>7} {'cond P⁻¹K':>10}"
    )
    for r in args.ranks:
        if r > 0:
            F, M, p_inv = nystrom(net, sigma, X, fj.inducing_points(net, X, r))
            PK = np.asarray(jax.vmap(p_inv, in_axes=1, out_axes=1)(K))
            w = np.sort(np.linalg.eigvals(PK).real)
            cond = f"{w[-1] / w[0]:.3g}"
            # ∂ tr[P⁻¹ Q_f] with P fixed: σ⁻² ∂ tr Q_f − σ⁻² ∂ tr[(F M)ᵀ Q_f F].
            g_p = (grad_diag - grad_bilinear(sigma, F, F @ M)) / s2
        else:
            p_inv, cond, g_p = None, f"{np.linalg.cond(np.asarray(K)):.3g}", 0.0
        for p in args.probes:
            errs, its, secs = [], [], []
            for seed in range(args.seeds):
                Z = jnp.asarray(np.random.default_rng(seed).choice([-1.0, 1.0], size=(n, p)))
                solve = jax.jit(
                    lambda Z, p_inv=p_inv: cg_solve(net, sigma, X, Z, args.block, p_inv, 1e-10)
                )
                (W, steps, ok), t = timed(solve, Z)
                if not bool(ok):
                    print(f"  CG did not converge (rank {r}, probes {p}, seed {seed})")
                V = W if p_inv is None else W - jax.vmap(p_inv, in_axes=1, out_axes=1)(Z)
                g_hat = g_tt + 0.5 * m * (g_p + grad_bilinear(sigma, Z, V) / p)
                errs.append(float(jnp.linalg.norm(g_hat - g) / jnp.linalg.norm(g)))
                its.append(int(steps))
                secs.append(t)
            print(
                f"{r:>5} {p:>6} {max(its):>7} {np.mean(secs):>8.2f}s {np.mean(errs):>11.3g} "
                f"{np.std(errs):>7.2g} {cond:>10}"
            )


if __name__ == "__main__":
    main()
