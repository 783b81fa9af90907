"""Compile time of `solve`'s program: a ReLU FCN with a first-layer mean, or an erf PatchCNN.

In its own process per round, with the tests' `--xla_backend_optimization_level=0` and no
persistent cache: counts the traced primitive operations of the program, lowers and
compiles it, runs it, and prints the seconds and one number of its output (the same digits
before and after a change that only restructures the trace). Programs (`--program`):
`relu-mean`, `jax.jit` of `solve` for a ReLU FCN with `weight_mean=True` (n = 24, d = 6,
C = 32, the tests' task); `patch-erf`, the same for an erf PatchCNN (patches of 2) on that
task's inputs; `patch-erf-grad`, the gradient of its predicted train error in C. To compare
two versions of the package, point `--source` at another checkout, e.g. a
`git worktree add /tmp/before <commit>`:

    python benchmarks/solve_compile.py [--program relu-mean] [--repeat 2] [--source PATH ...]
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


def _one(program: str) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import fls_jax as fj

    task = fj.datasets.single_index_teacher(n=24, n_test=16, d=6, scale=1.0, seed=3)
    X, w = jnp.asarray(task.X), jnp.asarray(task.teacher)

    if program == "relu-mean":
        Y = jnp.maximum(0.0, 2 * X @ w)[:, None]
        net = fj.FCN(1.0, 1.0, 1.0, 0.05, fj.ReLU(), weight_mean=True)
    else:
        Y = jnp.asarray(task.Y)
        net = fj.PatchCNN(1.0, 1.0, 1.0, 0.05, fj.Erf(), patch_size=2)

    def solve(C):
        return fj.solve(eqx.tree_at(lambda m: m.width, net, C), X, Y)

    def f(C):
        if program == "patch-erf-grad":
            return jax.grad(lambda C: fj.predict(solve(C), X, Y).test_error)(C), True
        s = solve(C)
        return s.sigma, s.converged

    ops = _count(jax.make_jaxpr(f)(32.0).jaxpr)
    t0 = time.perf_counter()
    lowered = jax.jit(f).lower(32.0)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    value, converged = jax.block_until_ready(compiled(32.0))
    t3 = time.perf_counter()
    print(
        f"{fj.__file__.rsplit('/', 2)[0]:40s} ops {ops:6d}  lower {t1 - t0:5.1f} s  "
        f"compile {t2 - t1:5.1f} s  run {t3 - t2:5.2f} s  converged {bool(converged)}  "
        f"{program} {float(jnp.ravel(value)[0]):.15g}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--program", default="relu-mean", choices=["relu-mean", "patch-erf", "patch-erf-grad"]
    )
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--source", nargs="*", default=[], help="other checkouts to compare")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _one(args.program)
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    for _ in range(args.repeat):
        for source in [*args.source, here]:
            child = dict(env, PYTHONPATH=os.path.abspath(source))
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--program", args.program]
            subprocess.run(cmd, env=child, check=True, cwd=os.path.abspath(source))


if __name__ == "__main__":
    main()
