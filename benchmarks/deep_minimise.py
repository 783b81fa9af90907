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

`--part conditioning`: why `minimise=True` fails on `--cases` at n = 128 (stop 71). From
the point the continuation reached, `minimise_free_energy` runs at the target width as in
`solve`, in rounds of `_TR_MAX_ITERATIONS`, first with the whitening's cutoff
(`_WHITEN_CUTOFF`, 10⁻¹⁰) and then with 10⁻¹⁴. After each round: F/C, the whitened
gradient, Σ's eigenvalues, the condition numbers of Q^(1) and K^(2), K^(3), and the EoS
residual in two metrics, relative to the unknowns in the same metric:

- `precision`: ‖R‖/‖(Λ, Δ_2, Δ_3)‖, R = (R_1, R_2, R_3) (`eos_residual`), what `solve`
  holds to 10⁻¹¹ (`Solution.residual`, but here without `_state_scale`);
- `natural`: the same with each block A taken as cov^{1/2} A cov^{1/2} (cov = Σ, K^(2), K^(3)),
  the affine-invariant metric, in which R_l is C_l/2 times F's gradient in whitened
  coordinates, and along which a direction of K counts by its eigenvalue.

`floor`: ‖R(x + δ) − R(x)‖/‖x‖ for a random symmetric δ with ‖δ‖ = 10⁻¹⁵‖x‖ per block: the
precision residual's rounding (F's Jacobian there is O(1), so its own part is ~10⁻¹⁵).
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


def _fro(blocks) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(b))) for b in blocks)))


def _half(cov: np.ndarray) -> np.ndarray:
    e, V = np.linalg.eigh(0.5 * (cov + cov.T))
    return (V * np.sqrt(np.maximum(e, 0.0))) @ V.T


def _round(net, X, Y, lam, shifts, it, rng) -> str:
    """One row of `--part conditioning` at the unknowns (Λ, Δ_2, Δ_3)."""
    import fls_jax._minimise as minimise
    from fls_jax._free_energy import _layers, _shift_residuals
    from fls_jax._linalg import spd_inverse_logdet

    u = 1.0 / float(net.width)
    w = minimise._Whitened(net, X, Y, lam, shifts)
    F, g = jax.value_and_grad(lambda v: u * w.free_energy(v))(w.zero()[0])
    covs, posts, _, _ = _layers(net, spd_inverse_logdet(lam)[0], shifts, X)
    covs = [np.asarray(c) for c in covs]
    unknowns = [np.asarray(x) for x in (lam, *shifts)]
    R = [np.asarray(r) for r in _shift_residuals(net, lam, shifts, X, Y)]
    halves = [_half(c) for c in covs]
    natural = _fro([h @ r @ h for h, r in zip(halves, R, strict=True)]) / _fro(
        [h @ x @ h for h, x in zip(halves, unknowns, strict=True)]
    )
    moved = []
    for x in unknowns:
        E = rng.standard_normal(x.shape)
        E = E + E.T
        moved.append(x + 1e-15 * np.linalg.norm(x) / np.linalg.norm(E) * E)
    R2 = _shift_residuals(net, moved[0], tuple(moved[1:]), X, Y)
    floor = _fro([a - np.asarray(b) for a, b in zip(R, R2, strict=True)]) / _fro(unknowns)
    eig = np.linalg.eigvalsh(covs[0])[::-1]
    conds = [np.linalg.cond(m) for m in (np.asarray(posts[0]), *covs[1:])]
    gnorm = np.linalg.norm(np.asarray(g))
    return (
        f"| {minimise._WHITEN_CUTOFF:g} | {it} | {float(F):.8f} | {gnorm:.2g} | "
        f"{_fro(R) / _fro(unknowns):.2g} | {floor:.1g} | {natural:.2g} | "
        + ", ".join(f"{e:.2g}" for e in eig)
        + " | "
        + ", ".join(f"{c:.1e}" for c in conds)
        + " |"
    )


def conditioning(cases: list[str], max_stages: int) -> None:
    import fls_jax._minimise as minimise

    X = np.asarray(fj.datasets.deep_erf_teacher(n=128, n_test=10, d=5, depth=2, seed=3).X)
    rng = np.random.default_rng(0)
    default_cutoff = minimise._WHITEN_CUTOFF
    for case in cases:
        seed, C, noise = int(case.split("-")[0]), *map(float, case.split("-")[1:])
        Y = scan.targets(X, seed)
        net = fj.FCN(width=C, depth=3, sigma_w2=2.0, sigma_a2=0.25, noise=noise)
        t0 = time.perf_counter()
        sol = fj.solve(net, X, Y, max_stages=max_stages)
        print(
            f"\nseed {seed}, C = {C:g}, σ² = {noise:g}: the continuation reached C = "
            f"{float(sol.width_reached):.5g} ({time.perf_counter() - t0:.0f} s)\n"
        )
        print(
            "| cutoff | iterations | F/C | ‖g‖ | precision | floor | natural | Σ eigenvalues "
            "| cond Q^(1), K^(2), K^(3) |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        lam, shifts = sol.precision, tuple(sol.kernel_shifts)
        for cutoff, rounds in ((1e-10, 2), (1e-14, 1)):
            minimise._WHITEN_CUTOFF = cutoff  # read when `run` is traced
            run = jax.jit(
                lambda lam, sh, n=net, y=Y: minimise.minimise_free_energy(n, X, y, lam, sh, True)
            )
            for _ in range(rounds):
                lam, shifts, it, _ = run(lam, shifts)
                print(_round(net, X, Y, lam, shifts, int(it), rng), flush=True)
        minimise._WHITEN_CUTOFF = default_cutoff


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("small", "large", "all", "conditioning"), default="all")
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
    if args.part == "conditioning":
        conditioning(args.cases, args.max_stages)


if __name__ == "__main__":
    main()
