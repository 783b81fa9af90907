"""Which solution does the default chain reach at a narrow width? An independent check (issue 6).

    python benchmarks/branch_check.py --arch cnn --n 256 --width 2 --ladder 64 2 24

At narrow widths F can have several minima, and `solve`'s default for one hidden layer
(`solver="descent"`) runs a free-energy descent once its first stage has failed. This script
solves the target width with it, and independently follows the branch down by a fine path in
width without any descent: `fj.sweep(..., schedule="path", solver="anderson-newton")` over a
geometric ladder of widths (`--ladder C_max C_min count`), each width warm-started from the
last (`--path-solver default`: the same fine path with the default chain, whose descent then
starts from each previous width's solution). It prints, per ladder width, the iterations,
stages, residual and F, then the largest difference of Σ between the two at the target width
(relative to the largest entry of Σ) and their free energies. The problems are those of
`solvers.py`.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from solvers import at_width, problem  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=["fcn", "cnn"], default="cnn")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--width", type=float, default=2.0)
    p.add_argument("--ladder", type=float, nargs=3, default=[64.0, 2.0, 24])
    p.add_argument(
        "--path-solver", choices=["anderson-newton", "default"], default="anderson-newton"
    )
    a = p.parse_args()
    task, net0, what = problem(a.arch, a.n, 1)
    X, Y = jnp.asarray(task.X), jnp.asarray(task.Y)
    print(f"# {what}; {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')}")
    hi, lo, count = a.ladder
    widths = np.geomspace(hi, lo, int(count))
    if not np.isclose(widths[-1], a.width):
        raise SystemExit("the ladder must end at --width")

    t0 = time.perf_counter()
    default = jax.block_until_ready(fj.solve(at_width(net0, a.width), X, Y))
    t_default = time.perf_counter() - t0
    print(
        f"default chain at C = {a.width:g}: {t_default:.1f} s, {int(default.num_steps)} "
        f"iterations, {int(default.num_stages)} stages, converged {bool(default.converged)}, "
        f"residual {float(default.residual):.1e}, F = {float(default.free_energy):.6f}"
    )

    solver = None if a.path_solver == "default" else a.path_solver
    t0 = time.perf_counter()
    path, _ = jax.block_until_ready(
        fj.sweep(net0, X, Y, widths, X[:4], schedule="path", solver=solver)
    )
    t_path = time.perf_counter() - t0
    print(f"path of {len(widths)} widths, {a.path_solver}: {t_path:.1f} s")
    print(f"{'C':>8} {'iters':>6} {'stages':>6} {'conv':>5} {'residual':>9} {'F':>12}")
    for i, C in enumerate(widths):
        print(
            f"{C:8.3f} {int(path.num_steps[i]):6d} {int(path.num_stages[i]):6d} "
            f"{bool(path.converged[i])!s:>5} {float(path.residual[i]):9.1e} "
            f"{float(path.free_energy[i]):12.6f}"
        )
    last = path.sigma[-1]
    rel = float(jnp.max(jnp.abs(default.sigma - last)) / jnp.max(jnp.abs(last)))
    print(
        f"at C = {a.width:g}: max|ΔΣ|/max|Σ| = {rel:.1e}; F default "
        f"{float(default.free_energy):.6f}, F path {float(path.free_energy[-1]):.6f}"
    )


if __name__ == "__main__":
    main()
