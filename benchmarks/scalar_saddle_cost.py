"""The scalar kernel renormalisation's cost, `fj.renormalise` with one output (SPEC §5).

    python benchmarks/scalar_saddle_cost.py [--n 256 1024 4096]

A linear FCN (d = 64, one and two hidden layers, C = 16, σ² = 0.01) on a linear teacher:
seconds per call after compilation (best of 3) for ``method="saddle"`` and ``"mixture"``,
and for the first call (compilation included). Run it on two versions back to back (e.g.
with ``PYTHONPATH`` on a git worktree) to compare; the printed values let the two be checked
against each other.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, nargs="+", default=[256, 1024, 4096])
    args = p.parse_args()
    print(f"# {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')}")
    print("   n  depth  method    first (s)  again (s)  log Z               log u")
    rng = np.random.default_rng(0)
    d = 64
    beta = rng.standard_normal(d)
    for n in args.n:
        X = rng.standard_normal((n, d))
        Y = X @ beta / np.sqrt(d) + 0.1 * rng.standard_normal(n)
        for depth in (1, 2):
            net = fj.FCN(16.0, 1.0, 1.0, 0.01, fj.Linear(), depth=depth)
            for method in ("saddle", "mixture"):
                t = time.perf_counter()
                r = jax.block_until_ready(fj.renormalise(net, X, Y, X[:8], method=method))
                first = time.perf_counter() - t
                again = []
                for _ in range(3):
                    t = time.perf_counter()
                    jax.block_until_ready(fj.renormalise(net, X, Y, X[:8], method=method))
                    again.append(time.perf_counter() - t)
                print(
                    f"{n:5d}  {depth:5d}  {method:8s}  {first:9.2f}  {min(again):9.4f}  "
                    f"{float(r.log_evidence):.12g}  {float(np.log(r.scale)):.10f}"
                    + ("" if bool(r.converged) else "  (not converged)"),
                    flush=True,
                )


if __name__ == "__main__":
    main()
