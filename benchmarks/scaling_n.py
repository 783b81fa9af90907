"""Scaling of one EoS solve with the number of training points n (issue 6).

    python benchmarks/scaling_n.py --arch fcn --ns 128 256 512 1024 2048 --width 64 \
        --plot scaling_n.png

For each n, on one problem at one width: the time of one dense Cholesky factorisation of an
n×n SPD matrix (the linear-algebra floor of an iteration), of one EoS residual evaluation
(K_f = Q_f + σ²I, its inverse, the kernel derivative), and of a whole solve with the default
solver (after compilation, best of `--repeat`); iterations; the ratio
t_solve / (iterations × t_residual), the factor over the Cholesky-bound cost of the
iterations; and XLA's buffer sizes for the compiled solve (`memory_analysis`: temporaries
and arguments), the peak memory a solve needs beyond its inputs. With `--plot`, a log-log
plot of the times against n with an n³ line.

`--solver anderson-newton` solves with that chain (the default for one hidden layer before
the free-energy descent); `--solver anderson` with Anderson acceleration alone (≈ 16 n²
floats of temporaries against ≈ 180 n² for the default chain's Newton fallback on the
PatchCNN: the way to the largest n); `--solver adaptive` with Anderson alone,
`adaptive_mixing=True` and `max_growth=10` (β from 1). `--memory-ns` only compiles the solve
at those n and reports its temporaries, to find the largest n that fits the device without
running it.
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
from fls_jax._solve import (  # noqa: E402
    _DEEP_MAX_GROWTH,
    _anderson_newton,
    _gp_state,
    _state_residual,
)


def problem(arch: str, n: int, width: float, index: int = 1):
    """The benchmark task: erf PatchCNN S = 16, P = 8 with a linear teacher, or erf FCN
    d = 32 with a single-index teacher (or a k-index one, `index` = k)."""
    if arch == "cnn":
        S, P = 16, 8
        task = fj.datasets.linear_patch_teacher(n, 10, S, P, seed=0)
        net = fj.PatchCNN(
            patch_size=S, width=width, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf()
        )
        return task, net, f"erf PatchCNN S={S} P={P}"
    net = fj.FCN(width=width, sigma_w2=1.0, sigma_a2=1.0, noise=0.01, activation=fj.Erf())
    if index > 1:
        task = fj.datasets.multi_index_teacher(n, 10, 32, k=index, seed=0)
        return task, net, f"erf FCN d=32, {index}-index teacher"
    task = fj.datasets.single_index_teacher(n, 10, 32, seed=0)
    return task, net, "erf FCN d=32"


def solver_of(name: str):
    """None (the default chain), "anderson-newton", the chain's first solver, Anderson,
    alone, or that with adaptive mixing and steps cut back where the residual grows more
    than 10×."""
    if name == "default":
        return None
    if name == "anderson-newton":
        return name
    anderson = _anderson_newton(jnp.float64)[0]
    if name == "adaptive":
        anderson = eqx.tree_at(
            lambda s: (s.adaptive_mixing, s.max_growth), anderson, (True, _DEEP_MAX_GROWTH)
        )
    return anderson


def timed(f, *args, repeat=1, warm=True):
    out = jax.block_until_ready(f(*args)) if warm else None
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return out, best


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", choices=["fcn", "cnn"], default="fcn")
    p.add_argument("--ns", type=int, nargs="*", default=[128, 256, 512, 1024])
    p.add_argument("--width", type=float, default=64.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--plot", default=None, help="write a log-log plot to this file")
    solvers = ["default", "anderson-newton", "anderson", "adaptive"]
    p.add_argument("--solver", choices=solvers, default="default")
    p.add_argument("--memory-ns", type=int, nargs="*", default=[], help="compile only")
    a = p.parse_args()
    solver = solver_of(a.solver)
    solve = eqx.filter_jit(lambda net, X, Y: fj.solve(net, X, Y, solver=solver))
    rows = []
    what = problem(a.arch, 8, a.width)[2]
    print(
        f"# {what}, C={a.width:g}, σ²=0.01, float64, solver {a.solver}; {platform.node()} "
        f"{jax.default_backend()} {jax.devices()[0].device_kind} {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{'n':>6} {'chol ms':>9} {'resid ms':>9} {'solve s':>9} {'iters':>6} {'conv':>5} "
        f"{'residual':>9} {'t/(it·R)':>8} {'temp MiB':>9} {'compile s':>9}"
    )
    chol = jax.jit(jnp.linalg.cholesky)
    for n in a.ns:
        task, net, _ = problem(a.arch, n, a.width)
        X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
        K = X @ X.T / X.shape[1] + jnp.eye(n)
        _, t_chol = timed(chol, K, repeat=max(a.repeat, 3))
        res = jax.jit(lambda st, net, X=X, Y=Y: _state_residual(st, (net, X, Y)))
        _, t_res = timed(res, _gp_state(net, X), net, repeat=max(a.repeat, 3))
        t0 = time.perf_counter()
        compiled = solve.lower(net, X, Y).compile()
        t_compile = time.perf_counter() - t0
        mem = compiled.compiled.memory_analysis()
        temp = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20 if mem else float("nan")
        # Already compiled: the first call is timed too (a warm-up would double the cost at
        # large n); the kernels it uses were warmed up by the Cholesky and residual timings.
        sol, t_solve = timed(compiled, net, X, Y, repeat=a.repeat, warm=False)
        it = int(sol.num_steps)
        ratio = t_solve / max(it, 1) / t_res
        rows.append((n, t_chol, t_res, t_solve, it))
        print(
            f"{n:6d} {1e3 * t_chol:9.2f} {1e3 * t_res:9.2f} {t_solve:9.3f} {it:6d} "
            f"{bool(sol.converged)!s:>5} {float(sol.residual):9.1e} {ratio:8.2f} "
            f"{temp:9.1f} {t_compile:9.1f}",
            flush=True,
        )
    for n in a.memory_ns:
        task, net, _ = problem(a.arch, n, a.width)
        X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
        t0 = time.perf_counter()
        mem = solve.lower(net, X, Y).compile().compiled.memory_analysis()
        temp = mem.temp_size_in_bytes if mem else float("nan")
        print(
            f"# compiled only: n = {n}: temporaries {temp / 2**30:.1f} GiB "
            f"({temp / 8 / n**2:.1f} n² floats), compiled in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    if a.plot and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ns, tc, tr, ts, _ = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.loglog(ns, ts, "o-", label="solve (default solver)")
        ax.loglog(ns, tr, "s-", label="one EoS residual")
        ax.loglog(ns, tc, "^-", label="one Cholesky (n×n)")
        ax.loglog(ns, ts[-1] * (ns / ns[-1]) ** 3, "k--", lw=1, label="∝ n³")
        ax.set_xlabel("n (training points)")
        ax.set_ylabel("time (s)")
        ax.set_title(f"{what}, C = {a.width:g} ({jax.default_backend()})", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        print(f"# plot: {a.plot}")


if __name__ == "__main__":
    main()
