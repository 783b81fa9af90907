"""`solve(minimise=True)` where the continuation in 1/C fails or ends at a saddle of F.

    python benchmarks/deep_minimise.py [--part small|large|all] [--max-stages 64]
        [--cases 1-2-0.001 ...]

`--part small`: the depth-3 erf FCNs of `benchmarks/deep_narrow_scan.py` (σ_w² = 2,
σ_a² = 0.25, n = 20, d = 5, y = sin(2 w·x)) where the default solve fails (the six of stop
66) or converges to a saddle of F (the three of stop 69), solved three ways:

- `default`: `fj.solve` (the continuation in 1/C from the GP limit);
- `minimise`: `fj.solve(minimise=True)`: then a trust-region Newton–CG on F at the target
  width from the point the continuation reached, matrix-free, and the root finders;
- `past_folds`: `fj.solve(past_folds=True, max_stages=16)`: the dense pseudo-arclength
  continuation through the folds (at most 3000 unknowns), the alternative before this.

Per solve: converged, F, the Hessian index (`fj.hessian_index`, dense: 0 at a minimum of F),
iterations and seconds (each solve's first call compiles; `--repeat` times a second call).

`--part large`: the same networks on n = 128 inputs (`deep_erf_teacher(n=128, d=5,
seed=3)`, 16 527 unknowns, beyond `past_folds`), where the default failed in stop 69's
`benchmarks/lanczos_index.py --part narrow` (`--cases seed-C-σ²`; each took 518–1564 s to
fail there, with 64 stages), solved with `minimise=True` (and with `--with-default`, the
default), with `--max-stages` continuation stages; the index by Lanczos.
"""

import argparse
import platform
import time

import jax
import numpy as np


jax.config.update("jax_enable_x64", True)

import deep_narrow_scan as scan  # noqa: E402

import fls_jax as fj  # noqa: E402


# The default's six failures, and the three saddles it converged to (stop 69).
SMALL = [*scan.FAILURES, *scan.SADDLES, (2, 1.0, 1e-2)]
LARGE = ["1-2-0.001", "2-2-0.01", "2-2-0.001", "2-1-0.01"]


def timed(fn, repeat: bool):
    t0 = time.perf_counter()
    sol = fn()
    jax.block_until_ready(sol.precision)
    t = time.perf_counter() - t0
    if repeat:
        t0 = time.perf_counter()
        jax.block_until_ready(fn().precision)
        t = time.perf_counter() - t0
    return sol, t


def cell(sol, t: float, method: str) -> str:
    if not bool(sol.converged):
        return f"not converged (C reached {float(sol.width_reached):.5g}), {t:.1f} s"
    index = int(fj.hessian_index(sol, method))
    steps = f"{int(sol.num_stages)}/{int(sol.num_steps)}"
    return f"{float(sol.free_energy):.8g} [{index}] {steps}, {t:.1f} s"


def small(repeat: bool) -> None:
    X = scan.inputs()
    print("| seed | C | σ² | default | minimise | past_folds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for seed, C, noise in SMALL:
        Y = scan.targets(X, seed)
        net = fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=noise)
        row = [f"{seed}", f"{C:g}", f"{noise:g}"]
        for kwargs in ({}, {"minimise": True}, {"past_folds": True, "max_stages": 16}):
            sol, t = timed(lambda k=kwargs, n=net, y=Y: fj.solve(n, X, y, **k), repeat)
            row.append(cell(sol, t, "dense"))
        print("| " + " | ".join(row) + " |", flush=True)


def large(cases: list[str], max_stages: int, default: bool) -> None:
    X = np.asarray(fj.datasets.deep_erf_teacher(n=128, n_test=10, d=5, depth=2, seed=3).X)
    print("| seed | C | σ² |" + (" default |" if default else "") + " minimise |")
    print("| --- | --- | --- |" + (" --- |" if default else "") + " --- |")
    for case in cases:
        seed, C, noise = int(case.split("-")[0]), *map(float, case.split("-")[1:])
        Y = scan.targets(X, seed)
        net = fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=noise)
        row = [f"{seed}", f"{C:g}", f"{noise:g}"]
        for kwargs in ({}, {"minimise": True})[0 if default else 1 :]:
            solve = lambda k=kwargs, n=net, y=Y: fj.solve(n, X, y, max_stages=max_stages, **k)  # noqa: E731
            sol, t = timed(solve, False)
            row.append(cell(sol, t, "lanczos"))
        print("| " + " | ".join(row) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("small", "large", "all"), default="all")
    parser.add_argument("--max-stages", type=int, default=64)
    parser.add_argument("--cases", nargs="+", default=LARGE)
    parser.add_argument("--repeat", action="store_true", help="time a second call")
    parser.add_argument(
        "--with-default", action="store_true", help="--part large: the default solve too"
    )
    args = parser.parse_args()
    print(f"{platform.machine()} {platform.processor() or ''}, jax {jax.__version__}, float64")
    print("cells: F [Hessian index] stages/iterations, seconds\n")
    if args.part in ("small", "all"):
        small(args.repeat)
    if args.part in ("large", "all"):
        print()
        large(args.cases, args.max_stages, args.with_default)


if __name__ == "__main__":
    main()
