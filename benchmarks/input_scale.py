"""`fj.solve` on the same deep network written two ways (stops 62 and 63).

    python benchmarks/input_scale.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/input_scale.py

Two maps of the hyper-parameters leave the network's function unchanged; the solvers'
path should not see them (`_solve._state_scale`).

- Inputs ×α with the first layer's σ_w² ÷α²: Σ → Σ/α², the rest unchanged
  (`tests/test_solve.py::test_inputs_scale_with_the_first_layer_prior`). Erf FCNs of depth
  2 and 3 (C = 4, σ_w² = 1.3/α² then 1.1 per deeper layer, σ_a² = 1, σ² = 0.05) on
  y = sin(2 w·x) (n = 24, d = 8) for α = 1, 0.1, 10, 100, 1000: converged, stages,
  iterations, the relative residual, Σα² and the deeper kernels against α = 1, and the
  call's seconds (the α = 1 row compiles).
- For a homogeneous φ, σ_w²(l) ×c with σ_w²(l+1) ÷c (σ_a² ÷c for l = L): layer l's
  covariance (Σ for l = 1, else K^(l)) scales by c, the rest is unchanged
  (`tests/test_deep.py::test_solve_does_not_see_a_homogeneous_rescaling`). ReLU FCNs of depth
  2 and 3 on the same task (σ_w² = 1.3, then 1.1), every pair l, c = 10⁻³ and 10³: the same
  columns, with that covariance ÷c and the test predictions against c = 1.
"""

import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


def main() -> None:
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, {fj.__file__}")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((24, 8))
    w = rng.standard_normal(8) / np.sqrt(8)
    y = np.sin(2 * X @ w)[:, None]

    def rel(a, b):
        return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))

    print(
        "| depth | α | converged | stages | iterations | residual | Σα² vs α = 1 | K vs α = 1 | s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for depth in (2, 3):
        ref = None
        for alpha in (1.0, 0.1, 10.0, 100.0, 1000.0):
            sw2 = jnp.array([1.3 / alpha**2] + [1.1] * (depth - 1))
            net = fj.FCN(4.0, sw2, 1.0, 0.05, fj.Erf(), depth=depth)
            t0 = time.perf_counter()
            sol = jax.block_until_ready(fj.solve(net, alpha * X, y))
            seconds = time.perf_counter() - t0
            ref = sol if ref is None else ref
            kernels = max(rel(a, b) for a, b in zip(ref.kernels, sol.kernels, strict=True))
            print(
                f"| {depth} | {alpha:g} | {bool(sol.converged)} | {int(sol.num_stages)} | "
                f"{int(sol.num_steps)} | {float(sol.residual):.1e} | "
                f"{rel(ref.sigma, alpha**2 * sol.sigma):.1e} | {kernels:.1e} | {seconds:.1f} |",
                flush=True,
            )

    print()
    print(
        "| depth | pair l | c | converged | stages | iterations | residual | "
        "cov_l / c vs c = 1 | predictions vs c = 1 | s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    X_test = rng.standard_normal((8, 8))
    for depth in (2, 3):
        ref = None
        for pair in range(1, depth + 1):
            for c in (1.0, 1e-3, 1e3) if ref is None else (1e-3, 1e3):
                sw2 = np.array([1.3] + [1.1] * (depth - 1))
                sw2[pair - 1] *= c
                if pair < depth:
                    sw2[pair] /= c
                net = fj.FCN(
                    4.0, jnp.asarray(sw2), 1.0 / (c if pair == depth else 1.0), 0.05, fj.ReLU(),
                    depth=depth,
                )  # fmt: skip
                t0 = time.perf_counter()
                sol = jax.block_until_ready(fj.solve(net, X, y))
                seconds = time.perf_counter() - t0
                ref = sol if ref is None else ref
                covs = (ref.sigma, *ref.kernels), (sol.sigma, *sol.kernels)
                cov = rel(covs[0][pair - 1], covs[1][pair - 1] / c)
                pred = rel(fj.predict(ref, X_test).mean, fj.predict(sol, X_test).mean)
                print(
                    f"| {depth} | {pair} | {c:g} | {bool(sol.converged)} | {int(sol.num_stages)} "
                    f"| {int(sol.num_steps)} | {float(sol.residual):.1e} | {cov:.1e} | "
                    f"{pred:.1e} | {seconds:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
