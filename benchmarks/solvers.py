"""The default solver chain against the others, per width, on one problem (issue 6):
`anderson-newton` (Anderson acceleration, damped Newton where it fails; the default for
deeper networks), `descent` (that with a free-energy descent before Newton; the default for
one hidden layer with S ≤ 64), damped Newton alone and Anderson alone.

    python benchmarks/solvers.py --arch fcn --n 256 --widths 4096 64 8 4 1

For each width and method: time per solve after compilation (best of `--repeat`), iterations
(summed over continuation stages), stages, converged, relative EoS residual, and the largest
difference of Σ (and of the deeper kernels) from damped Newton's solution relative to its
largest entry, and the free energy F there (which local minimum of F was reached).
`t/(it·R)` is the time per iteration over the cost of one residual evaluation: ≈ 1 means an
iteration costs one residual, the Cholesky-bound cost of a fixed-point step.
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
from fls_jax._solve import _gp_state, _newton, _state_residual  # noqa: E402


def problem(arch: str, n: int, depth: int):
    if arch == "cnn":
        S, P = 16, 8
        task = fj.datasets.linear_patch_teacher(n, 100, S, P, seed=0)
        net = fj.PatchCNN(
            patch_size=S, width=1.0, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf()
        )
        return task, net, f"erf PatchCNN n={n} S={S} P={P}"
    if depth > 1:
        task = fj.datasets.deep_erf_teacher(n, 100, 32, depth=depth, seed=0)
        net = fj.FCN(
            width=1.0, sigma_w2=2.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf(), depth=depth
        )
        return task, net, f"erf FCN depth={depth} n={n} d=32 σ_w²=2"
    task = fj.datasets.single_index_teacher(n, 100, 16, seed=0)
    net = fj.FCN(width=1.0, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf())
    return task, net, f"erf FCN n={n} d=16"


def at_width(net, C):
    return eqx.tree_at(lambda m: m.width, net, jnp.asarray(C, jnp.float64))


def timed(f, repeat):
    out = jax.block_until_ready(f())
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(f())
        best = min(best, time.perf_counter() - t0)
    return out, best


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", choices=["fcn", "cnn"], default="fcn")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--widths", type=float, nargs="+", default=[4096, 64, 8, 4, 1])
    p.add_argument("--methods", nargs="+", default=["default", "newton", "anderson"])
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    task, net0, what = problem(a.arch, a.n, a.depth)
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    S = net0.filter_size(X.shape[1])
    newton = _newton(X.dtype, net0.depth, S)
    anderson = fj.Anderson(rtol=1e-11, atol=0.0, memory=30)
    methods = {
        "default": {},
        "anderson-newton": {"solver": "anderson-newton"},
        "newton": {"solver": newton},
        "anderson": {"solver": anderson},
    }
    if net0.depth == 1:  # the chain with a free-energy descent before Newton
        methods["descent"] = {"solver": "descent"}
    for m in a.methods:
        if m.startswith("stall"):  # the default chain with Anderson's `patience` set
            stall = fj.Anderson(rtol=1e-11, atol=0.0, memory=30, patience=int(m[5:]))
            methods[m] = {"solver": (stall, newton)}
    state0 = _gp_state(net0, X)
    res = jax.jit(lambda st, net: _state_residual(st, (net, X, Y)))
    _, t_res = timed(lambda: res(state0, at_width(net0, 64.0)), 5)
    print(
        f"# {what}, σ²=0.01; {platform.node()} {jax.default_backend()} "
        f"{time.strftime('%Y-%m-%d')}; one residual evaluation {1e3 * t_res:.1f} ms"
    )
    print(
        f"{'C':>7} {'method':>15} {'time s':>9} {'iters':>6} {'stages':>6} {'conv':>5} "
        f"{'residual':>9} {'t/(it·R)':>8} {'dΣ vs Newton':>12} {'F':>12}"
    )
    for C in a.widths:
        net = at_width(net0, C)
        ref = None
        sols = {}
        for m in a.methods:
            sol, t = timed(lambda m=m, net=net: fj.solve(net, X, Y, **methods[m]), a.repeat)
            sols[m] = (sol, t)
        if "newton" in sols and bool(sols["newton"][0].converged):
            ref = sols["newton"][0]
        for m, (sol, t) in sols.items():
            it = int(sol.num_steps)
            diff = "—"
            if ref is not None and m != "newton":
                pairs = [(sol.sigma, ref.sigma), *zip(sol.kernels, ref.kernels, strict=True)]
                rel = (float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v))) for u, v in pairs)
                diff = f"{max(rel):.1e}"
            print(
                f"{C:7g} {m:>15} {t:9.3f} {it:6d} {int(sol.num_stages):6d} "
                f"{bool(sol.converged)!s:>5} {float(sol.residual):9.1e} "
                f"{t / max(it, 1) / t_res:8.2f} {diff:>12} {float(sol.free_energy):12.6f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
