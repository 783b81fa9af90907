"""Compile time of a ReLU FCN's `solve` with a first-layer mean (`weight_mean=True`).

In its own process per round, with the tests' `--xla_backend_optimization_level=0` and no
persistent cache: counts the traced primitive operations of `jax.jit` of `solve` (n = 24,
d = 6, C = 32, the tests' task), lowers and compiles it, runs it, and prints the seconds and
one entry of Σ (the same digits before and after a change that only restructures the trace).
To compare two versions of the package, point `--source` at another checkout, e.g. a
`git worktree add /tmp/before <commit>`:

    python benchmarks/relu_mean_compile.py [--repeat 2] [--source PATH ...]
"""

import argparse
import os
import subprocess
import sys
import time


def _count(jaxpr) -> int:
    from jax.extend import core

    total = 0
    for eqn in jaxpr.eqns:
        subs = [
            p.jaxpr if isinstance(p, core.ClosedJaxpr) else p
            for p in eqn.params.values()
            if isinstance(p, core.ClosedJaxpr | core.Jaxpr)
        ]
        for branch in eqn.params.get("branches", ()):
            subs.append(branch.jaxpr)
        total += sum(_count(s) for s in subs) if subs else 1
    return total


def _one() -> None:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import fls_jax as fj

    task = fj.datasets.single_index_teacher(n=24, n_test=16, d=6, scale=1.0, seed=3)
    X, w = jnp.asarray(task.X), jnp.asarray(task.teacher)
    Y = jnp.maximum(0.0, 2 * X @ w)[:, None]

    def f(C):
        s = fj.solve(fj.FCN(C, 1.0, 1.0, 0.05, fj.ReLU(), weight_mean=True), X, Y)
        return s.sigma, s.converged

    ops = _count(jax.make_jaxpr(f)(32.0).jaxpr)
    t0 = time.perf_counter()
    lowered = jax.jit(f).lower(32.0)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    sigma, converged = jax.block_until_ready(compiled(32.0))
    t3 = time.perf_counter()
    print(
        f"{fj.__file__.rsplit('/', 2)[0]:40s} ops {ops:6d}  lower {t1 - t0:5.1f} s  "
        f"compile {t2 - t1:5.1f} s  run {t3 - t2:5.2f} s  converged {bool(converged)}  "
        f"Σ₀₀ {float(sigma[0, 0]):.15g}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--source", nargs="*", default=[], help="other checkouts to compare")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _one()
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    for _ in range(args.repeat):
        for source in [*args.source, here]:
            child = dict(env, PYTHONPATH=os.path.abspath(source))
            cmd = [sys.executable, os.path.abspath(__file__), "--child"]
            subprocess.run(cmd, env=child, check=True, cwd=os.path.abspath(source))


if __name__ == "__main__":
    main()
