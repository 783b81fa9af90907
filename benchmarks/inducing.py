"""Inducing points (the Nyström/FITC readout) against the exact kernel: accuracy, time, memory.

    python benchmarks/inducing.py --arch fcn --n 2048 --width 64 --ranks 256 512 1024
    python benchmarks/inducing.py --arch fcn --n 65536 --ranks 256 512 --no-dense --compile-only

The problems of `scaling_n.py` (erf FCN d = 32 on a single-index teacher, erf PatchCNN
S = 16, P = 8 on a linear patch teacher), 1000 test points. For the exact kernel (unless
`--no-dense`) and for each number r of inducing points (`fj.inducing_points`, pivoted
Cholesky of the GP kernel): the time of solve + predict after compilation (one run), whether
it converged, its iterations, XLA's temporaries for the compiled solve (`memory_analysis`),
and against the exact solution: the relative error of Σ, of the learned precision shift
Λ − Σ₀⁻¹ (the feature learning itself), of the mean predictor on the test points, and the
test errors and free energies side by side. `--compile-only` reports XLA's temporaries of
the compiled solve + predict without running it (the memory a larger n would need).
`--anderson-only` solves with Anderson acceleration alone (at most 8 continuation stages),
to see where the approximate EoS get stiff. `--without-diagonal` solves the plain Nyström
model instead (K_f = ΦΦᵀ + σ²I, "DTC"), patched in here for comparison: fls_jax keeps the
diagonal.
"""

import argparse
import dataclasses
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from scaling_n import problem  # noqa: E402

import fls_jax as fj  # noqa: E402


SOLVER = {}  # `--anderson-only`: solve's keyword arguments


@eqx.filter_jit
def solve_predict(net, X, Y, X_test, Y_test):
    sol = fj.solve(net, X, Y, **SOLVER)
    return sol, fj.predict(sol, X_test, Y_test)


def run(net, X, Y, Xs, Ys, compile_only=False):
    t0 = time.perf_counter()
    compiled = solve_predict.lower(net, X, Y, Xs, Ys).compile()
    t_compile = time.perf_counter() - t0
    mem = compiled.compiled.memory_analysis()
    temp = mem.temp_size_in_bytes / 2**20 if mem else float("nan")
    if compile_only:
        print(f"  compiled only: temporaries {temp:.0f} MiB, compiled in {t_compile:.1f} s")
        return None
    t0 = time.perf_counter()
    sol, pred = jax.block_until_ready(compiled(net, X, Y, Xs, Ys))
    return sol, pred, time.perf_counter() - t0, t_compile, temp


def without_diagonal():
    """Patch fls_jax's Nyström features to report no missed diagonal (the "DTC" model,
    K_f = ΦΦᵀ + σ²I), for comparison only; before anything is compiled."""
    import fls_jax._free_energy as free_energy_module
    import fls_jax._predict as predict_module

    features = free_energy_module._nystrom

    def plain(network, sigma, X):
        phi, gap = features(network, sigma, X)
        return phi, jnp.zeros_like(gap)

    free_energy_module._nystrom = plain
    predict_module._nystrom = plain


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=("fcn", "cnn"), default="fcn")
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--width", type=float, default=64.0)
    parser.add_argument("--ranks", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--no-dense", action="store_true", help="skip the exact kernel")
    parser.add_argument(
        "--compile-only", action="store_true", help="only compile, and report temporaries"
    )
    parser.add_argument(
        "--anderson-only",
        action="store_true",
        help="solve with Anderson alone (rtol 1e-11) and at most 8 continuation stages",
    )
    parser.add_argument(
        "--without-diagonal",
        action="store_true",
        help="the plain Nyström readout (DTC) instead of FITC: drop the diagonal correction",
    )
    args = parser.parse_args()
    if args.without_diagonal:
        without_diagonal()
    if args.anderson_only:
        SOLVER.update(solver=fj.Anderson(rtol=1e-11, atol=0.0), max_stages=8)
    machine = platform.processor() or platform.machine()
    print(f"# {platform.node()} {machine}, jax {jax.__version__}, {jax.devices()[0]}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  args: {vars(args)}")
    _, net, label = problem(args.arch, args.n, args.width)
    if args.arch == "fcn":
        task = fj.datasets.single_index_teacher(args.n, 1000, 32, seed=0)
    else:
        task = fj.datasets.linear_patch_teacher(args.n, 1000, 16, 8, seed=0)
    X, Y, Xs, Ys = (jnp.asarray(a) for a in (task.X, task.Y, task.X_test, task.Y_test))
    print(f"{label}, n = {args.n}, C = {args.width:g}, 1000 test points")
    prior = net.prior_precision(net.filter_size(X.shape[1]))
    print(
        f"{'r':>6} {'solve+predict':>13} {'compile':>8} {'conv':>5} {'steps':>6} {'resid':>8} "
        f"{'temp MiB':>9} "
        f"{'Σ err':>9} {'shift err':>9} {'mean err':>9} {'test err':>9} {'F':>12}"
    )
    exact = None
    if args.compile_only and not args.no_dense:
        print("exact kernel")
        run(net, X, Y, Xs, Ys, compile_only=True)
    elif not args.no_dense:
        sol, pred, t, tc, temp = run(net, X, Y, Xs, Ys)
        exact = sol, pred
        print(
            f"{'exact':>6} {t:>12.1f}s {tc:>7.1f}s {bool(sol.converged)!s:>5} "
            f"{int(sol.num_steps):>6} {float(sol.residual):>8.1e} {temp:>9.0f} {'':>9} {'':>9} "
            f"{'':>9} "
            f"{float(pred.test_error):>9.4g} {float(sol.free_energy):>12.6g}"
        )
    for r in args.ranks:
        t0 = time.perf_counter()
        U = jax.block_until_ready(fj.inducing_points(net, X, r))
        t_pick = time.perf_counter() - t0
        if args.compile_only:
            print(f"r = {r} (picking U: {t_pick:.1f} s)")
            run(dataclasses.replace(net, inducing=U), X, Y, Xs, Ys, compile_only=True)
            continue
        sol, pred, t, tc, temp = run(dataclasses.replace(net, inducing=U), X, Y, Xs, Ys)
        if exact is None:
            errs = f"{'':>9} {'':>9} {'':>9}"
        else:
            e_sol, e_pred = exact
            errs = (
                f"{rel(sol.sigma, e_sol.sigma):>9.2e} "
                f"{rel(sol.precision - prior, e_sol.precision - prior):>9.2e} "
                f"{rel(pred.mean, e_pred.mean):>9.2e}"
            )
        print(
            f"{r:>6} {t:>12.1f}s {tc:>7.1f}s {bool(sol.converged)!s:>5} {int(sol.num_steps):>6} "
            f"{float(sol.residual):>8.1e} {temp:>9.0f} {errs} {float(pred.test_error):>9.4g} "
            f"{float(sol.free_energy):>12.6g}   (picking U: {t_pick:.1f} s)"
        )


if __name__ == "__main__":
    main()
