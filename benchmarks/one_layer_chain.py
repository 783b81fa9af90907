"""The one-hidden-layer default chain at narrow widths: when to hand over to Newton (issue 6).

    python benchmarks/one_layer_chain.py --n 512 --widths 16 8 --variants 40/0 40/1 100/1

erf FCN (d = 32, σ² = 0.01, single-index teacher, the task of `scaling_n.py --arch fcn`),
solved from the GP limit with the default chain (Anderson, then GMRES damped Newton), with
Anderson's `patience` and the number of failed continuation stages before Newton runs
(`_fallback_after`, 0 for one hidden layer in the package) varied: a variant `P/A` is
patience P, Newton after A failures in a row. `A = 1` is what deeper networks use: a failed
stage first retries Anderson on a quarter step in 1/C. Prints iterations, stages, the
residual and the wall time (compilation included, one call per width; each variant is
compiled afresh).
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from scaling_n import problem  # noqa: E402

import fls_jax as fj  # noqa: E402
import fls_jax._solve as _solve  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--widths", type=float, nargs="+", default=[16.0, 8.0])
    p.add_argument("--variants", nargs="+", default=["40/0", "40/1"])
    a = p.parse_args()
    print(f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, n = {a.n}")
    task, _, _ = problem("fcn", a.n, a.widths[0])
    S = task.X.shape[1]
    default_after = _solve._fallback_after
    print("| variant | C | iterations | stages | converged | residual | w*ᵀΣw* | time |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in a.variants:
        patience, after = (int(v) for v in variant.split("/"))
        anderson, newton = _solve._default_solver(jnp.float64, 1, S)
        anderson = eqx.tree_at(lambda s: s.patience, anderson, patience)
        _solve._fallback_after = lambda depth, after=after: after
        jax.clear_caches()  # the policy is read at trace time: recompile per variant
        for C in a.widths:
            _, net, _ = problem("fcn", a.n, C)
            t0 = time.perf_counter()
            s = jax.block_until_ready(fj.solve(net, task.X, task.Y, solver=(anderson, newton)))
            dt = time.perf_counter() - t0
            w = task.teacher
            print(
                f"| {variant} | {C:g} | {int(s.num_steps)} | {int(s.num_stages)} | "
                f"{bool(s.converged)} | {float(s.residual):.1e} | {float(w @ s.sigma @ w):.4f} | "
                f"{dt:.1f} s |",
                flush=True,
            )
        _solve._fallback_after = default_after


if __name__ == "__main__":
    main()
