"""Tune σ_w² and σ² of an erf PatchCNN by gradients through the EoS, against a brute-force grid.

    python benchmarks/tune_vs_grid.py --n 64 --width 8 --grid 15 --steps 60

The grid is what a user would otherwise do: one solve + predict per (σ_w², σ²) pair on a
log grid (jitted once, warm-started along each row). `fj.tune` starts from a corner of the
grid and follows the implicit gradient of the predicted validation error. Prints both optima,
their validation errors and the wall times; writes a PNG with the grid and the tune path.
"""

import argparse
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import fls_jax as fj  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--width", type=float, default=8.0)
    p.add_argument("--grid", type=int, default=15, help="grid points per axis")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--plot", default="tune_vs_grid.png")
    p.add_argument("--label-noise", type=float, default=0.3, help="std of noise added to targets")
    p.add_argument("--lr", type=float, default=0.1, help="adam learning rate (log-parameters)")
    a = p.parse_args()
    S, P = 8, 4
    task = fj.datasets.linear_patch_teacher(a.n, 400, S, P, seed=3)
    # Noisy labels make the optimum interior (noise-free, the evidence wants σ² → 0).
    rng = np.random.default_rng(4)
    task = task._replace(
        Y=task.Y + a.label_noise * rng.standard_normal(task.Y.shape),
        Y_test=task.Y_test + a.label_noise * rng.standard_normal(task.Y_test.shape),
    )
    # Validation = half of the held-out set; the other half reports the final test error.
    Xv, Yv, Xt, Yt = task.X_test[:200], task.Y_test[:200], task.X_test[200:], task.Y_test[200:]
    net = fj.PatchCNN(
        patch_size=S, width=a.width, sigma_w2=1.0, sigma_a2=1.0, noise=0.1, activation=fj.Erf()
    )
    print(
        f"# erf PatchCNN S={S} P={P} C={a.width} n={a.n}, label noise {a.label_noise}, "
        f"adam({a.lr}); {platform.node()} "
        f"{jax.default_backend()} {time.strftime('%Y-%m-%d')}"
    )

    sw2_grid = np.geomspace(0.01, 10.0, a.grid)
    noise_grid = np.geomspace(1e-3, 1.0, a.grid)

    @eqx.filter_jit
    def val_error(sw2, noise, precision0):
        n = eqx.tree_at(
            lambda m: [m.sigma_w2, m.noise], net, [jnp.asarray(sw2), jnp.asarray(noise)]
        )
        sol = fj.solve(n, task.X, task.Y, precision0=precision0)
        return fj.predict(sol, Xv, Yv).test_error, sol.precision, sol.converged

    @eqx.filter_jit
    def val_error_cold(sw2, noise):
        n = eqx.tree_at(
            lambda m: [m.sigma_w2, m.noise], net, [jnp.asarray(sw2), jnp.asarray(noise)]
        )
        sol = fj.solve(n, task.X, task.Y)
        return fj.predict(sol, Xv, Yv).test_error, sol.precision, sol.converged

    jax.block_until_ready(val_error_cold(jnp.asarray(1.0), jnp.asarray(0.1)))
    lam0 = val_error_cold(jnp.asarray(1.0), jnp.asarray(0.1))[1]
    jax.block_until_ready(val_error(jnp.asarray(1.0), jnp.asarray(0.1), lam0))
    t0 = time.perf_counter()
    E = np.full((a.grid, a.grid), np.nan)
    for i, sw2 in enumerate(sw2_grid):
        prec = None
        for j, noise in enumerate(noise_grid):
            if prec is None:
                e, lam, ok = val_error_cold(jnp.asarray(sw2), jnp.asarray(noise))
            else:
                e, lam, ok = val_error(jnp.asarray(sw2), jnp.asarray(noise), prec)
                if not bool(ok):
                    e, lam, ok = val_error_cold(jnp.asarray(sw2), jnp.asarray(noise))
            E[i, j] = float(e) if bool(ok) else np.nan
            prec = lam if bool(ok) else None
    t_grid = time.perf_counter() - t0
    i, j = np.unravel_index(np.nanargmin(E), E.shape)
    print(
        f"grid   {a.grid}×{a.grid} solves: {t_grid:7.2f} s; best σ_w²={sw2_grid[i]:.4g} "
        f"σ²={noise_grid[j]:.4g} val err={E[i, j]:.5g}"
    )

    t0 = time.perf_counter()
    res = fj.tune(
        net,
        task.X,
        task.Y,
        params=("sigma_w2", "noise"),
        X_val=Xv,
        Y_val=Yv,
        bounds={"sigma_w2": (0.01, 10.0), "noise": (1e-3, 1.0)},
        optimizer=optax.adam(a.lr),
        steps=a.steps,
        progress=False,
    )
    t_tune = time.perf_counter() - t0
    h = res.history
    print(
        f"tune   {a.steps} steps (incl. compile): {t_tune:7.2f} s; best σ_w²="
        f"{float(res.network.sigma_w2):.4g} σ²={float(res.network.noise):.4g} "
        f"val err={h['objective'].min():.5g}; converged={res.converged}"
    )
    for name, sw2, noise in (
        ("grid", sw2_grid[i], noise_grid[j]),
        ("tune", float(res.network.sigma_w2), float(res.network.noise)),
    ):
        n = eqx.tree_at(
            lambda m: [m.sigma_w2, m.noise], net, [jnp.asarray(sw2), jnp.asarray(noise)]
        )
        test = fj.predict(fj.solve(n, task.X, task.Y), Xt, Yt).test_error
        print(f"held-out test error at the {name} optimum: {float(test):.5g}")

    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        c = ax.pcolormesh(noise_grid, sw2_grid, np.log10(E), shading="nearest")
        fig.colorbar(c, label="log10 predicted validation error")
        ax.plot(h["noise"], h["sigma_w2"], ".-", color="w", ms=3, label="fj.tune path")
        ax.plot(noise_grid[j], sw2_grid[i], "r*", ms=12, label="grid optimum")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("σ²")
        ax.set_ylabel("σ_w²")
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        print(f"wrote {a.plot}")


if __name__ == "__main__":
    main()
