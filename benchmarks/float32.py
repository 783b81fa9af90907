"""float32 vs float64: accuracy and speed of the same solves, in one run.

    python benchmarks/float32.py

Each precision runs in its own process (JAX_ENABLE_X64 is read once at start-up): a linear
PatchCNN (n = 128, S = 8, P = 4) and an erf FCN (n = 128, d = 8) at widths 4, 32, 1024 and
noise σ² = 1e-1, 1e-2, 1e-3, solved by `fj.solve` (one compiled program per model) and
predicted on 200 test points. Reported: convergence, the relative error of Σ and of the
test-set mean predictor against float64, and the time per solve (after compilation).
"""

import json
import os
import subprocess
import sys
import tempfile
import time


WIDTHS = (4.0, 32.0, 1024.0)
NOISES = (1e-1, 1e-2, 1e-3)


def worker(out_path: str) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import fls_jax as fj
    from fls_jax._solve import _validate

    results = {}
    tasks = {
        "linear PatchCNN": (
            fj.datasets.linear_patch_teacher(128, 200, 8, 4, seed=0),
            fj.PatchCNN(
                patch_size=8,
                width=1.0,
                sigma_w2=1.0,
                sigma_a2=1.0,
                noise=0.1,
                activation=fj.Linear(),
            ),
        ),
        "erf FCN": (
            fj.datasets.single_index_teacher(128, 200, 8, seed=0),
            fj.FCN(width=1.0, sigma_w2=1.0, sigma_a2=1.0, noise=0.1, activation=fj.Erf()),
        ),
    }
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32

    @eqx.filter_jit
    def run(net, X, Y, Xt):
        sol = fj.solve(net, X, Y)
        return sol, fj.predict(sol, Xt).mean

    for name, (task, net) in tasks.items():
        X, Y, Xt = (jnp.asarray(v, dtype) for v in (task.X, task.Y, task.X_test))
        for noise in NOISES:
            for C in WIDTHS:
                m = eqx.tree_at(
                    lambda k: (k.width, k.noise),
                    net,
                    (jnp.asarray(C, dtype), jnp.asarray(noise, dtype)),
                )
                try:  # the refusal is checked on concrete inputs, i.e. outside `jit`
                    _validate(m, X, Y)
                    jax.block_until_ready(run(m, X, Y, Xt))
                except ValueError as e:  # fls_jax refuses ill-conditioned float32 solves
                    results[f"{name}|{noise}|{C}"] = dict(refused=str(e).split(":")[0])
                    continue
                t0 = time.perf_counter()
                sol, mean = jax.block_until_ready(run(m, X, Y, Xt))
                dt = time.perf_counter() - t0
                results[f"{name}|{noise}|{C}"] = dict(
                    sigma=np.asarray(sol.sigma, np.float64).tolist(),
                    mean=np.asarray(mean, np.float64).ravel().tolist(),
                    converged=bool(sol.converged),
                    residual=float(sol.residual),
                    steps=int(sol.num_steps),
                    time=dt,
                    dtype=str(sol.sigma.dtype),
                )
    with open(out_path, "w") as f:
        json.dump(results, f)


def main() -> None:
    runs = {}
    for x64 in ("1", "0"):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        env = dict(os.environ, JAX_ENABLE_X64=x64)
        subprocess.run([sys.executable, __file__, "--worker", path], env=env, check=True)
        with open(path) as f:
            runs[x64] = json.load(f)
    import numpy as np

    print(f"# {time.strftime('%Y-%m-%d')} {os.uname().nodename} cores={os.cpu_count()}")
    print(
        "| model | σ² | C | f32 converged | f32 residual | ‖ΔΣ‖/‖Σ‖ | max |Δ mean| / rms mean "
        "| time f64 | time f32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key, r64 in runs["1"].items():
        r32 = runs["0"][key]
        name, noise, C = key.split("|")
        if "refused" in r32:
            print(
                f"| {name} | {noise} | {float(C):g} | refused | | | | "
                f"{r64['time'] * 1e3:.0f} ms | |"
            )
            continue
        s64, s32 = np.asarray(r64["sigma"]), np.asarray(r32["sigma"])
        m64, m32 = np.asarray(r64["mean"]), np.asarray(r32["mean"])
        dsig = np.linalg.norm(s32 - s64) / np.linalg.norm(s64)
        dmean = np.max(np.abs(m32 - m64)) / np.sqrt(np.mean(m64**2))
        assert r64["dtype"] == "float64" and r32["dtype"] == "float32"
        print(
            f"| {name} | {noise} | {float(C):g} | {r32['converged']} | {r32['residual']:.1e} | "
            f"{dsig:.1e} | {dmean:.1e} | {r64['time'] * 1e3:.0f} ms | {r32['time'] * 1e3:.0f} ms |",
            flush=True,
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
