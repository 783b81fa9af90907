"""The cost of a first layer's mean (`weight_mean=True`): the ReLU kernel with a mean, its
derivatives, and a solve, next to the zero-mean ReLU FCN, on the task of `relu_mean.py`
(n = 48, d = 16, σ² = 0.01, C = 256). Run it against two checkouts to compare them:

    python benchmarks/mean_kernel_cost.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/mean_kernel_cost.py
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


def best_of(f, *args, repeats=5):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--width", type=float, default=256.0)
    args = parser.parse_args()
    print(f"fls_jax from {fj.__file__}")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, args.d))
    Y = np.maximum(X[:, :1], 0) + 0.1 * rng.standard_normal((args.n, 1))
    K = jnp.asarray(X @ X.T / args.d)
    m = jnp.asarray(X @ (0.3 * rng.standard_normal(args.d)))
    a = jnp.diagonal(K)[:, None] * jnp.ones(args.n)
    relu = fj.ReLU()

    def with_mean(K, m):
        return relu.kernel_with_mean(a, a.T, K, m[:, None], m[None, :])

    def loss(K, m):
        return jnp.sum(with_mean(K, m) * K)

    second = jax.jit(lambda K, m: jax.jvp(jax.grad(loss, (0, 1)), (K, m), (K, m))[1])
    rows = [
        ("kernel, zero mean", jax.jit(lambda K: relu.kernel(a, a.T, K)), (K,)),
        ("kernel with a mean", jax.jit(with_mean), (K, m)),
        ("its gradient", jax.jit(jax.grad(loss, (0, 1))), (K, m)),
        ("a second derivative (JVP of the gradient)", second, (K, m)),
    ]
    print(f"n = {args.n}: {args.n**2} kernel entries")
    for name, f, xs in rows:
        print(f"  {name:45s} {best_of(f, *xs) * 1e3:8.2f} ms")
    for mean in (False, True):
        net = fj.FCN(args.width, 1.0, 1.0, 0.01, relu, weight_mean=mean)
        t0 = time.perf_counter()
        sol = jax.block_until_ready(fj.solve(net, X, Y))
        first = time.perf_counter() - t0
        again = best_of(fj.solve, net, X, Y, repeats=3)
        print(
            f"  solve, weight_mean={mean!s:5s}: first (with compilation) {first:6.2f} s, "
            f"again {again:.3f} s, converged {bool(sol.converged)}"
        )


if __name__ == "__main__":
    main()
