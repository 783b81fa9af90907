"""The matrix saddle where U* is far from any multiple of I: converged and BFGS's steps.

    python benchmarks/matrix_saddle_anisotropic.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/matrix_saddle_anisotropic.py

A linear PatchCNN with P = 2 patches of 2 and m = 2 outputs (a 4×4 scale over (patch,
output) pairs; n = 12 > d = 4, C = 4, σ_w² = 1.2) at targets ×10² to ×10⁶, σ² = 0.1 and
10⁻⁸; then targets scaled on one output only (×10³, ×10⁴), on that PatchCNN and on a linear
FCN (C = 6). Per case: σ², the scale, `converged`, BFGS's steps summed over its runs and the
number of runs (counted by wrapping `optimistix.minimise`, instrumentation only), log Z.
Stop 50's `test_patch_saddle_far_from_isotropic` is the ×10⁶, σ² = 10⁻⁸ case with σ_w² = 1.
"""

import jax
import numpy as np


jax.config.update("jax_enable_x64", True)

from matrix_saddle_large_targets import _STEPS  # noqa: E402  (it wraps optimistix.minimise)

import fls_jax as fj  # noqa: E402


def _report(label, net, X, Y, X_test):
    _STEPS.clear()
    r = fj.renormalise(net, X, Y, X_test, method="saddle")
    print(label, bool(r.converged), sum(_STEPS), len(_STEPS), float(r.log_evidence), flush=True)


def main() -> None:
    print("#", fj.__file__)
    print("# case, σ², targets: converged, BFGS steps, BFGS runs, log Z")
    rng = np.random.default_rng(0)
    X, Y, X_test = rng.normal(size=(12, 4)), rng.normal(size=(12, 2)), rng.normal(size=(5, 4))
    for noise in (0.1, 1e-8):
        net = fj.PatchCNN(4.0, 1.2, 1.0, noise, fj.Linear(), patch_size=2)
        for s in (1e2, 1e3, 1e5, 1e6):
            _report(f"PatchCNN m = 2, {noise:g}, ×{s:g}:", net, X, s * Y, X_test)
    for s in (1e3, 1e4):
        Ys = Y.copy()
        Ys[:, 0] *= s
        net = fj.PatchCNN(4.0, 1.2, 1.0, 0.01, fj.Linear(), patch_size=2)
        _report(f"PatchCNN m = 2, 0.01, first output ×{s:g}:", net, X, Ys, X_test)
        net = fj.FCN(6.0, 1.0, 1.0, 0.01, fj.Linear())
        _report(f"FCN m = 2, 0.01, first output ×{s:g}:", net, X, Ys, X_test)


if __name__ == "__main__":
    main()
