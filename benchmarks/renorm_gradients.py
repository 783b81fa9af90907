"""Derivatives of `renormalise`: their accuracy against central differences on singular and
regular kernels, and their cost against a forward evaluation and against the finite
differences a user would otherwise take. Run it against two checkouts to compare them:

    python benchmarks/renorm_gradients.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/renorm_gradients.py

Accuracy: the derivative of each output along one direction in (X, Y, C) (X only for m = 2),
forward mode, against a Richardson-extrapolated central difference; a linear FCN with n > d
has a singular kernel (n − d null directions), an erf FCN a regular one. Cost: the gradient
of the test error + log evidence in (σ_w², σ_a², σ²), reverse mode, jitted, against one
forward call and against the six calls of central differences.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


FIELDS = ("log_evidence", "train_error", "test_error", "scale", "variance")


def outputs(r):
    return jnp.stack([jnp.mean(getattr(r, f)) for f in FIELDS])


def accuracy(rng, act, depth, m, method):
    n, d = 24, 4
    X = rng.standard_normal((n, d))
    B = rng.standard_normal((d, m))
    Y = X @ B + 0.3 * rng.standard_normal((n, m))
    Xt = rng.standard_normal((8, d))
    dX, dY = rng.standard_normal(X.shape), rng.standard_normal(Y.shape)
    if m > 1:
        dY = 0 * dY  # the m×m saddle: a direction in X and C

    def g(t):
        net = fj.FCN(12.0 + 3 * t, 1.3, 0.8, 0.05, act, depth=depth)
        Yt = Y + t * dY
        return outputs(
            fj.renormalise(
                net,
                X + t * dX,
                Yt[:, 0] if m == 1 else Yt,
                Xt,
                Xt @ B[:, 0] if m == 1 else Xt @ B,
                method=method,
            )
        )

    _, jvp = jax.jvp(g, (0.0,), (1.0,))
    # The BFGS saddle (m = 2) is accurate to ~1e-8: steps of 2e-3 there, 5e-5 otherwise.
    h = 2e-3 if m > 1 else 5e-5

    def central(s):
        return (g(s) - g(-s)) / (2 * s)

    fd = (4 * central(h) - central(2 * h)) / 3
    return np.abs(np.asarray(jvp) - np.asarray(fd)) / np.maximum(np.abs(np.asarray(fd)), 1e-12)


def cost(n, rng):
    d = 16
    X = rng.standard_normal((n, d))
    Y = np.tanh(X[:, 0]) + 0.1 * rng.standard_normal(n)
    Xt = rng.standard_normal((200, d))
    Yt = np.tanh(Xt[:, 0])

    def value(p):
        net = fj.FCN(50.0, p[0], p[1], p[2], fj.Erf())
        r = fj.renormalise(net, X, Y, Xt, Yt)
        return r.test_error + r.log_evidence

    p = jnp.asarray([1.0, 1.0, 0.01])
    forward, grad = jax.jit(value), jax.jit(jax.grad(value))

    def best(f):
        jax.block_until_ready(f(p))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(f(p))
            times.append(time.perf_counter() - t0)
        return min(times)

    tf, tg = best(forward), best(grad)
    return tf, tg, 6 * tf


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[500, 2000])
    args = parser.parse_args()
    print(f"fls_jax from {fj.__file__}")
    print("relative error of each derivative against central differences:")
    print(f"{'case':42s} " + " ".join(f"{f:>12s}" for f in FIELDS))
    cases = [
        ("linear FCN, depth 1, saddle", fj.Linear(), 1, 1, "saddle"),
        ("linear FCN, depth 1, mixture", fj.Linear(), 1, 1, "mixture"),
        ("linear FCN, depth 2, mixture", fj.Linear(), 2, 1, "mixture"),
        ("erf FCN, mixture", fj.Erf(), 1, 1, "mixture"),
        ("linear FCN, m = 2 outputs, saddle", fj.Linear(), 1, 2, "saddle"),
        ("erf FCN, m = 2 outputs, saddle", fj.Erf(), 1, 2, "saddle"),
    ]
    for name, act, depth, m, method in cases:
        err = accuracy(np.random.default_rng(1), act, depth, m, method)
        print(f"{name:42s} " + " ".join(f"{e:12.1e}" for e in err), flush=True)
    print("\ncost (erf FCN, one output, mixture, 200 test points; jitted, best of 3):")
    for n in args.ns:
        tf, tg, tfd = cost(n, np.random.default_rng(0))
        print(
            f"  n = {n:5d}: forward {tf:.3f} s, gradient in 3 parameters {tg:.3f} s "
            f"({tg / tf:.1f}× forward), central differences {tfd:.3f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
