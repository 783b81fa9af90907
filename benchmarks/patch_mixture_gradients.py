"""Derivatives of a PatchCNN's importance sampler (`renormalise(method="mixture")`, the P×P
patch scale) at fixed draws, against central differences of the same estimator with its
proposal frozen, and reverse mode against forward mode:

    python benchmarks/patch_mixture_gradients.py --activation linear --patch-size 4
    python benchmarks/patch_mixture_gradients.py --activation erf --patch-size 2

The proposal (the saddle point's coordinates) is exported from a first run and substituted
for the saddle in the later ones, so that finite differences see the estimator at fixed
draws, which is what the derivative is. Task: n = 16, d = 8 (P = d / patch size patches), a
linear teacher, σ² = 0.1, C = 6, σ_w² = 1.3, σ_a² = 0.8, along a random direction in X and Y.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402
from fls_jax import _renorm  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--activation", choices=("linear", "erf"), default="linear")
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--draws", type=int, default=301)
    args = parser.parse_args()
    from jax.experimental import io_callback

    rng = np.random.default_rng(11)
    X, X_test = rng.standard_normal((16, 8)), rng.standard_normal((20, 8))
    Y = X @ rng.standard_normal(8) / np.sqrt(8)
    Y_test = X_test[:, 0]
    dX, dY = rng.standard_normal(X.shape), rng.standard_normal(Y.shape)
    act = fj.Erf() if args.activation == "erf" else fj.Linear()
    net = fj.PatchCNN(6.0, 1.3, 0.8, 0.1, act, patch_size=args.patch_size)
    print(f"{args.activation} PatchCNN, P = {8 // args.patch_size}, {args.draws} draws")
    names = ("log Z", "train error", "test error", "scale", "mean variance")

    def outputs(t, draws):
        r = fj.renormalise(net, X + t * dX, Y + t * dY, X_test, Y_test, draws=draws)
        fields = (r.log_evidence, r.train_error, r.test_error, r.scale, jnp.mean(r.variance))
        return jnp.stack(fields)

    saddle, kept = _renorm._matrix_saddle, []

    def exporting(*a):
        s = saddle(*a)
        io_callback(lambda *v: kept.append([np.asarray(x) for x in v]), None, *jax.tree.leaves(s))
        return s

    def frozen(*a):
        return jax.tree.unflatten(jax.tree.structure(saddle(*a)), kept[0])

    _renorm._matrix_saddle = exporting
    jax.block_until_ready(outputs(0.0, args.draws - 1))
    _renorm._matrix_saddle = frozen
    t0 = time.perf_counter()
    _, jvp = jax.jvp(lambda t: outputs(t, args.draws), (0.0,), (1.0,))
    print(f"forward mode (first call, compilation included): {time.perf_counter() - t0:.1f} s")

    def central(h):
        return (outputs(h, args.draws) - outputs(-h, args.draws)) / (2 * h)

    fd = (4 * central(1e-4) - central(2e-4)) / 3  # Richardson
    for name, a, b in zip(names, np.asarray(jvp), np.asarray(fd), strict=True):
        print(f"  {name:14s} forward {a: .12e}  central {b: .12e}  rel {abs(a - b) / abs(b):.1e}")
    weights = jnp.arange(1.0, 6.0)
    t0 = time.perf_counter()
    vjp = jax.grad(lambda t: outputs(t, args.draws) @ weights)(0.0)
    print(f"reverse mode (first call, compilation included): {time.perf_counter() - t0:.1f} s")
    ref = float(jvp @ weights)
    print(
        f"  reverse {float(vjp): .15e} vs forward {ref: .15e}: rel {abs(vjp - ref) / abs(ref):.1e}"
    )


if __name__ == "__main__":
    main()
