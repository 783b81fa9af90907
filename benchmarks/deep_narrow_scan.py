"""Narrow deep solves that fail, and why: a stall or a fold (stop 64).

    python benchmarks/deep_narrow_scan.py [--part scan|fold|index|saddles|all]
        [--seeds A B]

24 depth-3 erf FCNs in the authors' style (σ_w² = 2, σ_a² = 0.25) on the inputs of
`fj.datasets.deep_erf_teacher(n=20, d=5, seed=3)` with targets y = sin(2 w·x) (six seeds of
w), at C = 2 and 1 and σ² = 10⁻² and 10⁻³, solved from the GP limit with the default solver,
and with Anderson capped at 200 iterations per stage (`max_steps=(200, 12)`, the cap before
stop 64). Per cell stages/iterations, `!` where `converged` is False, and for the
default's converged solutions and `past_folds`' `[k]`, F's Hessian index (`fj.hessian_index`,
stop 67: 0 at a minimum of F, 1 at a saddle). Each failure of the
default is run again with `max_stages=128`: where `width_reached` stays put (to 10⁻⁴), the
continuation met a fold of its branch of solutions; where it moves on, a stall. And each is
run with `past_folds=True` (stop 66): pseudo-arclength continuation on from where the
continuation stopped, through the folds, to the target width; its cell gives the folds
passed, F, and the seconds of that solve (its first call includes compilation).

`--part fold`: the first fold (seed 0, σ² = 10⁻³, C* ≈ 3.5768) up close. A path sweep of
widths down to 3.5769, and at each the dense Jacobian of the solver's residual: its three
smallest singular values and the real parts of its three eigenvalues nearest zero. At a fold
(saddle-node) one singular value falls as √(C − C*) and a real eigenvalue goes to zero.

`--part index`: the six networks that the default leaves unconverged (stop 66), solved with
`past_folds=True, max_stages=16`, and `fj.hessian_index` of each solution (stop 67): 0 where
the branch it landed on is a minimum of F, k where F's Hessian has k negative eigenvalues.

`--part saddles`: seed 11 at σ² = 10⁻³, C = 2 and 1, where the default converges to a saddle
of F (stop 67), against `past_folds=True`.
"""

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


def cell(sol) -> str:
    return f"{int(sol.num_stages)}/{int(sol.num_steps)}{'' if bool(sol.converged) else '!'}"


def indexed(sol) -> str:
    """`cell`, and where converged F's Hessian index (stop 67): [0] at a minimum of F."""
    return cell(sol) + (f" [{int(fj.hessian_index(sol))}]" if bool(sol.converged) else "")


def inputs() -> np.ndarray:
    return np.asarray(fj.datasets.deep_erf_teacher(n=20, n_test=30, d=5, depth=2, seed=3).X)


def targets(X: np.ndarray, seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal(X.shape[1]) / np.sqrt(X.shape[1])
    return np.sin(2 * X @ w)[:, None]


def fold() -> None:
    from fls_jax._solve import _state_residual, _state_scale, _to_state

    X = inputs()
    Y = targets(X, 0)
    net = fj.FCN(width=1.0, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=1e-3)
    widths = np.array([8, 5, 4, 3.8, 3.7, 3.65, 3.62, 3.6, 3.59, 3.585, 3.58, 3.578, 3.577, 3.5769])
    sols, _ = fj.sweep(net, X, Y, widths, X[:4], schedule="path")
    Xj, Yj = jnp.asarray(X), jnp.asarray(Y)

    @jax.jit
    def spectrum(precision, shifts, width):
        n_ = fj.FCN(width=width, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=1e-3)
        flat, unravel = ravel_pytree(_to_state(precision, shifts, _state_scale(n_, Xj)))
        J = jax.jacfwd(lambda z: ravel_pytree(_state_residual(unravel(z), (n_, Xj, Yj)))[0])(flat)
        ev = jnp.real(jnp.linalg.eigvals(J))
        return jnp.linalg.svd(J, compute_uv=False)[-3:], ev[jnp.argsort(jnp.abs(ev))[:3]]

    print("| C | converged | smallest singular values | Re of the eigenvalues nearest 0 |")
    print("| --- | --- | --- | --- |")
    for i, C in enumerate(widths):
        shifts = tuple(k[i] for k in sols.kernel_shifts)
        sv, ev = spectrum(sols.precision[i], shifts, C)
        sv_s = ", ".join(f"{v:.3g}" for v in np.asarray(sv))
        ev_s = ", ".join(f"{v:.3g}" for v in np.asarray(ev))
        print(f"| {C:g} | {bool(sols.converged[i])} | {sv_s} | {ev_s} |", flush=True)


def scan(seeds: range) -> None:
    X = inputs()
    print(
        "| seed | C | σ² | cap 200 | default (600) | width reached | with 128 stages "
        "| past_folds=True: stages/iterations, folds, F, s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    failed = {"cap 200": 0, "default": 0, "past_folds": 0}
    t0 = time.perf_counter()
    for seed in seeds:
        Y = targets(X, seed)
        for C in (2.0, 1.0):
            for noise in (1e-2, 1e-3):
                net = fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=noise)
                old = fj.solve(net, X, Y, max_steps=(200, 12))
                new = fj.solve(net, X, Y)
                failed["cap 200"] += not bool(old.converged)
                failed["default"] += not bool(new.converged)
                row = f"| {seed} | {C:g} | {noise:g} | {cell(old)} | {indexed(new)} |"
                if bool(new.converged):
                    print(row + " | | |", flush=True)
                    continue
                more = fj.solve(net, X, Y, max_stages=128)
                a, b = float(new.width_reached), float(more.width_reached)
                kind = "fold" if abs(b / a - 1) < 1e-4 and not bool(more.converged) else "stall"
                t1 = time.perf_counter()
                arc = fj.solve(net, X, Y, past_folds=True)
                arc_s = time.perf_counter() - t1
                failed["past_folds"] += not bool(arc.converged)
                print(
                    row + f" {a:.6g} | {cell(more)}, {b:.6g}: {kind} | {indexed(arc)}, "
                    f"{int(arc.num_folds)}, {float(arc.free_energy):.5g}, {arc_s:.1f} |",
                    flush=True,
                )
    print(
        f"not converged: {failed['cap 200']} (cap 200), {failed['default']} (default), "
        f"{failed['past_folds']} (past_folds=True, of the default's failures) of {4 * len(seeds)}; "
        f"{time.perf_counter() - t0:.0f} s"
    )


# (seed, C, σ²) of the six networks that the default leaves unconverged (`--part scan`).
FAILURES = (
    (0, 2.0, 1e-3),
    (0, 1.0, 1e-2),
    (0, 1.0, 1e-3),
    (1, 1.0, 1e-3),
    (4, 2.0, 1e-3),
    (4, 1.0, 1e-3),
)


# Where the default converged to a saddle of F (`--seeds 6 18`, stop 67).
SADDLES = ((11, 2.0, 1e-3), (11, 1.0, 1e-3))


def saddles() -> None:
    X = inputs()
    print(
        "| seed | C | σ² | default: converged, F, index "
        "| past_folds: converged, folds, F, index, s |"
    )
    print("| --- | --- | --- | --- | --- |")
    for seed, C, noise in SADDLES:
        net = fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=noise)
        Y = targets(X, seed)
        plain = fj.solve(net, X, Y)
        t0 = time.perf_counter()
        arc = fj.solve(net, X, Y, past_folds=True, max_stages=16)
        t1 = time.perf_counter()
        print(
            f"| {seed} | {C:g} | {noise:g} | {bool(plain.converged)}, "
            f"{float(plain.free_energy):.8g}, {int(fj.hessian_index(plain))} | "
            f"{bool(arc.converged)}, {int(arc.num_folds)}, {float(arc.free_energy):.8g}, "
            f"{int(fj.hessian_index(arc))}, {t1 - t0:.1f} |",
            flush=True,
        )


def index() -> None:
    X = inputs()
    print("| seed | C | σ² | converged | folds | F | Hessian index | solve s | index s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for seed, C, noise in FAILURES:
        net = fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=noise)
        t0 = time.perf_counter()
        sol = fj.solve(net, X, targets(X, seed), past_folds=True, max_stages=16)
        t1 = time.perf_counter()
        k = int(fj.hessian_index(sol))
        t2 = time.perf_counter()
        print(
            f"| {seed} | {C:g} | {noise:g} | {bool(sol.converged)} | {int(sol.num_folds)} "
            f"| {float(sol.free_energy):.8g} | {k} | {t1 - t0:.1f} | {t2 - t1:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--part", choices=("scan", "fold", "index", "saddles", "all"), default="scan"
    )
    parser.add_argument(
        "--seeds", type=int, nargs=2, default=(0, 6), help="the scan's target seeds: [A, B)"
    )
    args = parser.parse_args()
    part = args.part
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {fj.__file__}")
    if part in ("scan", "all"):
        scan(range(*args.seeds))
    if part in ("fold", "all"):
        fold()
    if part in ("index", "all"):
        index()
    if part in ("saddles", "all"):
        saddles()


if __name__ == "__main__":
    main()
