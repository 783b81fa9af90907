"""The one-hidden-layer warm-start preconditioner, on and off, side by side (issue 6).

    python benchmarks/warm_preconditioner.py --arch fcn --ns 512 1024

Anderson acceleration from a warm start (a converged neighbouring width) mixes M R(Λ)
instead of R(Λ), where M divides R's component along u uᵀ (u = Σ's top eigenvector, the
learned direction) and the rest of its component in {u vᵀ + v uᵀ} by two Rayleigh quotients
of the Jacobian (`_LearnedDirection` in `fls_jax/_solve.py`; the diagnosis is in
`jacobian_spectrum.py`). For each n, with the default chain with and without it:

- one warm-started solve, C = 128 → 64 (`solve(..., precision0=Σ⁻¹ at C = 128)`);
- a path sweep (`sweep(..., schedule="path")`) over `--widths`, each width warm-started from
  the previous one: iterations, continuation stages, time after compilation, and the largest
  difference in F between the two runs.

With `--from-gp C …`, solves from the GP limit at those widths, the first continuation stage
aimed at the target directly (ρ = ∞) or at the width where the GP start's relative residual is
ρ = 1 (`_first_fraction`, the default), each with the preconditioner in the later stages.
`--no-sweep` skips the two measurements above.

Problems as in `scaling_n.py` (erf FCN d = 32 with a single-index teacher, or erf PatchCNN
S = 16, P = 8), σ² = 0.01.
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
from fls_jax._solve import _resolve_solver  # noqa: E402


def chains(net, X):
    """The default chain as `solve` resolves it, with and without the preconditioner."""
    on = _resolve_solver(None, X.dtype, net.depth, net.filter_size(X.shape[1]))
    off = eqx.tree_at(lambda c: c[0].preconditioner, on, None, is_leaf=lambda x: x is None)
    return {"off": off, "on": on}


def from_gp(arch: str, n: int, widths: list[float]) -> None:
    """Solves from the GP limit, first stage direct (ρ = ∞) or aimed (ρ = 1)."""
    task, net, name = problem(arch, n, 64.0)
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    print(f"\n{name}, n = {n}, from the GP limit (time after compilation)")
    for rho in (float("inf"), 1.0):
        solve_module._FIRST_RESIDUAL = rho
        jax.clear_caches()  # the constant is read when `solve` is traced
        for C in widths:
            net_c = eqx.tree_at(lambda m: m.width, net, jnp.asarray(C))
            sol, t = timed(lambda net_c=net_c: fj.solve(net_c, X, Y), 1)
            print(
                f"  C = {C:6g}, first stage ρ = {rho:3g}: {int(sol.num_steps):4d} iterations, "
                f"{int(sol.num_stages):2d} stages, {t:7.2f} s, converged {bool(sol.converged)}, "
                f"F = {float(sol.free_energy):.9f}",
                flush=True,
            )
    solve_module._FIRST_RESIDUAL = 1.0
    jax.clear_caches()


def report(arch: str, n: int, widths: list[float], repeat: int) -> None:
    task, net, name = problem(arch, n, 64.0)
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    cs = chains(net, X)
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
    dF = np.max(np.abs(energies["on"] - energies["off"]) / np.abs(energies["off"]))
    print(f"  widths {' '.join(f'{w:g}' for w in widths)}; max relative ΔF {dF:.1e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["fcn", "cnn"], default="fcn")
    p.add_argument("--ns", type=int, nargs="+", default=[512, 1024])
    p.add_argument(
        "--widths", type=float, nargs="+", default=[4096, 1024, 256, 128, 64, 32, 16, 8, 4]
    )
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--from-gp", type=float, nargs="*", default=[])
    p.add_argument("--no-sweep", action="store_true")
    a = p.parse_args()
    print(f"# {platform.node()} {jax.devices()[0].device_kind} jax {jax.__version__}")
    for n in a.ns:
        if not a.no_sweep:
            report(a.arch, n, a.widths, a.repeat)
        if a.from_gp:
            from_gp(a.arch, n, a.from_gp)


if __name__ == "__main__":
    main()
