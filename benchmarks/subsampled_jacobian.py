"""Would a Jacobian from a subsample of the data precondition the one-layer EoS? (issue 6)

    python benchmarks/subsampled_jacobian.py --n 1024 --width 64 --subsamples 128 256 512
    python benchmarks/subsampled_jacobian.py --n 1024 --width 64 --subsamples 0 256 512 --anderson

The erf FCN of `scaling_n.py --arch fcn` (d = 32, S(S+1)/2 = 528 unknowns). Anderson
acceleration's iterations grow with n on it (86 at n = 1024, 1206 at n = 8192 on the GPU),
and a dense Newton Jacobian costs S(S+1)/2 residual-sized products. The data part D of the
residual R(Λ) = Σ₀⁻¹ − Λ − D(Σ) (SPEC §3) is a sum over the training set, so a Jacobian from
n' ≪ n points, J_a = −I + (n/n')(J' + I), costs (n'/n)³ of the full one and might stand in
for it.

Default mode: solve, build the full Jacobian J of the packed residual at the solution (in
batches of 16 Jacobian-vector products) and, per subsample size n', the contraction
ρ(I − J_a⁻¹ J) of the chord iteration y ← y − J_a⁻¹ R(y) that J_a would give (< 1: it
converges on its own; the smaller, the fewer iterations), with J' of the unscaled subsample
for comparison, and the products with J that GMRES (fls_jax's Newton settings) needs on
J δ = −R(GP limit) without and with J_a⁻¹ as its preconditioner. `--at gp` builds J and
J' at the GP limit, where a solve starts (a preconditioner rebuilt at each Newton step);
`--at gp-vs-solution` builds J' there and J at the solution (a preconditioner built once).
`--anderson`: Anderson acceleration from the GP limit on the preconditioned residual
−J_a⁻¹ R with J_a built there (n' = 0: no preconditioner), timed after compilation.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402
from scaling_n import problem  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._linalg import _pack  # noqa: E402
from fls_jax._solve import _gp_state, _krylov, _state_residual  # noqa: E402


def jacobian(net, X, Y, y):
    """The packed residual's Jacobian at y, materialised 16 columns at a time as the dense
    Newton step does (`fj.DenseLU`)."""
    operator = lx.JacobianLinearOperator(_state_residual, y, args=(net, X, Y))
    return fj.DenseLU(columns=16).init(operator, {})


def scaled(J_sub, n, n_sub):
    eye = jnp.eye(J_sub.shape[0], dtype=J_sub.dtype)
    return -eye + (n / n_sub) * (J_sub + eye)


def subsample(n, n_sub):
    return jnp.asarray(np.sort(np.random.default_rng(0).choice(n, n_sub, replace=False)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--width", type=float, default=64.0)
    p.add_argument("--subsamples", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--anderson", action="store_true")
    p.add_argument(
        "--at",
        choices=["solution", "gp", "gp-vs-solution"],
        default="solution",
        help="where J and J' are built (gp-vs-solution: J' at the GP limit, J at the solution)",
    )
    a = p.parse_args()
    task, net, what = problem("fcn", a.n, a.width)
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    print(
        f"# {what}, n = {a.n}, C = {a.width:g}, --at {a.at}; {platform.node()} "
        f"{jax.default_backend()} {time.strftime('%Y-%m-%d')}"
    )
    jac = jax.jit(jacobian)
    if a.anderson:
        anderson(net, X, Y, a)
        return
    t0 = time.perf_counter()
    sol = jax.block_until_ready(fj.solve(net, X, Y))
    print(f"solve: {time.perf_counter() - t0:.1f} s, {int(sol.num_steps)} iterations")
    y_sol, y_gp = _pack(sol.precision), _gp_state(net, X)
    y_J = y_gp if a.at == "gp" else y_sol
    y_sub = y_sol if a.at == "solution" else y_gp
    t0 = time.perf_counter()
    J = np.asarray(jac(net, X, Y, y_J))
    print(f"full Jacobian ({J.shape[0]} columns): {time.perf_counter() - t0:.1f} s")
    ev = np.linalg.eigvals(J)
    print(
        f"eigenvalues of J: real part in [{ev.real.min():.3f}, {ev.real.max():.3f}], "
        f"max |imag| {np.abs(ev.imag).max():.1e}; ρ(I + J) (the plain fixed point) "
        f"{np.abs(np.linalg.eigvals(np.eye(len(J)) + J)).max():.2f}"
    )
    # A Newton step's GMRES (fls_jax's settings: rtol 1e-4, restart 20, ≤ 100 cycles),
    # counting products with J. The right-hand side is −R at the GP limit, the first Newton
    # step's (at the solution R itself is rounding noise).
    rhs = -jnp.asarray(_state_residual(y_gp, (net, X, Y)))
    print(f"GMRES on J δ = −R(GP), no preconditioner: {gmres_products(J, rhs, None)} products")
    for n_sub in a.subsamples:
        idx = subsample(a.n, n_sub)
        t0 = time.perf_counter()
        J_sub = np.asarray(jac(net, X[idx], Y[idx], y_sub))
        t = time.perf_counter() - t0
        J_a = scaled(J_sub, a.n, n_sub)
        rho = np.abs(np.linalg.eigvals(np.eye(len(J)) - np.linalg.solve(J_a, J)))
        raw = np.abs(np.linalg.eigvals(np.eye(len(J)) - np.linalg.solve(J_sub, J)))
        print(
            f"n' = {n_sub}: J' in {t:.1f} s (compilation included); ρ(I − J_a⁻¹J) = "
            f"{rho.max():.3f}, unscaled ρ(I − J'⁻¹J) = {raw.max():.3f}; GMRES with J_a⁻¹: "
            f"{gmres_products(J, rhs, np.linalg.inv(J_a))} products",
            flush=True,
        )


def gmres_products(J, rhs, inverse) -> str:
    """Products with J that lineax's GMRES (as fls_jax's Newton runs it) needs for J δ = rhs,
    left-preconditioned by the matrix `inverse` if given, and whether it converged."""
    count = []
    J = jnp.asarray(J)

    def mv(x):
        jax.debug.callback(lambda: count.append(1))
        return J @ x

    op = lx.FunctionLinearOperator(mv, jax.ShapeDtypeStruct(rhs.shape, rhs.dtype))
    options = {} if inverse is None else {"preconditioner": lx.MatrixLinearOperator(inverse)}
    sol = lx.linear_solve(op, rhs, _krylov(1e-4), options=options, throw=False)
    ok = sol.result == lx.RESULTS.successful
    return f"{len(count)}{'' if ok else ' (not converged)'}"


def anderson(net, X, Y, a):
    y0 = _gp_state(net, X)
    n = X.shape[0]
    for n_sub in a.subsamples:

        @jax.jit
        def go(X, Y, y0, n_sub=n_sub):
            fn = _state_residual
            if n_sub:
                idx = subsample(n, n_sub)
                lu = jax.scipy.linalg.lu_factor(scaled(jacobian(net, X[idx], Y[idx], y0), n, n_sub))

                def fn(y, args):
                    return -jax.scipy.linalg.lu_solve(lu, _state_residual(y, args))

            solver = fj.Anderson(rtol=1e-11, atol=0.0, memory=30)
            sol = optx.root_find(fn, solver, y0, args=(net, X, Y), max_steps=500, throw=False)
            return sol.value, sol.stats["num_steps"], sol.result == optx.RESULTS.successful

        jax.block_until_ready(go(X, Y, y0))
        t0 = time.perf_counter()
        y_end, steps, ok = jax.block_until_ready(go(X, Y, y0))
        t = time.perf_counter() - t0
        R = _state_residual(y_end, (net, X, Y))
        print(
            f"n' = {n_sub}: {t:.2f} s, {int(steps)} iterations, succeeded {bool(ok)}, packed "
            f"‖R‖/‖y‖ = {float(jnp.linalg.norm(R) / jnp.linalg.norm(y_end)):.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
