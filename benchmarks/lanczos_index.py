"""The matrix-free Hessian index (`fj.hessian_index(..., method="lanczos")`, stop 68).

    python benchmarks/lanczos_index.py [--part agree|large|narrow|all] [--seeds A B]
        [--n 128 512] [--widths 10000 90 8 2]

`--part agree`: the narrow depth-3 erf FCNs of `benchmarks/deep_narrow_scan.py` (n = 20,
d = 5, σ_w² = 2, σ_a² = 0.25; C = 2 and 1, σ² = 10⁻² and 10⁻³; target seeds [A, B)), each
solved from the GP limit with the default solver, and again with `past_folds=True,
max_stages=16` where that fails. For every converged solution: the index from the dense
Hessian (exact, 435 unknowns) and from Lanczos in whitened coordinates, the Lanczos steps
and θ_min: the lowest Ritz value outside the flat band ±10⁻⁸ max|θ| (directions along which
F is flat to rounding), over the largest |Ritz value|. The table lists the saddles and
any disagreement; the last line counts agreements.

`--part large`: the authors' three-layer erf FCN (d = 32, σ_w² = 2, σ_a² = 2/256, σ² = 10⁻³):
the n = 128 reference data, and `deep_erf_teacher(n=512, d=32, depth=2, seed=0)` (issue 4),
solved from the GP limit at each of `--widths`, where `"dense"` refuses (8784 and 131 856
unknowns). Per width: the Lanczos index, steps, lowest Ritz value / max, and the seconds of
the solve and of the index (its first call per n includes compilation).

`--part narrow`: the narrow networks of `--part agree` (depth-3 erf, σ_w² = 2, σ_a² = 0.25,
y = sin(2 w·x), target seeds [A, B), C = 2 and 1, σ² = 10⁻² and 10⁻³) on n = 128 inputs of
`deep_erf_teacher(n=128, d=5, seed=3)` (16 527 unknowns, beyond the dense index and
`past_folds`): does the default solve land on saddles of F at larger n too?
"""

import argparse
import pathlib
import platform
import time

import equinox as eqx
import jax
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402
from fls_jax._trace import _lanczos_index  # noqa: E402


REF = pathlib.Path(__file__).parent.parent / "tests/data/fcn3_erf_n128"  # the reference's copy
_lanczos = eqx.filter_jit(_lanczos_index)


def lanczos(sol, max_steps: int = 200):
    """(index, steps, θ_min / max |θ|, seconds) through the private function
    that `fj.hessian_index(method="lanczos")` calls, which also gives steps and θ."""
    t0 = time.perf_counter()
    args = (sol.network, sol.X, sol.Y, sol.precision, sol.kernel_shifts, max_steps)
    k, low, steps = (np.asarray(v) for v in _lanczos(*args))
    return int(k), int(steps), float(low), time.perf_counter() - t0


def agree(seeds: range) -> None:
    import deep_narrow_scan as scan

    X = scan.inputs()
    print("| seed | C | σ² | solver | F | dense | Lanczos | steps | θ_min / max|θ| |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    same = total = saddles = 0
    steps_all, t0 = [], time.perf_counter()
    for seed in seeds:
        Y = scan.targets(X, seed)
        for C in (2.0, 1.0):
            for noise in (1e-2, 1e-3):
                net = fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=noise)
                sol, how = fj.solve(net, X, Y), "default"
                if not bool(sol.converged):
                    sol, how = fj.solve(net, X, Y, past_folds=True, max_stages=16), "past_folds"
                if not bool(sol.converged):
                    print(f"| {seed} | {C:g} | {noise:g} | {how} | not converged | | | | |")
                    continue
                dense = int(fj.hessian_index(sol, "dense"))
                k, steps, low, _ = lanczos(sol)
                total += 1
                same += k == dense
                saddles += dense > 0
                steps_all.append(steps)
                if k != dense or dense > 0:
                    print(
                        f"| {seed} | {C:g} | {noise:g} | {how} | {float(sol.free_energy):.8g} "
                        f"| {dense} | {k} | {steps} | {low:.3g} |",
                        flush=True,
                    )
    print(
        f"Lanczos = dense on {same} of {total} converged solutions ({saddles} saddles); "
        f"steps {min(steps_all)}–{max(steps_all)} (median {int(np.median(steps_all))}); "
        f"{time.perf_counter() - t0:.0f} s"
    )


def large(sizes, widths) -> None:
    print(
        "| data | n | C | converged | residual | index | steps | θ_min / max|θ| | solve s "
        "| index s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in sizes:
        if n == 128:
            X = np.load(REF / "X_train.npy").astype(float)
            Y = np.load(REF / "Y_train.npy").astype(float)
            data = "reference"
        else:
            task = fj.datasets.deep_erf_teacher(n=n, n_test=10, d=32, depth=2, seed=0)
            X, Y, data = np.asarray(task.X), np.asarray(task.Y), "deep_erf_teacher"
        for C in widths:
            net = fj.FCN(width=C, sigma_w2=2.0, sigma_a2=2 / 256, noise=1e-3, depth=2)
            t0 = time.perf_counter()
            sol = fj.solve(net, X, Y)
            jax.block_until_ready(sol.precision)
            t1 = time.perf_counter() - t0
            k, steps, low, t2 = lanczos(sol)
            print(
                f"| {data} | {n} | {C:g} | {bool(sol.converged)} | {float(sol.residual):.1e} "
                f"| {k} | {steps} | {low:.3g} | {t1:.1f} | {t2:.1f} |",
                flush=True,
            )


def narrow(seeds: range) -> None:
    import deep_narrow_scan as scan

    X = np.asarray(fj.datasets.deep_erf_teacher(n=128, n_test=10, d=5, depth=2, seed=3).X)
    print("| seed | C | σ² | stages/iterations | F | index | steps | θ_min / max|θ| | solve s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    counts = {"converged": 0, "saddles": 0, "unresolved": 0}
    for seed in seeds:
        Y = scan.targets(X, seed)
        for C in (2.0, 1.0):
            for noise in (1e-2, 1e-3):
                net = fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=noise)
                t0 = time.perf_counter()
                sol = fj.solve(net, X, Y)
                jax.block_until_ready(sol.precision)
                t = time.perf_counter() - t0
                row = f"| {seed} | {C:g} | {noise:g} | {scan.cell(sol)} |"
                if not bool(sol.converged):
                    print(row + f" | | | | {t:.1f} |", flush=True)
                    continue
                k, steps, low, _ = lanczos(sol)
                counts["converged"] += 1
                counts["saddles"] += k > 0
                counts["unresolved"] += k < 0
                print(
                    row + f" {float(sol.free_energy):.8g} | {k} | {steps} | {low:.3g} | {t:.1f} |",
                    flush=True,
                )
    print(
        f"{counts['converged']} of {4 * len(seeds)} converged: {counts['saddles']} saddles, "
        f"{counts['unresolved']} unresolved (-1)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("agree", "large", "narrow", "all"), default="all")
    parser.add_argument("--seeds", type=int, nargs=2, default=(0, 18))
    parser.add_argument("--n", type=int, nargs="+", default=(128, 512))
    parser.add_argument("--widths", type=float, nargs="+", default=(10000, 90, 8, 2))
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {fj.__file__}")
    if args.part in ("agree", "all"):
        agree(range(*args.seeds))
    if args.part in ("large", "all"):
        large(args.n, args.widths)
    if args.part in ("narrow", "all"):
        narrow(range(*args.seeds))


if __name__ == "__main__":
    main()
