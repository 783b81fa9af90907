"""Where a depth-3 erf FCN's continuation spends its iterations: one hard step in width.

    python benchmarks/deep_narrow_step.py

Three erf hidden layers, deep-erf teacher (d = 32, n = 128), σ_w² = 2, σ_a² = 2/256,
σ² = 1e-3. First the default path sweep over 8 widths, 30000 → 90 (iterations and stages per
width). Then the step that costs most, from the converged C ≈ 473 to C ≈ 206, tried by each
solver alone (no continuation), from the same warm start: Anderson at β = 0.03, 0.1 (the deep
default, with adaptive mixing), 0.3 and 1, 400 iterations each, and damped Newton–GMRES
(the default's fallback), 12 and 30 steps. Printed: converged, the relative residual reached
(`Solution.residual`, the start's is the 1-iteration row) and seconds.
"""

import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax._solve import _newton  # noqa: E402


def main():
    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}"
    )
    t = fj.datasets.deep_erf_teacher(n=128, n_test=20, d=32, depth=3, seed=0)
    kw = dict(sigma_w2=2.0, sigma_a2=2.0 / 256, activation=fj.Erf(), depth=3, noise=1e-3)
    widths = np.geomspace(30000, 90, 8)
    t0 = time.perf_counter()
    sols, _ = fj.sweep(fj.FCN(width=1.0, **kw), t.X, t.Y, widths, t.X_test, schedule="path")
    print(f"path sweep, 8 widths: {time.perf_counter() - t0:.1f} s (compilation included)")
    for C, ok, steps, stages in zip(
        widths, sols.converged, sols.num_steps, sols.num_stages, strict=True
    ):
        print(
            f"  C = {C:7.1f}: converged {bool(ok)!s:5} {int(steps):5d} iterations "
            f"{int(stages):3d} stages"
        )
    start = (sols.precision[5], *(k[5] for k in sols.kernel_shifts))
    net = fj.FCN(width=widths[6], **kw)
    print(f"\nfrom the converged C = {widths[5]:.1f} straight to C = {widths[6]:.1f}:")
    runs = [("start (1 Anderson iteration)", fj.Anderson(rtol=1e-11, atol=0.0, mixing=0.1), 1)]
    for beta in (0.03, 0.1, 0.3, 1.0):
        deep = beta == 0.1
        solver = fj.Anderson(
            rtol=1e-11,
            atol=0.0,
            memory=30,
            mixing=beta,
            adaptive_mixing=deep,
            max_growth=10.0 if deep else float("inf"),
        )
        label = f"Anderson β = {beta:g}" + (" (deep default)" if deep else "")
        runs.append((label, solver, 400))
    runs += [("damped Newton–GMRES", _newton(np.float64, 3), k) for k in (12, 30)]
    for label, solver, k in runs:
        t0 = time.perf_counter()
        s = fj.solve(net, t.X, t.Y, precision0=start, solver=solver, max_steps=k)
        print(
            f"  {label:32} {k:4d} steps: converged {bool(s.converged)!s:5} residual "
            f"{float(s.residual):8.2e}  {time.perf_counter() - t0:5.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
