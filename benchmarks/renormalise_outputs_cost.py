"""The cost of `fj.renormalise` for an FCN with m outputs, against m.

    python benchmarks/renormalise_outputs_cost.py [--ms 2 5 10]

Task: scikit-learn's digits, one-hot targets (`fj.datasets.digits(labels="onehot")`), the
first m of the ten outputs, n = 256 training and 200 test images; an erf FCN at C = 16,
σ_w² = σ_a² = 1, σ² = 0.01. Printed per m and method (the saddle point, and the mixture
with its default 16384 draws): the first call (compilation included), the best of two
calls after, the same for the gradient of the test error in σ_w², and the test error, log
evidence and flag. Run at two commits to compare them: each evaluation of the likelihood
inverts n blocks λ_i U + σ²I of m×m.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


def timed(f):
    start = time.perf_counter()
    out = jax.block_until_ready(f())
    first = time.perf_counter() - start
    after = np.inf
    for _ in range(2):
        start = time.perf_counter()
        jax.block_until_ready(f())
        after = min(after, time.perf_counter() - start)
    return out, first, after


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ms", type=int, nargs="+", default=[2, 5, 10])
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}"
    )
    task = fj.datasets.digits(n=256, n_test=200, labels="onehot", seed=0)
    print(
        f"{'m':>3} {'method':>8} | {'first (s)':>9} {'after (s)':>9} | "
        f"{'grad first':>10} {'grad after':>10} | E_test, log Z, converged"
    )
    X, X_test = np.asarray(task.X), np.asarray(task.X_test)
    for m in args.ms:
        Y, Y_test = np.asarray(task.Y)[:, :m], np.asarray(task.Y_test)[:, :m]
        for method in ("saddle", "mixture"):
            row(m, method, X, Y, X_test, Y_test)


def row(m, method, X, Y, X_test, Y_test):
    def solve(weight=1.0):
        net = fj.FCN(16.0, weight, 1.0, 0.01, fj.Erf())
        return fj.renormalise(net, X, Y, X_test, Y_test, method=method)

    result, first, after = timed(solve)
    gradient = jax.jit(jax.grad(lambda w: solve(w).test_error))
    _, grad_first, grad_after = timed(lambda: gradient(1.0))
    print(
        f"{m:3d} {method:>8} | {first:9.1f} {after:9.2f} | {grad_first:10.1f} "
        f"{grad_after:10.2f} | {float(result.test_error):.10f}, "
        f"{float(result.log_evidence):.8f}, {bool(result.converged)}",
        flush=True,
    )


if __name__ == "__main__":
    main()
