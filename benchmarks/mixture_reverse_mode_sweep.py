"""The matrix mixture's reverse mode where draws are dropped, over a range of σ_w².

    python benchmarks/mixture_reverse_mode_sweep.py
    PYTHONPATH=/path/to/an/older/checkout python benchmarks/mixture_reverse_mode_sweep.py

The three cases of
`tests/test_renorm_matrix.py::test_matrix_mixture_reverse_mode_where_draws_are_dropped`
(n = 12, d = 16, σ_a² = 0.8, 512 draws, key 0), whose proposal is widened on purpose (the
saddle's Hessian × 10⁻³ or 10⁻²) so that draws fall far into the tails: two outputs of a
linear FCN (C = 12, σ² = 10⁻⁸) and one of a linear PatchCNN (P = 4, C = 6, σ² = 10⁻¹⁰ and
0.1). For 13 values of σ_w² in [1, 1.6] it counts the non-finite reverse-mode gradients of
log Z in (σ_w², C, σ²) and prints the largest relative difference between reverse and
forward mode among the finite ones. Stop 46's test checked σ_w² = 1.3 alone. About 3 minutes
on 2 cores. The first line names the package's path.
"""

import time

import equinox as eqx
import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax import _renorm  # noqa: E402


def main():
    print("#", fj.__file__, time.strftime("%Y-%m-%d"))
    rng = np.random.default_rng(1)
    X, X_test = rng.standard_normal((12, 16)), rng.standard_normal((6, 16))
    beta = rng.standard_normal((16, 2)) / 2
    Y2, Y2_test = np.tanh(X @ beta), np.tanh(X_test @ beta)
    saddle = _renorm._matrix_saddle
    cases = [("outputs", 1e-3, 1e-8), ("patches", 1e-2, 1e-10), ("patches", 1e-2, 0.1)]
    print("| scale | σ² | non-finite reverse (of 13) | max rel. reverse − forward |")
    print("| --- | --- | --- | --- |")
    for scale, widen, noise in cases:

        def widened(*args, widen=widen):
            s = saddle(*args)
            return eqx.tree_at(lambda s: s.hessian, s, s.hessian * widen)

        _renorm._matrix_saddle = widened

        def log_evidence(p, scale=scale):
            if scale == "patches":
                net = fj.PatchCNN(p[1], p[0], 0.8, p[2], fj.Linear(), patch_size=4)
                Y, Y_test = Y2[:, 0], Y2_test[:, 0]
            else:
                net = fj.FCN(p[1], p[0], 0.8, p[2], fj.Linear())
                Y, Y_test = Y2, Y2_test
            r = fj.renormalise(
                net, X, Y, X_test, Y_test, method="mixture", draws=512, key=jax.random.key(0)
            )
            return r.log_evidence

        reverse, forward = jax.jit(jax.grad(log_evidence)), jax.jit(jax.jacfwd(log_evidence))
        bad, worst = 0, 0.0
        width = 6.0 if scale == "patches" else 12.0
        for sigma_w2 in np.linspace(1.0, 1.6, 13):
            p = jnp.array([sigma_w2, width, noise])
            a, b = reverse(p), forward(p)
            if not np.all(np.isfinite(a)):
                bad += 1
                continue
            worst = max(worst, float(jnp.max(jnp.abs(a - b) / jnp.abs(b))))
        print(f"| {scale} | {noise:.0e} | {bad} | {worst:.1e} |", flush=True)
    _renorm._matrix_saddle = saddle


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"# {time.perf_counter() - t0:.0f} s")
