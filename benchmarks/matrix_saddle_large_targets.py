"""The matrix saddle with large targets: converged, BFGS steps, the solve's time.

    python benchmarks/matrix_saddle_large_targets.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/matrix_saddle_large_targets.py

Targets ×1 to ×10⁴ put U* from ~1 to ~10⁴–10⁸. Until stop 49 `_matrix_saddle` started BFGS at
V_l = I; it now starts at the scalar point e^x I downhill from I. Cases: a linear FCN with two
coupled outputs (n = 16 > d = 8, σ² = 10⁻² and 10⁻⁸), an erf FCN with three outputs, a
depth-2 linear FCN with two outputs (n = 16 < d = 32), a linear PatchCNN (P = 4, n = 48) and an
erf PatchCNN (P = 8, n = 64), one output each, and a linear PatchCNN with P = 2 and m = 2
outputs (n = 12, σ² = 0.1 and 10⁻⁸). For each: `converged`, log Z, BFGS's steps and
runs (counted by wrapping `optimistix.minimise`; since stop 50 BFGS restarts, re-whitened,
after a run of 20 + 3p steps that has not converged), the Newton passes (Hessian
factorisations, counted by wrapping `_renorm.spd_inverse_logdet`, less the evidence's; stop
60's code has one at least; instrumentation only) and the solve's time after compiling (best
of 3). Run side by side with another checkout through `PYTHONPATH`.
"""

import platform
import time

import jax
import numpy as np


jax.config.update("jax_enable_x64", True)

import optimistix as optx  # noqa: E402

import fls_jax as fj  # noqa: E402
from fls_jax import _renorm  # noqa: E402


_STEPS: list[int] = []
_minimise = optx.minimise


def _counting_minimise(fn, solver, y0, *args, **kwargs):
    sol = _minimise(fn, solver, y0, *args, **kwargs)
    jax.debug.callback(lambda s: _STEPS.append(int(s)), sol.stats["num_steps"])
    return sol


optx.minimise = _counting_minimise

# Hessian factorisations in the saddle (`_renorm.spd_inverse_logdet`): one per pass of the
# Newton loop (stop 60; of the Newton search in stop 62's trials), and one for the evidence.
_FACTORS: list[int] = []
_inverse_logdet = _renorm.spd_inverse_logdet


def _counting_inverse_logdet(H):
    jax.debug.callback(lambda: _FACTORS.append(1))
    return _inverse_logdet(H)


_renorm.spd_inverse_logdet = _counting_inverse_logdet


def _cases():
    rng = np.random.default_rng(11)
    X, X_test = rng.standard_normal((16, 8)), rng.standard_normal((20, 8))
    beta = rng.standard_normal(8) / np.sqrt(8)
    Y = np.stack([X @ beta, 0.6 * X @ beta + 0.4 * rng.standard_normal(16)], axis=1)
    Y3 = np.concatenate([Y, np.sin(X[:, :1])], axis=1)
    Xd, Xd_test = rng.standard_normal((16, 32)), rng.standard_normal((20, 32))
    Yd = np.stack([Xd[:, 0], 0.5 * Xd[:, 0] + Xd[:, 1]], axis=1)
    lin = fj.datasets.linear_patch_teacher(48, 20, patch_size=8, patches=4, seed=0)
    erf = fj.datasets.linear_patch_teacher(64, 20, patch_size=4, patches=8, seed=1)
    for noise in (1e-2, 1e-8):
        net = fj.FCN(6.0, 1.0, 1.0, noise, fj.Linear())
        for s in (1.0, 1e2, 1e4):
            yield f"linear FCN, m = 2, σ² = {noise:g}", s, net, X, s * Y, X_test
    net = fj.FCN(8.0, 1.0, 1.0, 1e-3, fj.Erf())
    for s in (1.0, 1e3):
        yield "erf FCN, m = 3, σ² = 10⁻³", s, net, X, s * Y3, X_test
    net = fj.FCN(40.0, 1.0, 1.0, 0.5, fj.Linear(), depth=2)
    for s in (1.0, 1e3):
        yield "linear FCN depth 2, m = 2", s, net, Xd, s * Yd, Xd_test
    net = fj.PatchCNN(8.0, 1.0, 1.0, 0.01, fj.Linear(), patch_size=8)
    for s in (1.0, 1e3, 1e4):
        yield "linear PatchCNN, P = 4", s, net, lin.X, s * lin.Y[:, :1], lin.X_test
    net = fj.PatchCNN(16.0, 1.0, 1.0, 0.01, fj.Erf(), patch_size=4)
    for s in (1.0, 1e3, 1e4):
        yield "erf PatchCNN, P = 8", s, net, erf.X, s * erf.Y[:, :1], erf.X_test
    rng = np.random.default_rng(0)  # m = 2 outputs: a 4×4 scale over (patch, output) pairs
    X, Y, X_test = rng.normal(size=(12, 4)), rng.normal(size=(12, 2)), rng.normal(size=(5, 4))
    for noise in (0.1, 1e-8):
        net = fj.PatchCNN(4.0, 1.2, 1.0, noise, fj.Linear(), patch_size=2)
        for s in (1.0, 1e4):
            yield f"linear PatchCNN, P = 2, m = 2, σ² = {noise:g}", s, net, X, s * Y, X_test


def main() -> None:
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, fls_jax from")
    print(f"  {fj.__file__}")
    print("| case | targets | converged | BFGS steps (runs) | Newton passes | log Z | solve (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, scale, net, X, Y, X_test in _cases():
        times = []
        for _ in range(4):  # the first compiles
            _STEPS.clear()
            _FACTORS.clear()
            t0 = time.perf_counter()
            r = fj.renormalise(net, X, Y, X_test, method="saddle")
            jax.block_until_ready(r.mean)
            times.append(time.perf_counter() - t0)
        # BFGS's steps, summed over its stages (one before stop 50) and the stages' count
        steps = f"{sum(_STEPS)} ({len(_STEPS)})" if _STEPS else "0"
        print(
            f"| {name} | ×{scale:g} | {bool(r.converged)} | {steps} | {len(_FACTORS) - 1} | "
            f"{float(r.log_evidence):.12g} | {1e3 * min(times[1:]):.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
