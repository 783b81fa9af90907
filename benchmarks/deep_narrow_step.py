"""Where a depth-3 erf FCN's continuation spends its iterations: one hard step in width.

    python benchmarks/deep_narrow_step.py [--part path|step|crossover|all] [--anderson-steps N]

Three erf hidden layers, deep-erf teacher (d = 32, n = 128), σ_w² = 2, σ_a² = 2/256,
σ² = 1e-3. First the default path sweep over 8 widths, 30000 → 90 (iterations and stages per
width; `--part path` stops there). Then the step that costs most, from the converged C ≈ 473
to C ≈ 206, tried by each solver alone (no continuation), from the same warm start: Anderson
at β = 0.03, 0.1 (the deep default, with steps raising the residual more than 10× cut back),
0.3 and 1, 400 iterations each, and damped Newton–GMRES (the default's fallback), 12 and 30
steps. Printed: converged, the relative residual reached (`Solution.residual`, the start's is
the 1-iteration row) and seconds.

`--part crossover` asks why: a path sweep with 16 widths between C ≈ 473 and 206 (observables
per width: Σ's top eigenvalues, tr K^(2), tr K^(3), F, iterations, stages); the same widths
walked back up from C = 206, each root find started at the narrower solution, compared with
the way down (a fold of the solution branch would show as hysteresis: another solution,
another F); and per width the start's relative residual and the iterations from the wider
neighbour's solution (what the path sweep does) against its secant extrapolation in 1/C.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._rootfind import _fro  # noqa: E402
from fls_jax._solve import _newton, _state_residual, _state_scale, _to_state  # noqa: E402


KW = dict(sigma_w2=2.0, sigma_a2=2.0 / 256, activation=fj.Erf(), depth=3, noise=1e-3)


def task():
    return fj.datasets.deep_erf_teacher(n=128, n_test=20, d=32, depth=3, seed=0)


def step(path_only: bool = False, anderson_steps: int | None = None):
    t, kw = task(), KW
    widths = np.geomspace(30000, 90, 8)
    t0 = time.perf_counter()
    extra = {} if anderson_steps is None else {"max_steps": (anderson_steps, 12)}
    net = fj.FCN(width=1.0, **kw)
    sols, _ = fj.sweep(net, t.X, t.Y, widths, t.X_test, schedule="path", **extra)
    print(f"path sweep, 8 widths: {time.perf_counter() - t0:.1f} s (compilation included)")
    for C, ok, steps, stages in zip(
        widths, sols.converged, sols.num_steps, sols.num_stages, strict=True
    ):
        print(
            f"  C = {C:7.1f}: converged {bool(ok)!s:5} {int(steps):5d} iterations "
            f"{int(stages):3d} stages"
        )
    print(f"  summed: {int(np.sum(sols.num_steps))} iterations")
    if path_only:
        return
    start = (sols.precision[5], *(k[5] for k in sols.kernel_shifts))
    net = fj.FCN(width=widths[6], **kw)
    print(f"\nfrom the converged C = {widths[5]:.1f} straight to C = {widths[6]:.1f}:")
    runs = [("start (1 Anderson iteration)", fj.Anderson(rtol=1e-11, atol=0.0, mixing=0.1), 1)]
    for beta in (0.03, 0.1, 0.3, 1.0):
        deep = beta == 0.1
        solver = fj.Anderson(
            rtol=1e-11,
            atol=0.0,
            memory=30,
            mixing=beta,
            max_growth=10.0 if deep else float("inf"),
        )
        label = f"Anderson β = {beta:g}" + (" (deep default)" if deep else "")
        runs.append((label, solver, 400))
    runs += [("damped Newton–GMRES", _newton(np.float64, 3), k) for k in (12, 30)]
    for label, solver, k in runs:
        t0 = time.perf_counter()
        s = fj.solve(net, t.X, t.Y, precision0=start, solver=solver, max_steps=k)
        print(
            f"  {label:32} {k:4d} steps: converged {bool(s.converged)!s:5} residual "
            f"{float(s.residual):8.2e}  {time.perf_counter() - t0:5.1f} s",
            flush=True,
        )


def _unknowns(sols, i):
    return (sols.precision[i], *(k[i] for k in sols.kernel_shifts))


def crossover():
    t = task()
    coarse = np.geomspace(30000, 90, 8)
    fine = np.geomspace(coarse[5], coarse[6], 17)
    widths = np.concatenate([coarse[:6], fine[1:]])
    t0 = time.perf_counter()
    sols, _ = fj.sweep(fj.FCN(width=1.0, **KW), t.X, t.Y, widths, t.X_test, schedule="path")
    dt = time.perf_counter() - t0
    print(f"path sweep, {len(widths)} widths: {dt:.1f} s (compilation included)")
    print("      C   Σ's top 3 eigenvalues        tr K(2)  tr K(3)          F   iterations stages")
    for i, C in enumerate(widths):
        top = np.linalg.eigvalsh(np.asarray(sols.sigma[i]))[-3:]
        tr2, tr3 = (float(np.trace(k[i])) for k in sols.kernels)
        steps, stages = int(sols.num_steps[i]), int(sols.num_stages[i])
        print(
            f"{C:7.1f}   {top[0]:.4f} {top[1]:.4f} {top[2]:.4f}   {tr2:7.2f}  {tr3:7.2f}"
            f"  {float(sols.free_energy[i]):9.3f}  {steps:5d} {stages:5d}"
            f"  {'' if sols.converged[i] else 'NOT CONVERGED'}"
        )
    first = len(coarse) - 2  # index of C ≈ 473 in `widths`
    print("\nback up from C = 206.4, each width from the narrower one's solution:")
    print("      C  iterations  max |Σ⁻¹ − down|  max |Δ − down|    F − down")
    start = _unknowns(sols, len(widths) - 1)
    for i in range(len(widths) - 2, first - 1, -1):
        s = fj.solve(fj.FCN(width=widths[i], **KW), t.X, t.Y, precision0=start)
        down = _unknowns(sols, i)
        dl = float(np.abs(np.asarray(s.precision) - down[0]).max())
        pairs = zip(s.kernel_shifts, down[1:], strict=True)
        dd = max(float(np.abs(np.asarray(a) - b).max()) for a, b in pairs)
        print(
            f"{widths[i]:7.1f}  {int(s.num_steps):5d}  {dl:16.1e}  {dd:14.1e}  "
            f"{float(s.free_energy - sols.free_energy[i]):10.1e}"
            f"  {'' if s.converged else 'NOT CONVERGED'}",
            flush=True,
        )
        start = (s.precision, *s.kernel_shifts)

    X, Y = jnp.asarray(t.X), jnp.asarray(t.Y).reshape(len(t.X), -1)

    def rel(state, C):  # `Solution.residual` at `state`: ‖R(y)‖/‖y‖ over the packed unknowns
        net = fj.FCN(width=C, **KW)
        y = _to_state(state[0], tuple(state[1:]), _state_scale(net, X))
        return float(_fro(_state_residual(y, (net, X, Y))) / _fro(y))

    print("\nstarting each root find from the wider neighbour's solution, or its secant in 1/C:")
    print("      C   neighbour: residual iterations   secant: residual iterations")
    u = 1 / widths
    for i in range(first + 1, len(widths)):
        prev, prev2 = _unknowns(sols, i - 1), _unknowns(sols, i - 2)
        f = (u[i] - u[i - 1]) / (u[i - 1] - u[i - 2])
        secant = tuple(b + f * (b - a) for a, b in zip(prev2, prev, strict=True))
        row = f"{widths[i]:7.1f}"
        for st in (prev, secant):
            s = fj.solve(fj.FCN(width=widths[i], **KW), t.X, t.Y, precision0=st)
            ok = "" if s.converged else "(failed)"
            row += f"   {rel(st, widths[i]):17.1e} {int(s.num_steps):5d}{ok:9}"
        print(row, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("path", "step", "crossover", "all"), default="step")
    parser.add_argument(
        "--anderson-steps", type=int, help="Anderson's cap per stage (default: the solver's)"
    )
    args = parser.parse_args()
    part = args.part
    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}"
    )
    if part in ("path", "step", "all"):
        step(path_only=part == "path", anderson_steps=args.anderson_steps)
    if part in ("crossover", "all"):
        crossover()


if __name__ == "__main__":
    main()
