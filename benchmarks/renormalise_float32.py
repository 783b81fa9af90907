"""The scalar kernel renormalisation (`fj.renormalise`, one output) in float32 against float64.

float32 data and a float32 network with JAX's float64 switch on (a float32 request next to
float64 ones in one process), on `fj.datasets.single_index_teacher` (n = 64, d = 8,
σ² = 0.01): an erf FCN and deep linear FCNs of depth 2 and 3, C = 2, 8, 64, both methods.
Prints the float32 result's dtype and its differences from float64: the posterior mean scale
E[u] (the saddle's u*), the test-set mean (largest difference over its largest entry), the
test error (relative) and log Z (absolute, and relative to |log Z|).

    python benchmarks/renormalise_float32.py
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


jax.config.update("jax_enable_x64", True)

import fls_jax as fj  # noqa: E402


def _f32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32) if eqx.is_array(x) else x, tree)


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main() -> None:
    task = fj.datasets.single_index_teacher(n=64, n_test=50, d=8, seed=2)
    data = [np.asarray(a) for a in (task.X, task.Y, task.X_test, task.Y_test)]
    data32 = [a.astype(np.float32) for a in data]
    print(
        "| network | method | C | converged (64/32) | dtype | E[u] | ΔE[u] rel. | Δmean | "
        "Δtest error rel. | Δlog Z (rel.) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    start = time.perf_counter()
    networks = (
        ("erf FCN", fj.Erf(), 1),
        ("linear FCN, depth 2", fj.Linear(), 2),
        ("linear FCN, depth 3", fj.Linear(), 3),
    )
    for name, act, depth in networks:
        for method in ("mixture", "saddle"):
            for C in (2.0, 8.0, 64.0):
                net = fj.FCN(C, 1.0, 1.0, 0.01, act, depth=depth)
                r64 = fj.renormalise(net, *data, method=method)
                r32 = fj.renormalise(_f32(net), *data32, method=method)
                dz = abs(float(r32.log_evidence) - float(r64.log_evidence))
                print(
                    f"| {name} | {method} | {C:.0f} | {bool(r64.converged)}/"
                    f"{bool(r32.converged)} | {r32.mean.dtype} | {float(r64.scale):.6f} | "
                    f"{_rel(r32.scale, r64.scale):.1e} | {_rel(r32.mean, r64.mean):.1e} | "
                    f"{_rel(r32.test_error, r64.test_error):.1e} | {dz:.1e} "
                    f"({dz / abs(float(r64.log_evidence)):.1e}) |"
                )
    print(f"wall {time.perf_counter() - start:.1f} s (compiling included)")


if __name__ == "__main__":
    main()
