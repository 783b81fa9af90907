"""The one-hidden-layer warm-start preconditioner, on and off, side by side (issue 6).

    python benchmarks/warm_preconditioner.py --arch fcn --ns 512 1024

Anderson acceleration from a warm start (a converged neighbouring width) mixes M R(Λ)
instead of R(Λ), where M divides R's components along u_i u_jᵀ + u_j u_iᵀ and in
{u_i vᵀ + v u_iᵀ : v ⊥ U} (U = Σ's top k eigenvectors, the learned directions; k = 3 in
`solve`) by Rayleigh quotients of the Jacobian (`_LearnedSubspace` in `fls_jax/_solve.py`;
the diagnosis is in `jacobian_spectrum.py`). For each n, with the default chain without it
(`off`), with it (`on`) and with it on k directions for each k of `--directions`:

- one warm-started solve, C = 128 → 64 (`solve(..., precision0=Σ⁻¹ at C = 128)`);
- a path sweep (`sweep(..., schedule="path")`) over `--widths`, each width warm-started from
  the previous one: iterations, continuation stages, time after compilation, and the largest
  difference in F from the run without it.

With `--from-gp C …`, solves from the GP limit at those widths with each chain but `off`, the
first continuation stage aimed at the width where the GP start's relative residual is ρ, for
each ρ of `--rhos` (default 1, `_first_fraction`; `inf` tries the target directly).
`--no-sweep` skips the two measurements above.

Problems as in `scaling_n.py` (erf FCN d = 32 with a single-index teacher, or a k-index one
with `--index k`, or erf PatchCNN S = 16, P = 8), σ² = 0.01. The log of 2026-12-01's first
measurement (`logs/warm_preconditioner_cpu.log`, `logs/first_stage_cpu.log`) predates
`--directions` and `--rhos`: its commands compared on / off and ρ = ∞ / 1 without them.
"""

import argparse
import platform

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scaling_n import problem  # noqa: E402
from solvers import timed  # noqa: E402

import fls_jax as fj  # noqa: E402
import fls_jax._solve as solve_module  # noqa: E402
from fls_jax._solve import _LearnedSubspace, _resolve_solver  # noqa: E402


def chains(net, X, directions: list[int]):
    """The default chain as `solve` resolves it, without the preconditioner, with it (`on`),
    and with it on `k` learned directions for each k of `directions`."""
    on = _resolve_solver(None, X.dtype, net.depth, net.filter_size(X.shape[1]))
    out = {"off": eqx.tree_at(lambda c: c[0].preconditioner, on, None, is_leaf=_none), "on": on}
    for k in directions:
        out[f"k={k}"] = eqx.tree_at(
            lambda c: c[0].preconditioner, on, _LearnedSubspace(directions=k)
        )
    return out


def _none(x) -> bool:
    return x is None


def from_gp(task, net, name, n: int, widths: list[float], rhos, cs) -> None:
    """Solves from the GP limit, first stage aimed at the target directly (ρ = ∞) or where
    the GP start's relative residual is ρ, with each chain of `cs` but the one without the
    preconditioner."""
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    print(f"\n{name}, n = {n}, from the GP limit (time after compilation)")
    for rho in rhos:
        solve_module._FIRST_RESIDUAL = rho
        jax.clear_caches()  # the constant is read when `solve` is traced
        for key, chain in cs.items():
            if key == "off":
                continue
            for C in widths:
                net_c = eqx.tree_at(lambda m: m.width, net, jnp.asarray(C))
                sol, t = timed(lambda net_c=net_c, c=chain: fj.solve(net_c, X, Y, solver=c), 1)
                print(
                    f"  C = {C:6g}, first stage ρ = {rho:3g}, preconditioner {key:3s}: "
                    f"{int(sol.num_steps):4d} iterations, {int(sol.num_stages):2d} stages, "
                    f"{t:7.2f} s, converged {bool(sol.converged)}, "
                    f"F = {float(sol.free_energy):.9f}",
                    flush=True,
                )
    solve_module._FIRST_RESIDUAL = 1.0
    jax.clear_caches()


def report(task, net, name, n: int, widths: list[float], repeat: int, cs) -> None:
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    wide = fj.solve(eqx.tree_at(lambda m: m.width, net, jnp.asarray(128.0)), X, Y)
    print(f"\n{name}, n = {n}")
    for key, chain in cs.items():
        sol, t = timed(
            lambda chain=chain: fj.solve(net, X, Y, solver=chain, precision0=wide.precision),
            repeat,
        )
        print(
            f"  warm C 128 → 64, preconditioner {key:3s}: {int(sol.num_steps):4d} iterations, "
            f"{t:7.2f} s, converged {bool(sol.converged)}, F = {float(sol.free_energy):.10f}",
            flush=True,
        )
    energies = {}
    for key, chain in cs.items():
        (sols, _), t = timed(
            lambda chain=chain: fj.sweep(
                net, X, Y, jnp.asarray(widths), X[:8], schedule="path", solver=chain
            ),
            repeat,
        )
        energies[key] = np.asarray(sols.free_energy)
        steps = " ".join(f"{int(k):4d}" for k in sols.num_steps)
        print(
            f"  path sweep, preconditioner {key:3s}: {int(np.sum(sols.num_steps)):5d} "
            f"iterations ({steps}), stages {int(np.sum(sols.num_stages))}, {t:7.2f} s, "
            f"all converged {bool(np.all(sols.converged))}",
            flush=True,
        )
    off = energies["off"]
    dF = max(np.max(np.abs(e - off) / np.abs(off)) for e in energies.values())
    print(f"  widths {' '.join(f'{w:g}' for w in widths)}; max relative ΔF from off {dF:.1e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["fcn", "cnn"], default="fcn")
    p.add_argument("--ns", type=int, nargs="+", default=[512, 1024])
    p.add_argument(
        "--widths", type=float, nargs="+", default=[4096, 1024, 256, 128, 64, 32, 16, 8, 4]
    )
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--index", type=int, default=1, help="k of a k-index FCN teacher")
    p.add_argument("--directions", type=int, nargs="*", default=[])
    p.add_argument("--from-gp", type=float, nargs="*", default=[])
    p.add_argument("--rhos", type=float, nargs="+", default=[1.0])
    p.add_argument("--no-sweep", action="store_true")
    a = p.parse_args()
    print(f"# {platform.node()} {jax.devices()[0].device_kind} jax {jax.__version__}")
    for n in a.ns:
        task, net, name = problem(a.arch, n, 64.0, a.index)
        cs = chains(net, jnp.asarray(task.X), a.directions)
        if not a.no_sweep:
            report(task, net, name, n, a.widths, a.repeat, cs)
        if a.from_gp:
            from_gp(task, net, name, n, a.from_gp, a.rhos, cs)


if __name__ == "__main__":
    main()
