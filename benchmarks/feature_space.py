"""Linear two-layer networks beyond a dense n×n kernel: the feature-space path (issue 6).

    python benchmarks/feature_space.py --ns 1000 4000 16000 64000 256000 --dense-max 4000

For linear φ with one hidden layer, Q_f = Z (I_P ⊗ cΣ) Zᵀ has rank r = P·S, and when r < n
fls_jax evaluates the evidence, the EoS and the readout (`predict`) in r dimensions
(Woodbury): O(n r² + r³) per residual, O(n r) memory, no n×n matrix. The alternative a
user would otherwise have is the dense path, which builds and factorises K_f (n×n). Here
that path is the same network with φ(h) = h given as `fj.Quadrature(lambda h: h)`, which
fls_jax treats as a general activation (exact for a linear φ with two nodes).

Per n: solve + predict (linear PatchCNN, S = 16, P = 8, r = 128, C = 16, σ² = 0.01, 1000
test points) after compilation, iterations, residual, and XLA's temporaries of the compiled
solve + predict; for n ≤ `--dense-max` the dense path's time and temporaries and the largest
differences of Σ and of the mean predictor between the two.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402


S, P, WIDTH = 16, 8, 16.0


@eqx.filter_jit
def solve_predict(net, X, Y, X_test, Y_test):
    sol = fj.solve(net, X, Y)
    return sol, fj.predict(sol, X_test, Y_test)


def run(net, X, Y, X_test, Y_test, repeat):
    compiled = solve_predict.lower(net, X, Y, X_test, Y_test).compile()
    mem = compiled.compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20 if mem else float("nan")
    out = jax.block_until_ready(solve_predict(net, X, Y, X_test, Y_test))
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(solve_predict(net, X, Y, X_test, Y_test))
        best = min(best, time.perf_counter() - t0)
    return out, best, temp


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ns", type=int, nargs="+", default=[1000, 4000, 16000, 64000, 256000])
    p.add_argument("--dense-max", type=int, default=4000, help="largest n for the dense path")
    p.add_argument("--repeat", type=int, default=2)
    a = p.parse_args()
    print(
        f"# linear PatchCNN S={S} P={P} (r={S * P}), C={WIDTH:g}, σ²=0.01, 1000 test points, "
        f"float64; {platform.node()} {jax.default_backend()} {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"{'n':>7} {'path':>8} {'time s':>8} {'iters':>6} {'conv':>5} {'residual':>9} "
        f"{'temp MiB':>9} {'dΣ':>8} {'d mean':>8}"
    )
    kw = dict(patch_size=S, width=WIDTH, sigma_w2=1.0, sigma_a2=1.0, noise=0.01)
    feat = fj.PatchCNN(activation=fj.Linear(), **kw)
    dense = fj.PatchCNN(activation=fj.Quadrature(lambda h: h, order=2, odd=True), **kw)
    for n in a.ns:
        task = fj.datasets.linear_patch_teacher(n, 1000, S, P, seed=0)
        data = tuple(jnp.asarray(v) for v in (task.X, task.Y, task.X_test, task.Y_test))
        (sol, pred), t, temp = run(feat, *data, a.repeat)
        rows = [("features", sol, pred, t, temp, "—", "—")]
        if n <= a.dense_max:
            (sol_d, pred_d), t_d, temp_d = run(dense, *data, a.repeat)
            d_sigma = float(jnp.max(jnp.abs(sol.sigma - sol_d.sigma)) / jnp.max(sol_d.sigma))
            d_mean = float(jnp.max(jnp.abs(pred.mean - pred_d.mean)) / jnp.std(pred_d.mean))
            rows.append(("dense", sol_d, pred_d, t_d, temp_d, f"{d_sigma:.1e}", f"{d_mean:.1e}"))
        for name, s, _, t, temp, ds, dm in rows:
            print(
                f"{n:7d} {name:>8} {t:8.3f} {int(s.num_steps):6d} {bool(s.converged)!s:>5} "
                f"{float(s.residual):9.1e} {temp:9.1f} {ds:>8} {dm:>8}",
                flush=True,
            )


if __name__ == "__main__":
    main()
